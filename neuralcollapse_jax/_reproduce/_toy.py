"""`toy`: the explicit 2-D examples of Min, Mallada and Vidal (ICLR 2024, App. A.2-A.3).

- A.2 (Figs. 7-8): two positive points `[1, 0]` and `[sin a, cos a]` with `a = 0.1`
  (`mu = sin 0.1`) and `a = 0.001` (`mu = sin 0.001`): the smaller `mu`, the slower the
  neurons of `V_+` align with `x_+ = x_1 + x_2`.
- A.3 (Fig. 9): orthogonal positive points `[1, 0]`, `[0, 1]`: neurons end aligned with
  `x_1`, `x_2` or `x_+`, and those at `x_+` dominate the growth.

Exact flow of the summed exponential loss, Gaussian initialization of std `scale`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from .. import datasets, theory
from .._config import setting
from .._flow import gradient_flow, log_times
from .._model import TwoLayerReLU
from .._trajectory import Status
from ._output import Output, first_time, pyplot


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the `toy` reproduction (defaults: the full run)."""

    width: int = setting(50, "model.width")
    scale: float = setting(1e-6, "model.scale")
    t1: float = setting(60.0, "flow.t1")
    num_saves: int = setting(300, "flow.num_saves")
    rtol: float = setting(1e-9, "flow.rtol")
    max_steps: int = setting(200_000, "flow.max_steps")
    cos_thresholds: tuple[float, ...] = setting((0.9, 0.99), "toy.cos_thresholds")
    seed: int = setting(0, "model.seed")


QUICK = dict(width=20, t1=40.0, num_saves=80, rtol=1e-7)

PAPER = {
    "source": "Min, Mallada and Vidal (ICLR 2024), App. A.2 (Figs. 7-8) and A.3 (Fig. 9)",
    "mu": "alignment is slower for the smaller mu (a = 0.001) than for a = 0.1",
    "orthogonal": (
        "neurons end aligned with x_1, x_2 or x_+; only the neurons at x_+ grow "
        "significantly"
    ),
}


def _angles(W):
    """Angle of each neuron `w_j` in the plane, in `(-pi, pi]`; shape `(T, h)`."""
    return np.arctan2(W[:, 1, :], W[:, 0, :])


def _run_one(name: str, cfg: Config, out: Output) -> tuple[dict, object, object]:
    data = datasets.iclr_toy(name)
    model = TwoLayerReLU.init(jax.random.key(cfg.seed), 2, cfg.width, 1, cfg.scale)
    ts = log_times(cfg.t1, cfg.num_saves, t_min=cfg.t1 * 1e-4)
    traj = gradient_flow(
        model,
        data,
        t1=cfg.t1,
        saveat=ts,
        loss="exponential",
        rtol=cfg.rtol,
        max_steps=cfg.max_steps,
    )
    jax.block_until_ready(traj.loss)
    out.log(
        f"{name}: {Status.message(int(traj.status))}, {int(traj.stats['num_steps'])} steps"
    )
    x = np.asarray(data.x)
    xp = x.sum(0) / np.linalg.norm(x.sum(0))
    W = np.asarray(traj.models.W)  # (T, 2, h)
    v = np.asarray(traj.models.V)[:, 0, :]  # (T, h)
    norms = np.linalg.norm(W, axis=1)
    cos_p = np.einsum("d,tdh->th", xp, W) / norms
    live = np.any(np.einsum("nd,tdh->tnh", x, W) > 0, axis=1)  # active on some sample
    pos = (v > 0) & live
    min_cos = np.where(pos.any(1), np.min(np.where(pos, cos_p, np.inf), axis=1), np.nan)
    t_align = {f"{c:g}": first_time(ts, min_cos >= c) for c in cfg.cos_thresholds}
    # Norm growth: first time the loss falls below half its initial value.
    loss = np.asarray(traj.loss)
    t_growth = first_time(ts, loss <= 0.5 * loss[0])
    final_w = W[-1]
    fn = norms[-1]
    units = final_w / fn
    cos_x = x @ units  # (2, h)
    result = {
        "mu": theory.iclr_mu(data),
        "status": Status.message(int(traj.status)),
        "num_steps": int(traj.stats["num_steps"]),
        "alignment_time": t_align,  # min cos over live V_+ stays >= threshold
        "loss_halved_time": t_growth,
        "final_loss": float(loss[-1]),
        "final_min_cos_x_plus": float(min_cos[-1]),
        "num_live_positive": int(pos[-1].sum()),
    }
    if name == "orthogonal":
        at = {
            "x_1": (cos_x[0] > 0.999) & (v[-1] > 0),
            "x_2": (cos_x[1] > 0.999) & (v[-1] > 0),
            "x_plus": (cos_p[-1] > 0.999) & (v[-1] > 0),
        }
        total = float(np.sum(fn**2))
        result["neurons_at"] = {k: int(m.sum()) for k, m in at.items()}
        result["norm_share_at"] = {
            k: float(np.sum(fn[m] ** 2) / total) for k, m in at.items()
        }
        result["largest_norm_at"] = {
            k: float(fn[m].max()) if m.any() else 0.0 for k, m in at.items()
        }
    curves = {
        "ts": ts,
        "min_cos": min_cos,
        "angles": _angles(W),
        "v": v,
        "norms": norms,
        "loss": loss,
        "x": x,
        "live": live[-1],
    }
    return result, traj, curves


def run(cfg: Config, out: Output) -> dict:
    results, curves = {}, {}
    for name in ("mu_large", "mu_small", "orthogonal"):
        results[name], _, curves[name] = _run_one(name, cfg, out)
    r_l, r_s = results["mu_large"], results["mu_small"]
    ratio = {}
    for c, t_l in r_l["alignment_time"].items():
        t_s = r_s["alignment_time"][c]
        ratio[c] = t_s / t_l if math.isfinite(t_l) and t_l > 0 else math.nan
    _plot(curves, cfg, out)
    ok = all(r["status"].startswith("success") for r in results.values())
    return {
        "name": "toy",
        "results": results,
        "alignment_time_ratio_small_over_large_mu": ratio,
        "paper": PAPER,
        "ok": ok,
    }


def _plot(curves: dict, cfg: Config, out: Output) -> None:
    plt = pyplot()
    titles = {
        "mu_large": "A.2: x₂ = [sin 0.1, cos 0.1]",
        "mu_small": "A.2: x₂ = [sin 0.001, cos 0.001]",
        "orthogonal": "A.3: x₁ ⊥ x₂ (orthogonal)",
    }
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for col, (name, c) in enumerate(curves.items()):
        ts = c["ts"]
        keep = ts > 0
        ax = axes[0, col]
        ang = np.degrees(c["angles"])
        sign = c["v"][-1] > 0
        kinds = np.where(c["live"], np.where(sign, "pos", "neg"), "dead")
        for j in range(ang.shape[1]):
            color = {"pos": "C3", "neg": "C0", "dead": "0.7"}[kinds[j]]
            ax.semilogx(ts[keep], ang[keep, j], color=color, lw=0.7, alpha=0.9)
        # A legend entry for each kind of neuron that is drawn (on positive-only data
        # the neurons with v_j < 0 all die, so there is no blue line to name).
        handles = [
            plt.Line2D([], [], color=color, lw=1.5, label=label)
            for kind, color, label in (
                ("pos", "C3", "live, v_j > 0 at t1"),
                ("neg", "C0", "live, v_j < 0 at t1"),
                ("dead", "0.7", "dead at t1"),
            )
            if np.any(kinds == kind)
        ]
        ax.legend(handles=handles, fontsize=7, loc="lower left")
        x = c["x"]
        refs = {"x₁": x[0], "x₂": x[1], "x₊": x.sum(0)}
        for label, vec in refs.items():
            a = np.degrees(np.arctan2(vec[1], vec[0]))
            ax.axhline(a, color="k", ls="--", lw=0.8)
            ax.text(ts[keep][0], a + 4, label, fontsize=8)
        ax.set(
            title=titles[name] + "\nangle of each neuron w_j",
            xlabel="t",
            ylabel="degrees",
            ylim=(-180, 180),
        )
        ax.title.set_fontsize(9)
        ax = axes[1, col]
        ax.loglog(ts[keep], c["norms"][keep], color="0.6", lw=0.6)
        ax.set(title="‖w_j‖ and the loss", xlabel="t", ylabel="‖w_j‖")
        ax2 = ax.twinx()
        ax2.semilogx(ts[keep], c["loss"][keep], color="C2", lw=2)
        ax2.set_ylabel("loss", color="C2")
    for a in axes.flat:
        a.grid(True, which="both", alpha=0.3)
    out.figure(fig, "toy_neurons", dpi=75)

    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    for name in ("mu_large", "mu_small", "orthogonal"):
        c = curves[name]
        keep = c["ts"] > 0
        ax.semilogx(c["ts"][keep], c["min_cos"][keep], label=titles[name])
    for c in cfg.cos_thresholds:
        ax.axhline(c, color="k", ls=":", lw=1)
    ax.set(
        title="alignment with x₊ (dotted: the thresholds)",
        xlabel="t",
        ylabel="min over live j ∈ V₊ of cos(w_j, x₊)",
        ylim=(-1, 1.02),
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    out.figure(fig, "toy_alignment")
