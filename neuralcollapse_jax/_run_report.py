"""The outputs of `ncjax run`: the trajectory file, the figure of the flow and the summary.

The figure and the summary tell the story of the flow as the papers do: early alignment
of the neurons with the class directions, inter-class separation at a time `T*`, the
collapse metrics going to zero, and the approach to the limit that Theorem 1 of Min,
Zhu and Vidal (NeurIPS 2025) predicts from the data alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import metrics, theory
from ._dataset import Dataset
from ._json import to_json
from ._loss import LOSS_CLASSES, as_loss
from ._model import TwoLayerReLU
from ._trajectory import Status, Trajectory
from ._trajectory_io import save_trajectory


# Float budget of one vectorised batch of save times (features and their class
# statistics for every sample, neuron and class): about 128 MiB in float64.
BATCH_FLOATS = 2**24

# The figure also marks the first save time from which the neurons active on two
# classes or more hold less than this share of ||theta||^2 (separation up to small
# neurons, which an unbalanced initialization can leave behind).
MIXED_SHARE = 1e-3

# Losses whose early dynamics Lemma 2 (NeurIPS 2025; ICLR 2024's Lemma 1) describes.
ALIGNMENT_LOSSES = ("cross_entropy", "exponential", "logistic")

FLOOR = 1e-300  # non-positive values are left off the log axes


def _per_save(model: TwoLayerReLU, data: Dataset, limit) -> dict[str, Any]:
    """Everything the figure shows, for one saved model."""
    out = dict(metrics.summary(model, data))
    act = metrics.activation_summary(model, data)
    out["num_mixed"] = act["num_mixed"]
    out["num_dead"] = act["num_dead"]
    out["weight_norm"] = metrics.weight_norm(model)
    mixed = jnp.sum(metrics.activity(model, data) > 0, axis=0) >= 2
    sq = jnp.sum(model.W**2, axis=0) + jnp.sum(model.V**2, axis=0)
    out["mixed_share"] = jnp.sum(jnp.where(mixed, sq, 0.0)) / jnp.sum(sq)
    # Alignment of each neuron with the class direction of its group, and the mean over
    # each group weighted by ||w_j||^2 (neurons that stay small count little).
    groups = metrics.group_masks(model, data.num_classes)  # (K, h)
    cos = metrics.neuron_alignment(model, data)  # (K, h)
    own = jnp.sum(groups * jnp.nan_to_num(cos), axis=0)  # (h,)
    w2 = jnp.sum(model.W**2, axis=0)
    mass = groups @ w2
    out["neuron_alignment"] = own
    out["neuron_group"] = metrics.neuron_groups(model)
    out["group_alignment"] = (groups @ (w2 * own)) / jnp.where(mass > 0, mass, jnp.nan)
    if limit is not None:
        out["limit"] = theory.limit_distance(model, data, limit)
    return out


@eqx.filter_jit
def _diagnostics(models: TwoLayerReLU, data: Dataset, limit, batch_size: int):
    return jax.lax.map(lambda m: _per_save(m, data, limit), models, batch_size=batch_size)


def diagnostics(traj: Trajectory, data: Dataset, limit=None) -> dict[str, np.ndarray]:
    """The figure's quantities at every save time, vectorised over the save times
    (`jax.vmap` in batches that bound the memory)."""
    if traj.models is None:
        raise ValueError("parameters were not saved: run with save_params=True")
    per_save = data.num_samples * traj.models.width * (data.num_classes + 2)
    batch = int(max(1, min(len(traj), BATCH_FLOATS // max(per_save, 1))))
    return jax.tree.map(np.asarray, _diagnostics(traj.models, data, limit, batch))


def alignment_horizon(
    model: TwoLayerReLU, data: Dataset, loss: str, reduction: str
) -> float | None:
    """Lemma 2's horizon of the alignment phase for `model(0)` (None for the square loss,
    which the lemma does not cover). The lemma's loss is a sum over the samples; the
    mean-loss flow is the sum-loss flow slowed down `n` times."""
    if loss not in ALIGNMENT_LOSSES:
        return None
    horizon = float(_lemma2_horizon(model, data))
    return horizon * data.num_samples if reduction == "mean" else horizon


@eqx.filter_jit
def _lemma2_horizon(model: TwoLayerReLU, data: Dataset):
    return theory.alignment_horizon(data, model.width, theory.effective_eps(model))


def _prediction(data: Dataset):
    """Theorem 1's predicted limit and `None`, or `None` and why it does not apply."""
    try:
        return theory.predicted_limit(data), None
    except ValueError as e:
        return None, str(e)


def figure_data(
    traj: Trajectory,
    data: Dataset,
    model: TwoLayerReLU,
    loss: str,
    reduction: str,
    prediction=None,
) -> dict[str, Any]:
    """What the figure needs: the per-save-time diagnostics and the markers
    (separation time, Lemma 2's horizon, the predicted margin and late alignment).
    `prediction`: `_prediction(data)`, when the caller has it already."""
    limit, limit_note = _prediction(data) if prediction is None else prediction
    return {
        "diag": diagnostics(traj, data, limit),
        "separation_time": float(theory.trajectory_separation_time(traj, data)),
        "alignment_horizon": alignment_horizon(model, data, loss, reduction),
        "predicted_margin": None
        if limit is None
        else float(theory.predicted_margin(limit, model.out_dim)),
        "limit_note": limit_note,
        "late_alignment": None
        if limit is None
        else np.sum(np.asarray(limit.u) * np.asarray(metrics.class_directions(data)), 1),
    }


def report(
    traj: Trajectory,
    data: Dataset,
    model: TwoLayerReLU,
    loss: str,
    reduction: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary's entries about the dynamics, and what the figure needs.

    **Returns:** `(entries, figure)`: JSON-ready summary entries (final NC metrics,
    separation time, alignment horizon, predicted limit and distance to it, assumption
    checks) and `figure_data`'s per-save-time arrays and markers.
    """
    prediction = limit, limit_note = _prediction(data)
    figure = figure_data(traj, data, model, loss, reduction, prediction)
    checks = theory.check_assumptions(model, data)
    entries: dict[str, Any] = {
        "final_metrics": dict(metrics.summary(traj.final, data)),
        "separation_time": figure["separation_time"],
        "alignment_horizon": figure["alignment_horizon"],
        "assumptions": [
            {
                "name": c.name,
                "ok": bool(c.holds),
                "value": float(c.slack),
                "detail": c.detail,
            }
            for c in checks
        ],
    }
    if limit is None:
        entries["predicted_limit"] = None
        entries["predicted_limit_note"] = limit_note
        entries["limit_distance"] = None
    else:
        entries["predicted_limit"] = {
            "gamma": limit.gamma,
            "s": limit.s,
            "normalized_margin": figure["predicted_margin"],
        }
        dist = theory.limit_distance(traj.final, data, limit)
        entries["limit_distance"] = {
            k: v for k, v in dist.items() if k not in ("cosines", "norm_shares")
        }
    return to_json(entries), figure


def write_run(
    out: Path,
    traj: Trajectory,
    data: Dataset,
    model: TwoLayerReLU,
    summary: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """Write `trajectory.nc`, `flow.png` and `summary.json` to the folder `out`.

    `summary` holds the run's own entries (loss, steps, options...); the entries of
    `report` are added after them. Returns the summary as written.
    """
    save_trajectory(out / "trajectory.nc", traj, data, config)
    entries, figure = report(traj, data, model, config["loss"], config["reduction"])
    flow_figure(traj, data, figure, config).savefig(out / "flow.png", dpi=100)
    summary = to_json(summary) | entries
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _positive(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(v) & (v > FLOOR), v, np.nan)


def _loglog(ax, t, values, **kwargs) -> None:
    """A line on log axes, left off (with its legend entry) when nothing is positive."""
    v = _positive(values)
    if not np.isnan(v).all():
        ax.loglog(t, v, **kwargs)


def plot_trajectory(
    traj: Trajectory,
    data: Dataset,
    path: str | Path | None = None,
    *,
    loss: str = "cross_entropy",
    reduction: str | None = None,
    title: str | None = None,
):
    """The six panels of `ncjax run`'s `flow.png` for a trajectory of the library.

    Against time (log axis): the loss and the weight norm; each neuron's alignment
    with the class direction of its group; the neurons active on two classes or more;
    NC1-NC4; the smallest normalized margin, with Theorem 1's limit; the distance to
    Theorem 1's predicted limit. Lemma 2's alignment horizon and the separation time
    are marked (docs page *The command line*, *Outputs*).

    **Arguments:**

    - `traj`: a `Trajectory` of `gradient_flow` or `gradient_descent` with the
      parameters saved (`save_params=True`, the default) and a first save time of 0
      (the default save times start there): the initial model gives the horizon and
      the assumption checks.
    - `data`: the data set of the run.
    - `path`: where to write the figure (the format from the suffix, e.g. `.png`,
      `.pdf`); `None` writes nothing.
    - `loss`, `reduction`: the run's loss, as passed to `gradient_flow` (they set
      Lemma 2's horizon: none for the square loss, `n` times longer for `"mean"`).
    - `title`: the figure's title (default: the problem's sizes).

    **Returns:**

    The `matplotlib.figure.Figure` (made without `pyplot`: it opens no window; a
    notebook shows it as the cell's value).
    """
    loss_obj = as_loss(loss, reduction)
    if traj.models is None:
        raise ValueError("plot_trajectory needs the saved parameters: save_params=True")
    ts = np.asarray(traj.ts)
    if ts.ndim != 1:
        raise ValueError(
            f"plot_trajectory draws one run; this trajectory has batch shape "
            f"{ts.shape[:-1]} (index a run out of it first)"
        )
    if ts.size == 0 or ts[0] != 0:
        raise ValueError(
            "plot_trajectory needs the model at t = 0: a first save time of 0 "
            f"(the default save times start there), got {ts[0] if ts.size else 'none'}"
        )
    if traj.models.in_dim != data.dim:
        raise ValueError(
            f"the trajectory's input dimension {traj.models.in_dim} does not match "
            f"the data dimension {data.dim}"
        )
    reduction = loss_obj.reduction
    # The name of a library loss (Lemma 2's horizon is known for those only).
    name = getattr(loss_obj, "name", None)
    if LOSS_CLASSES.get(name) is not type(loss_obj):
        name = type(loss_obj).__name__
    figure = figure_data(traj, data, traj[0], name, reduction)
    fig = flow_figure(traj, data, figure, {"loss": name}, title=title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def flow_figure(
    traj: Trajectory,
    data: Dataset,
    figure: dict[str, Any],
    config: dict[str, Any],
    title: str | None = None,
):
    """Six panels against time (log axis) with the phase boundaries marked, as a
    `matplotlib.figure.Figure` made without `pyplot` (no backend or window needed)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    d = figure["diag"]
    ts = np.asarray(traj.ts)
    # Log time axis; after a failed run the states past the failure are not finite.
    W, V = np.asarray(traj.models.W), np.asarray(traj.models.V)
    finite = np.isfinite(W).all(axis=(1, 2)) & np.isfinite(V).all(axis=(1, 2))
    keep = np.isfinite(ts) & (ts > 0) & finite & np.isfinite(np.asarray(traj.loss))
    t = ts[keep]
    d = jax.tree.map(lambda a: a[keep], d)
    k = data.num_classes
    colors = [f"C{c % 10}" for c in range(k)]

    fig = Figure(figsize=(14, 7.6), layout="constrained")
    axes = fig.subplots(2, 3)
    ax = axes[0, 0]
    _loglog(ax, t, np.asarray(traj.loss)[keep], color="C0", label="loss L(θ(t))")
    _loglog(ax, t, d["weight_norm"], color="C1", label="weight norm ‖θ(t)‖")
    ax.set(title="loss and weight norm", xlabel="time t", ylabel="value")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    own = d["neuron_alignment"]  # (T, h)
    group = d["neuron_group"]  # (T, h)
    last_group = group[-1] if len(group) else np.zeros(own.shape[1], int)
    for j in range(own.shape[1]):
        ax.semilogx(t, own[:, j], color=colors[int(last_group[j]) % k], lw=0.5, alpha=0.3)
    handles = [Line2D([], [], color="0.5", lw=0.5, alpha=0.6, label="single neurons")]
    for c in range(k):
        if np.isfinite(d["group_alignment"][:, c]).any():  # else the group is empty
            (line,) = ax.semilogx(
                t, d["group_alignment"][:, c], color=colors[c], lw=2, label=f"group {c}"
            )
            handles.append(line)
    if figure["late_alignment"] is not None:
        for c in range(k):
            ax.axhline(figure["late_alignment"][c], color=colors[c], ls="--", lw=1)
        handles.append(
            Line2D([], [], color="0.3", ls="--", lw=1, label="cos(u_k, x̄_k): limit")
        )
    low = np.nanmin(own) if np.isfinite(own).any() else -1.0
    ax.set(
        title="alignment: cos(w_j, x̄_k), k the group of neuron j",
        xlabel="time t",
        ylabel="cosine",
        ylim=(max(-1.05, low - 0.05), 1.05),
    )
    ax.legend(handles=handles, fontsize=7, loc="lower right")

    ax = axes[0, 2]
    _loglog(ax, t, d["num_mixed"], color="C3", label="neurons active on ≥ 2 classes")
    _loglog(ax, t, d["num_dead"], color="0.4", label="dead neurons")
    _loglog(ax, t, d["mixed_share"], color="C4", label="share of ‖θ‖² in the former")
    if not ax.get_lines():
        ax.text(
            0.5,
            0.6,
            "no neuron is active on two classes\nat any save time",
            transform=ax.transAxes,
            ha="center",
            fontsize=9,
        )
    ax.axhline(MIXED_SHARE, color="C4", ls="--", lw=1, label=f"share {MIXED_SHARE:g}")
    ax.set_yscale("log")
    sep = d["separated"].astype(bool)
    if sep.any():
        ax.fill_between(
            t,
            0,
            1,
            where=sep,
            transform=ax.get_xaxis_transform(),
            color="C2",
            alpha=0.15,
            step="mid",
            label="separated (metrics.is_separated)",
        )
    ax.set(
        title="inter-class separation (zeros not drawn)",
        xlabel="time t",
        ylabel="count, or share of ‖θ‖²",
    )
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    series = {
        "NC1": d["nc1"],
        "NC1, directional (max over classes)": np.max(d["directional_nc1"], axis=1),
        "NC2 (orthogonal frame)": d["nc2"],
        "NC3 (self-duality)": d["nc3"],
        "NC4 (nearest class centre)": d["nc4"],
    }
    zero = []
    for i, (name, values) in enumerate(series.items()):
        v = _positive(values)
        if np.isnan(v).all():
            zero.append(name.split(" ")[0].rstrip(","))
            continue
        ax.loglog(t, v, color=f"C{i}", label=name)
    if zero:
        ax.text(
            0.02,
            0.02,
            f"zero at every save time: {', '.join(zero)}",
            transform=ax.transAxes,
            fontsize=8,
        )
    ax.set(
        title="neural collapse (0 = collapsed; zeros not drawn)",
        xlabel="time t",
        ylabel="metric",
    )
    if ax.get_lines():
        ax.legend(fontsize=7)

    ax = axes[1, 1]
    ax.semilogx(t, d["min_margin"], color="C0", label="min_i margin_i / ‖θ‖²")
    if figure["predicted_margin"] is not None:
        ax.axhline(
            figure["predicted_margin"],
            color="C0",
            ls="--",
            lw=1,
            label="Theorem 1's limit",
        )
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set(title="smallest normalized margin", xlabel="time t", ylabel="margin / ‖θ‖²")
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    if "limit" in d:
        lim = d["limit"]
        for i, (key, name) in enumerate(
            (
                ("distance", "‖θ/‖θ‖ − θ̄‖ (nearest predicted limit θ̄)"),
                ("alignment", "misalignment with u_k"),
                ("norm_share_error", "norm-share error (vs s_k²)"),
                ("self_duality", "self-duality error (vs V = Ẽ diag(s) Φ)"),
            )
        ):
            _loglog(ax, t, lim[key], color=f"C{i}", label=name)
        ax.legend(fontsize=7)
        ax.set(ylabel="distance")
    else:
        ax.text(
            0.5,
            0.5,
            "Theorem 1 does not apply:\n" + (figure["limit_note"] or ""),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
            wrap=True,
        )
        ax.set_xscale("log")
    ax.set(title="distance to Theorem 1's predicted limit", xlabel="time t")

    markers = []
    horizon = figure["alignment_horizon"]
    show_horizon = horizon is not None and t[0] <= horizon <= t[-1]
    if show_horizon:
        label = f"T = {horizon:.3g}: Lemma 2's horizon (alignment phase at least until T)"
        markers.append(Line2D([], [], color="k", ls=":", lw=1.2, label=label))
    t_share = float(theory.separation_time(t, d["mixed_share"] < MIXED_SHARE))
    show_share = t[0] < t_share < math.inf and t_share != figure["separation_time"]
    if show_share:
        label = (
            f"T = {t_share:.3g}: from here on, neurons active on ≥ 2 classes hold "
            f"< {MIXED_SHARE:g} of ‖θ‖²"
        )
        markers.append(Line2D([], [], color="C4", ls="--", lw=1.2, label=label))
    t_sep = figure["separation_time"]
    show_sep = math.isfinite(t_sep) and t_sep > 0
    if show_sep:
        label = f"T* = {t_sep:.3g}: separated from here on"
        markers.append(Line2D([], [], color="k", lw=1, alpha=0.6, label=label))
    elif t_sep == 0:
        markers.append(Line2D([], [], color="none", label="separated from t = 0"))
    else:
        mixed = int(d["num_mixed"][-1]) if len(t) else 0
        label = f"never separated (neurons active on ≥ 2 classes at the end: {mixed})"
        markers.append(Line2D([], [], color="none", label=label))
    for a in axes.flat:
        if show_sep:
            a.axvline(t_sep, color="k", lw=1, alpha=0.6)
        if show_share:
            a.axvline(t_share, color="C4", ls="--", lw=1.2)
        if show_horizon:
            a.axvline(horizon, color="k", ls=":", lw=1.2)
        a.set_xscale("log")
        a.grid(True, which="both", alpha=0.25)
        a.set_xlim(t[0], t[-1])
    scale = config.get("scale")
    if title is None:
        title = "gradient flow of a two-layer ReLU network"
        if isinstance(scale, int | float):
            title += (
                f": {config.get('data')} data, n = {data.num_samples}, D = {data.dim}, "
                f"K = {k}, width h = {traj.final.width}, init scale {scale:g}, "
                f"{config.get('loss')} loss"
            )
        else:
            title += (
                f": n = {data.num_samples}, D = {data.dim}, K = {k}, "
                f"width h = {traj.final.width}, {config.get('loss')} loss"
            )
    if int(traj.status) != Status.SUCCESS:
        title += f"\nthe run stopped early: {Status.message(int(traj.status))}"
    fig.suptitle(title)
    fig.legend(handles=markers, loc="outside lower center", ncols=2, fontsize=9)
    return fig
