"""Checks of the papers' assumptions on a data set and an initialization."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .. import metrics
from .._dataset import Dataset
from .._model import TwoLayerReLU
from ..datasets import separability
from ._time_scales import effective_eps, lemma2_eps_bound


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of checking one assumption (concrete values, not traced).

    - `name`: which assumption.
    - `holds`: whether it holds.
    - `slack`: by how much: positive when it holds, negative when it fails; the
      definition is in `detail` (e.g. `mu_s = 0.31` or `lhs - rhs`).
    - `detail`: a one-line explanation with the measured values, naming what fails.
    """

    name: str
    holds: bool
    slack: float
    detail: str

    def __str__(self) -> str:
        mark = "holds" if self.holds else "FAILS"
        return f"{self.name}: {mark} (slack {self.slack:.4g}): {self.detail}"


def format_checks(checks: Sequence[Check]) -> str:
    """One line per check."""
    return "\n".join(str(c) for c in checks)


def check_assumption1(data: Dataset) -> Check:
    r"""Assumption 1 (orthogonal separability): `mu_s > 0` and `mu_d > 0`.

    `mu_s` is the smallest cosine within classes and `mu_d` minus the largest cosine
    across classes (`datasets.separability`). Slack: `min(mu_s, mu_d)`.
    """
    mu_s, mu_d = separability(data)
    slack = min(mu_s, mu_d)
    fails = []
    if mu_s <= 0:
        fails.append(f"same-class cosine down to {mu_s:.4g} <= 0")
    if mu_d <= 0:
        fails.append(f"cross-class cosine up to {-mu_d:.4g} >= 0")
    detail = f"mu_s = {mu_s:.4g}, mu_d = {mu_d:.4g}"
    if fails:
        detail += "; " + "; ".join(fails)
    return Check("Assumption 1 (orthogonal separability)", slack > 0, slack, detail)


def check_balanced(model: TwoLayerReLU, rtol: float = 1e-6) -> Check:
    r"""Assumption 2 (balanced initialization): `||w_j|| = ||v_j||` for every neuron.

    Slack: `rtol - max_j | ||w_j||^2 - ||v_j||^2 | / max_j (||w_j||^2 + ||v_j||^2)`.
    """
    drift = np.abs(np.asarray(metrics.balance(model)))
    scale = float(
        np.max(np.sum(np.asarray(model.W) ** 2, 0) + np.sum(np.asarray(model.V) ** 2, 0))
    )
    rel = float(drift.max() / scale) if scale > 0 else 0.0
    worst = int(drift.argmax())
    detail = f"max relative imbalance {rel:.3g} (neuron {worst})"
    return Check("Assumption 2 (balanced init)", rel <= rtol, rtol - rel, detail)


def check_nondegenerate(model: TwoLayerReLU, data: Dataset) -> Check:
    r"""Binary non-degenerate initialization (NeurIPS 2025 Assumption 3).

    With `N_+- = {j : sign v_j = +-1}` and `x_bar_+-` the unit class sums: both groups
    non-empty; `max_{i in I_+, j in N_+} <x_i, w_j> > 0` and the same for `-`;
    `max_{j in N_+} cos(x_bar_-, w_j) < 1` and `max_{j in N_-} cos(x_bar_+, w_j) < 1`.
    (The last two are ICLR 2024's Assumption 2.) Slack: the smallest of the four
    margins `max <x_i, w_j>/||w_j||` and `1 - max cos`.

    **Raises:** `ValueError` unless the model has one output and `K = 2`.
    """
    if model.out_dim != 1 or data.num_classes != 2:
        raise ValueError("check_nondegenerate is for binary models (one output, K = 2)")
    W = np.asarray(model.W, dtype=np.float64)
    v = np.asarray(model.V, dtype=np.float64)[0]
    x = np.asarray(data.x, dtype=np.float64)
    y = np.asarray(data.y)
    wn = np.linalg.norm(W, axis=0)
    wu = W / np.where(wn > 0, wn, 1.0)
    pre = x @ wu
    xbar = np.stack([x[y == c].sum(0) for c in (0, 1)])
    xbar = xbar / np.linalg.norm(xbar, axis=1, keepdims=True)
    fails, slacks = [], []
    for sign, c, other, name in ((1, 1, 0, "+"), (-1, 0, 1, "-")):
        group = (v > 0) if sign > 0 else (v < 0)
        if not group.any():
            fails.append(f"N_{name} is empty")
            slacks.append(-np.inf)
            continue
        act = pre[np.ix_(y == c, group)].max() if (y == c).any() else -np.inf
        slacks.append(act)
        if not act > 0:
            fails.append(f"no neuron of N_{name} is active on class {name} (max {act:.3g})")
        cos = (xbar[other] @ wu[:, group]).max()
        slacks.append(1.0 - cos)
        if not cos < 1:
            fails.append(f"a neuron of N_{name} is aligned with the other class's x_bar")
    slack = float(min(slacks))
    detail = (
        "; ".join(fails) if fails else f"all four conditions hold (min slack {slack:.3g})"
    )
    return Check("Assumption 3 (binary non-degenerate init)", not fails, slack, detail)


def check_semi_local(model: TwoLayerReLU, data: Dataset) -> Check:
    r"""Multi-class semi-local initialization (NeurIPS 2025 Assumption 4).

    Needs a partition `{N_k}` of the neurons such that for every `j in N_k`, with
    `I_l^w = {i in I_l : <x_i, w> > 0}`, `A_l^w = sum_{i in I_l^w} <x_i, w/||w||>` and
    `B_k^v = <e~_k, v/||v||>`:
    `|I_k^{w_j}|^2 > sum_{l != k} |I_l^{w_j}|^2`, `A_k^{w_j} > 2 sum_{l != k} A_l^{w_j}`
    and `B_k^{v_j} >= 1 - 1/(2(K-1))`. The first condition holds for at most one `k`, so
    the partition, if any, is unique. We also require each `N_k` to be non-empty (a
    partition into `K` parts). Slack: the smallest relative margin over neurons of the
    three inequalities at their class.

    **Raises:** `ValueError` unless the model has `K` outputs.
    """
    k = data.num_classes
    if model.out_dim != k or k < 2:
        raise ValueError("check_semi_local needs a model with K outputs")
    W = np.asarray(model.W, dtype=np.float64)
    V = np.asarray(model.V, dtype=np.float64)
    x = np.asarray(data.x, dtype=np.float64)
    y = np.asarray(data.y)
    wu = W / np.linalg.norm(W, axis=0, keepdims=True)
    vu = V / np.linalg.norm(V, axis=0, keepdims=True)
    pre = x @ wu  # (n, h)
    oh = np.eye(k)[y]  # (n, K)
    count = oh.T @ (pre > 0)  # (K, h) |I_l^w|
    a = oh.T @ np.maximum(pre, 0.0)  # (K, h) A_l^w
    # `pseudo_labels(K)` in NumPy float64, as the rest of this check, whether or not
    # JAX has float64 enabled (a float32 run would round it, and warn).
    e = np.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k)
    b = e.T @ vu  # (K, h) B_l^v
    c2 = count**2
    rel1 = (c2 - (c2.sum(0) - c2)) / np.maximum(c2.sum(0), 1.0)
    rel2 = (a - 2 * (a.sum(0) - a)) / np.maximum(a.sum(0), 1e-300)
    rel3 = b - (1 - 1 / (2 * (k - 1)))
    slack_kj = np.minimum(np.minimum(rel1, rel2), rel3)  # (K, h)
    ok_kj = (rel1 > 0) & (rel2 > 0) & (rel3 >= 0)
    best = slack_kj.max(axis=0)
    neuron_ok = ok_kj.any(axis=0)
    groups = np.where(neuron_ok, ok_kj.argmax(axis=0), -1)
    fails = []
    bad = np.flatnonzero(~neuron_ok)
    if bad.size:
        fails.append(
            f"{bad.size} of {W.shape[1]} neurons fit no class (e.g. {bad[:5].tolist()})"
        )
    empty = [c for c in range(k) if not np.any(groups == c)]
    if empty:
        fails.append(f"no neuron for classes {empty}")
    slack = float(best.min()) if not empty else min(float(best.min()), -1.0)
    sizes = [int(np.sum(groups == c)) for c in range(k)]
    detail = "; ".join(fails) if fails else f"group sizes {sizes}"
    return Check("Assumption 4 (semi-local init)", not fails, slack, detail)


def check_data_condition(data: Dataset) -> Check:
    r"""The data condition of Proposition 1 (NeurIPS 2025, multi-class):

    `X_max^2 / (X_min^2 mu_d mu_s^2) < 2K - 3` with `X_max`, `X_min` the largest and
    smallest sample norms. Slack: `(2K - 3) - lhs`.
    """
    mu_s, mu_d = separability(data)
    norms = np.linalg.norm(np.asarray(data.x, dtype=np.float64), axis=1)
    k = data.num_classes
    if mu_s <= 0 or mu_d <= 0:
        return Check(
            "Proposition 1 data condition",
            False,
            -np.inf,
            f"needs mu_s, mu_d > 0, got {mu_s:.4g}, {mu_d:.4g}",
        )
    lhs = norms.max() ** 2 / (norms.min() ** 2 * mu_d * mu_s**2)
    rhs = 2 * k - 3
    detail = f"X_max^2/(X_min^2 mu_d mu_s^2) = {lhs:.4g} vs 2K - 3 = {rhs}"
    return Check("Proposition 1 data condition", lhs < rhs, float(rhs - lhs), detail)


def check_lemma2_eps(model: TwoLayerReLU, data: Dataset) -> Check:
    """Whether `effective_eps(model)` satisfies Lemma 2's bound. Slack: `bound - eps`."""
    eps = float(effective_eps(model))
    bound = float(lemma2_eps_bound(data, model.width))
    detail = f"eps = {eps:.3g} vs sqrt(K)/(16 X_max sqrt(h)) = {bound:.3g}"
    return Check("Lemma 2 init scale", eps <= bound, bound - eps, detail)


def check_assumptions(model: TwoLayerReLU, data: Dataset) -> list[Check]:
    """Every check that applies to this model and data set.

    Binary models (one output): Assumptions 1, 2, 3. Multi-class: Assumptions 1, 2, 4,
    the data condition of Proposition 1 and Lemma 2's init scale. Print the result with
    `format_checks`.
    """
    checks = [check_assumption1(data), check_balanced(model)]
    if model.out_dim == 1:
        checks.append(check_nondegenerate(model, data))
    else:
        checks += [
            check_semi_local(model, data),
            check_data_condition(data),
            check_lemma2_eps(model, data),
        ]
    return checks
