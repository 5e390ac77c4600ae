"""`theorem1`: Theorem 1 of Min, Zhu and Vidal (NeurIPS 2025) against the exact flow.

A synthetic orthogonally separable data set with `K >= 3` classes of unequal sizes and
norms, a small balanced initialization, and the exact gradient flow of the summed
cross-entropy run far into the late phase. Every part of the theorem is measured along
the flow against the limit the theorem predicts from the data alone (class-wise max
margins `gamma_k`, directions `u_k`, scales `s_k`), for several initialization scales.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from .. import datasets, metrics, theory
from .._config import setting
from .._flow import gradient_flow, log_times
from .._model import TwoLayerReLU, pseudo_labels
from .._trajectory import Status
from ._output import Output, pyplot


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the `theorem1` reproduction (defaults: the full run)."""

    classes: int = setting(4, "data.num_classes")
    per_class: tuple[int, ...] = setting((6, 10, 14, 20), "data.points_per_class")
    dim: int = setting(40, "data.dim")
    mu_s: float = setting(0.6, "data.mu_s")
    mu_d: float = setting(0.15, "data.mu_d")
    norm_min: float = setting(0.5, "data.norm_min")
    norm_max: float = setting(1.5, "data.norm_max")
    width: int = setting(24, "model.width")
    init: str = setting("semi_local", "model.init")
    scales: tuple[float, ...] = setting((1e-2, 1e-3, 1e-4, 1e-6), "theorem1.scales")
    t1: float = setting(1e12, "flow.t1")
    num_saves: int = setting(120, "flow.num_saves")
    rtol: float = setting(1e-9, "flow.rtol")
    max_steps: int = setting(400_000, "flow.max_steps")
    # A second run from a random balanced init, which does not satisfy the semi-local
    # Assumption 4, so that the separation time T* is a measured quantity (0 for a
    # semi-local init, whose neurons start separated). Its t1 is `t1_random`.
    random_init: bool = setting(True, "theorem1.random_init")
    t1_random: float = setting(1e8, "theorem1.t1_random")
    seed: int = setting(0, "model.seed")


QUICK = dict(
    classes=3,
    per_class=(4, 6, 9),
    dim=18,
    width=12,
    scales=(1e-3, 1e-5),
    t1=1e6,
    num_saves=50,
    random_init=False,
)

PAPER = {
    "source": "Min, Zhu and Vidal (NeurIPS 2025), Theorem 1",
    "statement": (
        "theta(t)/||theta(t)|| converges; in the limit phi(x_i) = s_k <u_k, x_i> phi_k "
        "(directional collapse), the phi_k are orthogonal (NC2 = 0), V = E~ diag(s) Phi "
        "(projected self-duality), each group holds squared norm s_k^2, and every class "
        "has the same normalized margin"
    ),
    "limit_values": {
        "nc2": 0.0,
        "orthogonality": 0.0,
        "directional_nc1": 0.0,
        "self_duality": 0.0,
        "norm_share_error": 0.0,
        "distance": 0.0,
    },
}


def _records(limit: theory.Theorem1Limit) -> dict:
    rec = metrics.recorder(
        "nc1",
        "nc2",
        "nc2_etf",
        "nc3",
        "directional_nc1",
        "orthogonality",
        "separated",
        "group_stable_ranks",
        "weight_norm",
        "min_margin",
    )
    rec["limit"] = theory.LimitRecorder(limit)
    return rec


def _run(model, data, limit, cfg: Config, t1: float, out: Output, label: str):
    ts = log_times(t1, cfg.num_saves, t_min=1e-4)
    traj = gradient_flow(
        model,
        data,
        t1=t1,
        saveat=ts,
        rtol=cfg.rtol,
        max_steps=cfg.max_steps,
        record=_records(limit),
        save_params=False,
    )
    jax.block_until_ready(traj.loss)
    out.log(
        f"{label}: {Status.message(int(traj.status))}, "
        f"{int(traj.stats['num_steps'])} steps, "
        f"loss {float(traj.loss[-1]):.3g} at t = {t1:g}"
    )
    return traj


def _final(traj, data, limit) -> dict:
    """The theorem's quantities at the last save time."""
    r = jax.tree.map(lambda a: np.asarray(a)[-1], traj.records)
    lim = r["limit"]
    return {
        "loss": float(np.asarray(traj.loss)[-1]),
        "nc1": float(r["nc1"]),
        "nc2": float(r["nc2"]),
        "nc2_etf": float(r["nc2_etf"]),
        "nc3": float(r["nc3"]),
        "orthogonality": float(r["orthogonality"]),
        "directional_nc1_max": float(np.max(r["directional_nc1"])),
        "group_stable_ranks": r["group_stable_ranks"],
        "distance": float(lim["distance"]),
        "alignment": float(lim["alignment"]),
        "norm_shares": lim["norm_shares"],
        "norm_shares_predicted": np.asarray(limit.s) ** 2,
        "norm_share_error": float(lim["norm_share_error"]),
        "self_duality": float(lim["self_duality"]),
        "feature_error": float(lim["feature_error"]),
        "margin_error": float(lim["margin_error"]),
        "min_normalized_margin": float(r["min_margin"]),
        "predicted_margin": float(theory.predicted_margin(limit, data.num_classes)),
        "separation_time": float(theory.trajectory_separation_time(traj)),
    }


def _log_fit(ts, values, t_from: float) -> dict:
    """Least-squares fit `value = a + b / log t` over the save times `t >= t_from`."""
    ts = np.asarray(ts)
    values = np.asarray(values)
    keep = (ts >= t_from) & np.isfinite(values)
    if keep.sum() < 3:
        return {"intercept": math.nan, "slope": math.nan}
    x = 1.0 / np.log(ts[keep])
    A = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, values[keep], rcond=None)
    return {"intercept": float(a), "slope": float(b), "t_from": t_from}


def run(cfg: Config, out: Output) -> dict:
    if cfg.classes < 3:
        raise ValueError(
            f"theorem1 needs classes >= 3 (the multi-class case), got {cfg.classes}"
        )
    if len(cfg.scales) < 1:
        raise ValueError("scales must hold at least one initialization scale")
    key_data, key_model, key_random = jax.random.split(jax.random.key(cfg.seed), 3)
    sizes = cfg.per_class if len(cfg.per_class) > 1 else cfg.per_class[0]
    data = datasets.orthogonally_separable(
        key_data,
        num_classes=cfg.classes,
        points_per_class=sizes,
        dim=cfg.dim,
        mu_s=cfg.mu_s,
        mu_d=cfg.mu_d,
        norm_range=(cfg.norm_min, cfg.norm_max),
    )
    k = data.num_classes
    limit = theory.predicted_limit(data)
    out.log(
        f"data: n = {data.num_samples}, D = {data.dim}, K = {k}; gamma = "
        f"{np.round(np.asarray(limit.gamma), 4).tolist()}, s = "
        f"{np.round(np.asarray(limit.s), 4).tolist()}"
    )
    mu_s, mu_d = datasets.separability(data)
    norms = np.linalg.norm(np.asarray(data.x), axis=1)

    runs = {}
    trajs = {}
    checks = None
    for eps in cfg.scales:
        model = TwoLayerReLU.init(
            key_model, data.dim, cfg.width, k, eps, init=cfg.init, data=data
        )
        if checks is None:
            checks = theory.check_assumptions(model, data)
            for c in checks:
                out.log(str(c))
        traj = _run(model, data, limit, cfg, cfg.t1, out, f"eps = {eps:g}")
        trajs[eps] = traj
        runs[f"{eps:g}"] = {
            "eps": eps,
            "effective_eps": float(theory.effective_eps(model)),
            "status": Status.message(int(traj.status)),
            "num_steps": int(traj.stats["num_steps"]),
            "alignment_horizon_T": float(
                theory.alignment_horizon(data, cfg.width, theory.effective_eps(model))
            ),
            "final": _final(traj, data, limit),
        }

    main_eps = cfg.scales[len(cfg.scales) // 2] if len(cfg.scales) > 2 else cfg.scales[-1]
    main = trajs[main_eps]
    ts = np.asarray(main.ts)
    lim = jax.tree.map(np.asarray, main.records["limit"])
    t_fit = max(ts[-1] ** 0.25, 10.0)
    fits = {
        name: _log_fit(ts, lim[name], t_fit)
        for name in (
            "distance",
            "norm_share_error",
            "self_duality",
            "alignment",
            "margin_error",
        )
    }
    # Distance at a few times for every eps: how it shrinks as eps decreases and t grows.
    probe = [t for t in (1.0, 1e2, 1e4, 1e6, 1e8, 1e10, 1e12) if t <= cfg.t1]
    table = {}
    for eps, traj in trajs.items():
        d = np.asarray(traj.records["limit"]["distance"])
        tt = np.asarray(traj.ts)
        table[f"{eps:g}"] = {f"{t:g}": float(d[np.argmin(np.abs(tt - t))]) for t in probe}

    random_run = None
    if cfg.random_init:
        model = TwoLayerReLU.init(
            key_random, data.dim, cfg.width, k, main_eps, init="balanced"
        )
        rchecks = theory.check_assumptions(model, data)
        traj = _run(model, data, limit, cfg, cfg.t1_random, out, "random balanced init")
        trajs["random"] = traj
        random_run = {
            "init": "balanced",
            "eps": main_eps,
            "checks": [dataclasses.asdict(c) for c in rchecks],
            "status": Status.message(int(traj.status)),
            "num_steps": int(traj.stats["num_steps"]),
            "t1": cfg.t1_random,
            "alignment_horizon_T": float(
                theory.alignment_horizon(data, cfg.width, theory.effective_eps(model))
            ),
            "final": _final(traj, data, limit),
        }

    _plot_main(main, limit, main_eps, out)
    _plot_scales(trajs, cfg, out)
    _plot_limit(main, data, limit, out)

    ok = all(int(t.status) == Status.SUCCESS for t in trajs.values())
    return {
        "name": "theorem1",
        "data": {
            "n": data.num_samples,
            "D": data.dim,
            "K": k,
            "class_sizes": np.asarray(data.class_sizes()),
            "mu_s": mu_s,
            "mu_d": mu_d,
            "x_min": float(norms.min()),
            "x_max": float(norms.max()),
        },
        "predicted": {
            "gamma": np.asarray(limit.gamma),
            "s": np.asarray(limit.s),
            "s_squared": np.asarray(limit.s) ** 2,
            "normalized_margin": float(theory.predicted_margin(limit, k)),
        },
        "checks": [dataclasses.asdict(c) for c in checks],
        "main_eps": main_eps,
        "runs": runs,
        "distance_table": table,
        "fits_in_1_over_log_t": fits,
        "random_init_run": random_run,
        "paper": PAPER,
        "ok": ok,
    }


def _plot_main(traj, limit, eps, out: Output) -> None:
    plt = pyplot()
    ts = np.asarray(traj.ts)
    keep = ts > 0
    t = ts[keep]
    r = jax.tree.map(lambda a: np.asarray(a)[keep], traj.records)
    lim = r["limit"]
    tiny = 1e-18  # floor for log axes: exact zeros are drawn at the floor

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), constrained_layout=True)
    ax = axes[0, 0]
    ax.loglog(t, np.asarray(traj.loss)[keep], label="loss L(θ)")
    ax.loglog(t, r["weight_norm"] ** 2, label="‖θ‖²")
    ax.set(title="loss and weight norm", xlabel="t")
    ax.legend()
    ax = axes[0, 1]
    ax.loglog(t, np.maximum(r["nc2"], tiny), label="NC2 (orthogonal frame)")
    ax.loglog(
        t,
        np.maximum(np.abs(r["orthogonality"]), tiny),
        label=f"max cos(φ_k, φ_l) (zeros drawn at {tiny:g})",
    )
    ax.loglog(
        t,
        np.maximum(np.max(r["directional_nc1"], axis=1), tiny),
        label="max_k directional NC1",
    )
    ax.set(
        title="part 2: orthogonal class means;\npart 1: within-class parallel", xlabel="t"
    )
    ax.legend(fontsize=8)
    ax = axes[0, 2]
    ax.loglog(t, lim["feature_error"], label="feature error (part 1, lengths s_k⟨u_k,x_i⟩)")
    ax.loglog(t, lim["self_duality"], label="self-duality ‖V − Ẽ diag(s) Φ‖ (part 3)")
    ax.loglog(t, lim["margin_error"], label="margin error")
    ax.set(title="parts 1 and 3 against the predicted limit", xlabel="t")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    s2 = np.asarray(limit.s) ** 2
    for c in range(s2.shape[0]):
        ax.semilogx(t, lim["norm_shares"][:, c], color=f"C{c}", label=f"class {c}")
        ax.axhline(s2[c], color=f"C{c}", ls="--", lw=1)
    ax.set(
        title="norm share Σ_{j∈N_k}‖w_j‖²/‖θ‖² (dashed: s_k²)", xlabel="t", ylim=(0, None)
    )
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.semilogx(t, r["group_stable_ranks"])
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set(title="stable rank of each block W_k (→ 1)", xlabel="t")
    ax = axes[1, 2]
    late = t > 10
    x = 1.0 / np.log(t[late])
    ax.plot(x, lim["distance"][late], label="distance to predicted θ̄")
    ax.plot(x, lim["norm_share_error"][late], label="norm-share error")
    ax.plot(x, lim["alignment"][late], label="misalignment with u_k")
    ax.set(
        title="late phase against 1/log t",
        xlabel="1 / log t",
        xlim=(0, None),
        ylim=(0, None),
    )
    ax.legend(fontsize=8)
    for a in axes.flat:
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Theorem 1 along the exact flow (eps = {eps:g})")
    out.figure(fig, "theorem1_flow")


def _plot_scales(trajs, cfg: Config, out: Output) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for i, (label, traj) in enumerate(trajs.items()):
        ts = np.asarray(traj.ts)
        keep = ts > 0
        lim = jax.tree.map(lambda a: np.asarray(a)[keep], traj.records["limit"])
        name = (
            "random init, eps = " + f"{cfg.scales[len(cfg.scales) // 2]:g}"
            if label == "random"
            else f"eps = {label:g}"
        )
        style = dict(color=f"C{i}", ls=":" if label == "random" else "-")
        axes[0].loglog(ts[keep], lim["distance"], label=name, **style)
        axes[1].loglog(ts[keep], lim["norm_share_error"], **style)
        axes[2].loglog(
            ts[keep], np.maximum(np.asarray(traj.records["nc2"])[keep], 1e-18), **style
        )
    axes[0].set(title="distance of θ/‖θ‖ to the predicted limit", xlabel="t")
    axes[1].set(title="max_k |share_k − s_k²| / s_k²", xlabel="t")
    axes[2].set(title="NC2", xlabel="t")
    axes[0].legend(fontsize=8)
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    out.figure(fig, "theorem1_scales")


def _plot_limit(traj, data, limit, out: Output) -> None:
    """The final normalized weights next to the predicted structure."""
    plt = pyplot()
    model = traj.final
    norm = float(metrics.weight_norm(model))
    W = np.asarray(model.W) / norm
    V = np.asarray(model.V) / norm
    groups = np.asarray(metrics.neuron_groups(model))
    order = np.argsort(groups, kind="stable")
    u = np.asarray(limit.u)
    s = np.asarray(limit.s)
    feats = np.asarray(model.features(data.x)) / norm
    means = np.stack(
        [feats[np.asarray(data.y) == c].mean(0) for c in range(data.num_classes)]
    )
    phi = means / np.linalg.norm(means, axis=1, keepdims=True)
    e = np.asarray(pseudo_labels(data.num_classes))
    v_pred = e @ (s[:, None] * phi)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    im = axes[0].imshow(
        (u @ W)[:, order], aspect="auto", cmap="RdBu_r", vmin=-0.4, vmax=0.4
    )
    axes[0].set(
        title="⟨u_k, w_j⟩ (neurons sorted by group)", xlabel="neuron j", ylabel="class k"
    )
    fig.colorbar(im, ax=axes[0])
    vmax = float(np.abs(V).max())
    axes[1].imshow(V[:, order], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    axes[1].set(title="measured V / ‖θ‖", xlabel="neuron j", ylabel="output")
    im = axes[2].imshow(
        v_pred[:, order], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax
    )
    axes[2].set(title="predicted Ẽ diag(s) Φ", xlabel="neuron j", ylabel="output")
    fig.colorbar(im, ax=axes[2])
    for ax in axes:  # rows are classes or outputs, columns neurons: integer ticks
        ax.set_yticks(range(u.shape[0]))
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    out.figure(fig, "theorem1_limit")
