r"""The theory of Min, Zhu and Vidal (NeurIPS 2025) and Min, Mallada and Vidal (ICLR 2024).

Class-wise max margins, the predicted limit of Theorem 1 (NeurIPS 2025) and distances to
it, checks of the assumptions on a data set and an initialization, and the time scales
of the dynamics.

**Public API** (names are stable):

- Max margin through the origin: `MaxMargin`, `max_margin`, `class_max_margins`.
- Theorem 1: `Theorem1Limit`, `margin_scales`, `predicted_limit`, `predicted_margin`,
  `limit_distance`, `LimitRecorder` (records `limit_distance` along a run).
- Assumptions: `Check`, `check_assumption1`, `check_balanced`,
  `check_nondegenerate`, `check_semi_local`, `check_data_condition`,
  `check_lemma2_eps`, `check_assumptions`, `format_checks`.
- Time scales: `effective_eps`, `alignment_horizon`, `lemma2_eps_bound`, `iclr_mu`,
  `iclr_t1`, `separation_time`, `trajectory_separation_time`.

**Theorem 1 (NeurIPS 2025), in brief.** For orthogonally separable data and a small,
balanced initialization satisfying the case's assumptions, `theta(t)/||theta(t)||_F`
converges to `theta_bar` with, for each class `k`, a block `W_k = s_k u_k g_k^T`,
`V_k = s_k e~_k g_k^T` (binary: `V_+- = +-s_+- g_+-^T`) on the neurons of the group
`N_k`, where `g_k >= 0` is a unit vector, `u_k` the class's max-margin direction through
the origin, `gamma_k` its margin, and
`s_k = sqrt(gamma_k^{-1} / (2 sum_l gamma_l^{-1}))`. Hence
`phi_bar(x_i) = s_k <u_k, x_i> g_k` for `i in I_k` (directional collapse), orthogonal
class features, and `V = E~ diag(s) Phi` (projected self-duality).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from . import metrics
from ._dataset import Dataset
from ._model import TwoLayerReLU, pseudo_labels
from ._trajectory import Trajectory
from .datasets import separability


__all__ = [
    "Check",
    "LimitRecorder",
    "MaxMargin",
    "Theorem1Limit",
    "alignment_horizon",
    "check_assumption1",
    "check_assumptions",
    "check_balanced",
    "check_data_condition",
    "check_lemma2_eps",
    "check_nondegenerate",
    "check_semi_local",
    "class_max_margins",
    "effective_eps",
    "format_checks",
    "iclr_mu",
    "iclr_t1",
    "lemma2_eps_bound",
    "limit_distance",
    "margin_scales",
    "max_margin",
    "predicted_limit",
    "predicted_margin",
    "separation_time",
    "trajectory_separation_time",
]


# ----------------------------------------------------------------------------------
# Max margin through the origin
# ----------------------------------------------------------------------------------


class MaxMargin(eqx.Module):
    r"""The max-margin direction through the origin of a point set (or of each class).

    Fields (a leading class axis for `class_max_margins`):

    - `gamma`: the margin `min_i <x_i, u>` attained by `u` (a certified lower bound of
      the max margin; equal to it up to `gap`).
    - `u`: the unit max-margin direction.
    - `alpha`: the dual weights, a convex combination with `u = X^T alpha/||X^T alpha||`;
      positive only on support vectors.
    - `gap`: relative duality gap `(||p||^2 - min_i <x_i, p>)/||p||^2`, `p = X^T alpha`:
      the true margin lies in `[gamma, gamma/(1 - gap)]`.
    - `converged`: whether `gap <= tol` was reached.
    - `num_steps`: iterations used.
    """

    gamma: Float[Array, "*K"]
    u: Float[Array, "*K D"]
    alpha: Float[Array, "*K n"]
    gap: Float[Array, "*K"]
    converged: Bool[Array, "*K"]
    num_steps: Int[Array, "*K"]


def _default_tol(dtype) -> float:
    return float(1e3 * jnp.finfo(dtype).eps)


def _polish(x, mask, alpha):
    """Solve the KKT system on the current support exactly (Lineax).

    On the support `S` the optimal dual weights solve `X_S X_S^T beta = 1`,
    `alpha_S = beta / sum(beta)` (all support vectors have the same margin `||p||^2`).
    Off the support the system is replaced by the identity, keeping shapes fixed.
    """
    support = mask & (alpha > 0)
    s = support.astype(x.dtype)
    gram = (x @ x.T) * s[:, None] * s[None, :] + jnp.diag(1.0 - s)
    op = lx.MatrixLinearOperator(gram)
    sol = lx.linear_solve(op, s, solver=lx.SVD(), throw=False)
    beta = sol.value * s
    total = jnp.sum(beta)
    return jnp.where(jnp.abs(total) > 0, beta / total, alpha)


def _gap(x, mask, alpha):
    p = alpha @ x
    pp = jnp.sum(p**2)
    margins = jnp.where(mask, x @ p, jnp.inf)
    return (pp - jnp.min(margins)) / pp, p


def _max_margin_masked(x, mask, tol, max_steps, polish=True):
    r"""Minimum-norm point of the convex hull of `{x_i : mask_i}` by FISTA with restart.

    `min_{alpha in simplex(mask)} ||X^T alpha||^2 / 2`. No JAX library solves
    simplex-constrained QPs (Optimistix has no constraints, and jaxopt is retired), so
    the accelerated projected-gradient loop is written here, with Optax's exact
    projection onto the simplex and a Lineax polish on the support (see `_polish`).
    """
    dtype = x.dtype
    m = mask.astype(dtype)
    count = jnp.sum(m)
    xm = x * m[:, None]
    lipschitz = jnp.linalg.norm(xm, ord=2) ** 2
    step = 1.0 / jnp.where(lipschitz > 0, lipschitz, 1.0)

    def project(z):
        # Entries off the mask are set below max - 1 <= the simplex threshold, so the
        # projection gives them zero weight without affecting the others.
        zmax = jnp.max(jnp.where(mask, z, -jnp.inf))
        z = jnp.where(mask, z, zmax - 2.0)
        # (Optax's projection promotes to the default float under x64: cast back.)
        return optax.projections.projection_simplex(z).astype(dtype)

    def objective(a):
        return 0.5 * jnp.sum((a @ x) ** 2)

    alpha0 = m / count
    inner = 50

    def fista_step(_, state):
        alpha, y, t = state
        grad = x @ (y @ x)
        new = project(y - step * grad)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t**2))
        restart = objective(new) > objective(alpha)
        y_new = jnp.where(restart, new, new + ((t - 1.0) / t_new) * (new - alpha))
        return new, y_new, jnp.where(restart, 1.0, t_new)

    def cond(state):
        i, _, _, _, gap = state
        return (i < max_steps) & (gap > tol)

    def body(state):
        # `inner` accelerated steps, then an attempt at the exact solution on the
        # current support (accepted when feasible and better).
        i, alpha, y, t, _ = state
        alpha, y, t = jax.lax.fori_loop(0, inner, fista_step, (alpha, y, t))
        gap, _ = _gap(x, mask, alpha)
        if polish:
            polished = _polish(x, mask, alpha)
            ok = jnp.all(polished >= 0) & jnp.all(jnp.isfinite(polished))
            gap_pol, _ = _gap(x, mask, jnp.where(ok, polished, alpha))
            use = ok & (gap_pol < gap)
            alpha = jnp.where(use, polished, alpha)
            y = jnp.where(use, polished, y)
            t = jnp.where(use, 1.0, t)
            gap = jnp.where(use, gap_pol, gap)
        return i + inner, alpha, y, t, gap

    gap0, _ = _gap(x, mask, alpha0)
    init = (jnp.zeros((), jnp.int32), alpha0, alpha0, jnp.ones((), dtype), gap0)
    steps, alpha, _, _, gap = jax.lax.while_loop(cond, body, init)
    gap, p = _gap(x, mask, alpha)
    pn = jnp.linalg.norm(p)
    u = p / jnp.where(pn > 0, pn, jnp.nan)
    gamma = jnp.min(jnp.where(mask, x @ u, jnp.inf))
    return MaxMargin(gamma, u, alpha, gap, gap <= tol, steps)


def max_margin(
    x: Float[ArrayLike, "n D"],
    mask: Bool[ArrayLike, " n"] | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 100_000,
) -> MaxMargin:
    r"""Max-margin direction through the origin: `max_{||u||=1} min_i <x_i, u>`.

    This is the hard-margin SVM without bias on one class,
    `u = argmin ||u||^2 s.t. <x_i, u> >= 1` normalized, with margin `gamma = 1/||u||`.
    By duality `gamma` is the distance from 0 to the convex hull of the points and
    `u = p/||p||` with `p` the hull's minimum-norm point (when `gamma > 0`), computed by
    an accelerated projected-gradient method on the dual weights with an exact solve on
    the support; the result certifies itself through its duality gap.

    **Arguments:**

    - `x`: points, shape `(n, D)`.
    - `mask`: which points take part (default all); fixed shapes for `jit`/`vmap`.
    - `tol`: target relative duality gap (default `1000 * machine epsilon`).
    - `max_steps`: iteration budget.

    **Returns:**

    A `MaxMargin`. If 0 lies in the convex hull (no positive margin), `u` is `NaN` and
    `converged` is `False`; an empty mask gives `NaN` throughout.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, D), got {x.shape}")
    if mask is None:
        mask = jnp.ones(x.shape[0], dtype=bool)
    mask = jnp.asarray(mask, dtype=bool)
    if mask.shape != x.shape[:1]:
        raise ValueError(f"mask must have shape ({x.shape[0]},), got {mask.shape}")
    if not isinstance(mask, jax.core.Tracer) and not bool(jnp.any(mask)):
        raise ValueError("max_margin needs at least one point (the mask is empty)")
    tol = _default_tol(x.dtype) if tol is None else tol
    return _jit_max_margin(x, mask, jnp.asarray(tol, x.dtype), int(max_steps))


@eqx.filter_jit
def _jit_max_margin(x, mask, tol, max_steps):
    return _max_margin_masked(x, mask, tol, max_steps)


def class_max_margins(
    data: Dataset, *, tol: float | None = None, max_steps: int = 100_000
) -> MaxMargin:
    r"""`max_margin` of each class: `gamma_k = max_{||u||=1} min_{i in I_k} <x_i, u>`.

    **Returns:** a `MaxMargin` with a leading class axis of size `K`.

    **Raises:** `ValueError` (concrete data) if a class is empty.
    """
    k = data.num_classes
    masks = data.y[None, :] == jnp.arange(k)[:, None]
    if not isinstance(data.y, jax.core.Tracer):
        sizes = np.asarray(jnp.sum(masks, axis=1))
        empty = [int(c) for c in np.flatnonzero(sizes == 0)]
        if empty:
            raise ValueError(f"classes {empty} are empty: no max margin")
    tol = _default_tol(data.x.dtype) if tol is None else tol
    return _jit_class_max_margins(data.x, masks, jnp.asarray(tol, data.x.dtype), max_steps)


@eqx.filter_jit
def _jit_class_max_margins(x, masks, tol, max_steps):
    return jax.vmap(lambda m: _max_margin_masked(x, m, tol, max_steps))(masks)


# ----------------------------------------------------------------------------------
# Theorem 1
# ----------------------------------------------------------------------------------


def margin_scales(gamma: Float[ArrayLike, " K"]) -> Float[Array, " K"]:
    r"""`s_k = sqrt(gamma_k^{-1} / (2 sum_l gamma_l^{-1}))` of Theorem 1 (NeurIPS 2025).

    `sum_k 2 s_k^2 = 1 = ||theta_bar||_F^2`: smaller margins get larger blocks.
    """
    inv = 1.0 / jnp.asarray(gamma)
    return jnp.sqrt(inv / (2.0 * jnp.sum(inv, axis=-1, keepdims=True)))


class Theorem1Limit(eqx.Module):
    r"""The data-dependent quantities of the limit of Theorem 1 (NeurIPS 2025).

    - `gamma`: class-wise max margins `gamma_k`, shape `(K,)`.
    - `u`: their unit directions `u_k`, shape `(K, D)`.
    - `s`: the block scales `s_k`, shape `(K,)` (`margin_scales(gamma)`).

    The neuron split `g_k` is not determined by the data (it depends on the
    initialization); `limit_distance` takes it from the model.
    """

    gamma: Float[Array, " K"]
    u: Float[Array, "K D"]
    s: Float[Array, " K"]


def predicted_limit(
    data: Dataset, *, tol: float | None = None, max_steps: int = 100_000
) -> Theorem1Limit:
    """The limit quantities `(gamma_k, u_k, s_k)` of Theorem 1 for `data`.

    **Raises:** `ValueError` (concrete data) if a class is empty, has no positive margin
    through the origin (0 in its convex hull: Theorem 1 does not apply), or the solver
    did not reach its tolerance.
    """
    mm = class_max_margins(data, tol=tol, max_steps=max_steps)
    if not isinstance(mm.gamma, jax.core.Tracer):
        gamma = np.asarray(mm.gamma)
        bad = [int(k) for k in np.flatnonzero(~(gamma > 0))]
        if bad:
            raise ValueError(
                f"classes {bad} have no positive margin through the origin (0 lies in "
                "their convex hull): Theorem 1 does not apply"
            )
        unconverged = [int(k) for k in np.flatnonzero(~np.asarray(mm.converged))]
        if unconverged:
            raise ValueError(
                f"the max-margin solver did not converge for classes {unconverged} "
                f"(relative gaps {np.asarray(mm.gap)[unconverged]}); raise max_steps"
            )
    return Theorem1Limit(mm.gamma, mm.u, margin_scales(mm.gamma))


def _class_output_directions(out_dim: int, num_classes: int, dtype) -> Array:
    """`E~` (multi-class) or `[[-1, 1]]` (binary, label 1 = `+`): the `V` block signs."""
    if out_dim == 1:
        if num_classes != 2:
            raise ValueError("a model with one output needs K = 2 classes")
        return jnp.asarray([[-1.0, 1.0]], dtype=dtype)
    if out_dim != num_classes:
        raise ValueError(f"the model has {out_dim} outputs but K = {num_classes}")
    return pseudo_labels(num_classes, dtype)


def predicted_margin(limit: Theorem1Limit, out_dim: int) -> Float[Array, ""]:
    r"""The smallest normalized margin of every class in the limit of Theorem 1.

    On a support vector `x_i` of class `k`, `f_bar(x_i) = s_k^2 gamma_k e~_k`, and
    `s_k^2 gamma_k = 1/(2 sum_l gamma_l^{-1})` is the same for all classes. The margin
    `f_k - max_{l != k} f_l` is this times `sqrt(K/(K-1))` (the gap between the entries
    of `e~_k`); binary (`out_dim = 1`): `1/(2 sum_l gamma_l^{-1})`.
    """
    base = 1.0 / (2.0 * jnp.sum(1.0 / limit.gamma))
    if out_dim == 1:
        return base
    k = limit.gamma.shape[-1]
    return base * math.sqrt(k / (k - 1))


def limit_distance(
    model: TwoLayerReLU, data: Dataset, limit: Theorem1Limit
) -> dict[str, Array]:
    r"""How far `theta/||theta||_F` is from the limit predicted by Theorem 1.

    Groups `N_k` are `metrics.neuron_groups` (the neurons whose `v_j` points most to
    `e~_k`; binary: the sign of `v_j`). With `W, V` divided by `||theta||_F`:

    - `"distance"`: `||theta_bar - theta*||_F`, where `theta*` is the predicted limit
      `W*_k = s_k u_k g_k^T`, `V*_k = s_k e~_k g_k^T` with the split `g_k` (not fixed by
      the theorem) taken from the model: `g_k` = the non-negative part of
      `W_k^T u_k`, normalized.
    - `"alignment"`: `1 - sum_j ||w_j||^2 cos(w_j, u_{k(j)}) / ||W||_F^2`, the
      norm-weighted misalignment of the neurons with their class direction `u_k` (small
      neurons count little: they need not be aligned).
    - `"cosines"`, shape `(h,)`: `cos(w_j, u_{k(j)})` of each neuron.
    - `"norm_shares"`, shape `(K,)`: `sum_{j in N_k} ||w_j||^2`, predicted `s_k^2`;
      `"norm_share_error"`: `max_k |norm_shares_k - s_k^2| / s_k^2`.
    - `"self_duality"`: `||V - E~ diag(s) Phi|| / ||E~ diag(s) Phi||` with `Phi` the
      measured class-mean feature directions (rows); binary target `s_+ phi_+ -
      s_- phi_-`.
    - `"orthogonality"`: `metrics.class_orthogonality` of the features.
    - `"feature_error"`: `max_i ||phi_bar(x_i) - s_k <u_k, x_i> phi_k|| /
      (s_k <u_k, x_i>)`, the relative error of part 1 (directional collapse with the
      predicted lengths; `phi_k` the measured unit class-mean direction).
    - `"margin_error"`: `max_k |min_{i in I_k} margin_i - m*| / m*`, with the
      normalized margins and `m* = predicted_margin`.

    All are 0 at the predicted limit. Rates: directions converge like `1/log t` for
    the cross-entropy and exponential losses, so expect slow decay in the late phase.

    **Returns:** a dict of arrays (fixed shapes; usable under `jit`/`vmap` and as a
    recorder through `LimitRecorder`).
    """
    return _limit_distance_jit(model, data, limit)


@eqx.filter_jit
def _limit_distance_jit(model, data, limit):
    k = data.num_classes
    dtype = model.W.dtype
    e_out = _class_output_directions(model.out_dim, k, dtype)
    norm = metrics.weight_norm(model)
    W = model.W / norm
    V = model.V / norm
    unit = TwoLayerReLU(W, V, model.leak)
    masks = metrics.group_masks(unit)  # (K, h)
    s = limit.s.astype(dtype)
    u = limit.u.astype(dtype)

    # Nearest predicted limit with the model's split g_k.
    proj = u @ W  # (K, h): <u_k, w_j>
    g = jnp.maximum(proj, 0.0) * masks
    gn = jnp.linalg.norm(g, axis=1, keepdims=True)
    g = g / jnp.where(gn > 0, gn, 1.0)
    w_star = (u * s[:, None]).T @ g  # (D, h) = sum_k s_k u_k g_k^T
    v_star = e_out @ (s[:, None] * g)  # (K_out, h)
    distance = jnp.sqrt(jnp.sum((W - w_star) ** 2) + jnp.sum((V - v_star) ** 2))

    wn2 = jnp.sum(W**2, axis=0)
    wn = jnp.sqrt(wn2)
    own_u = masks.T @ u  # (h, D): u_{k(j)}
    cosines = jnp.sum(W.T * own_u, axis=1) / jnp.where(wn > 0, wn, jnp.nan)
    alignment = 1.0 - jnp.sum(wn2 * jnp.nan_to_num(cosines)) / jnp.sum(wn2)

    shares = masks @ wn2
    share_error = jnp.max(jnp.abs(shares - s**2) / s**2)

    feats = unit.features(data.x)
    means, _ = metrics.class_means(feats, data.y, k)
    phi = means / jnp.linalg.norm(means, axis=1, keepdims=True)
    target_v = e_out @ (s[:, None] * phi)
    self_duality = jnp.linalg.norm(V - target_v) / jnp.linalg.norm(target_v)
    orthogonality = metrics.class_orthogonality(feats, data.y, k)

    length = s[data.y] * jnp.sum(data.x * u[data.y], axis=1)  # s_k <u_k, x_i>
    predicted = length[:, None] * phi[data.y]
    feature_error = jnp.max(jnp.linalg.norm(feats - predicted, axis=1) / jnp.abs(length))

    margins = metrics.normalized_margins(unit, data)
    oh = jax.nn.one_hot(data.y, k, dtype=dtype)
    class_min = jnp.min(jnp.where(oh > 0, margins[:, None], jnp.inf), axis=0)
    m_star = predicted_margin(limit, model.out_dim).astype(dtype)
    margin_error = jnp.max(jnp.abs(class_min - m_star)) / m_star

    return {
        "distance": distance,
        "alignment": alignment,
        "cosines": cosines,
        "norm_shares": shares,
        "norm_share_error": share_error,
        "self_duality": self_duality,
        "orthogonality": orthogonality,
        "feature_error": feature_error,
        "margin_error": margin_error,
    }


class LimitRecorder(eqx.Module):
    """Records `limit_distance(model, data, limit)` along a run.

    An `eqx.Module`, so the limit's arrays are traced, not baked into the compiled run:
    `gradient_flow(..., record={"limit": LimitRecorder(predicted_limit(data))})`.
    """

    limit: Theorem1Limit

    def __call__(self, model: TwoLayerReLU, data: Dataset) -> dict[str, Array]:
        return limit_distance(model, data, self.limit)


# ----------------------------------------------------------------------------------
# Assumptions
# ----------------------------------------------------------------------------------


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
    b = np.asarray(pseudo_labels(k, jnp.float64)).T @ vu  # (K, h) B_l^v
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


def effective_eps(model: TwoLayerReLU) -> Float[Array, ""]:
    r"""`eps = max_j max(||w_j||, ||v_j||)`: the init scale with `||w_j0|| <= 1`.

    The lemmas write `w_j(0) = eps w_j0` with `||w_j0|| <= 1`; this is the smallest such
    `eps` for the given weights (for a Gaussian init of std `scale`, about
    `scale sqrt(D)`).
    """
    wn = jnp.linalg.norm(model.W, axis=-2)
    vn = jnp.linalg.norm(model.V, axis=-2)
    return jnp.max(jnp.maximum(wn, vn), axis=-1)


def lemma2_eps_bound(data: Dataset, width: int | ArrayLike) -> Float[Array, ""]:
    r"""Lemma 2's bound on the init scale (NeurIPS 2025): `sqrt(K)/(16 X_max sqrt(h))`."""
    xmax = jnp.max(jnp.linalg.norm(data.x, axis=-1))
    return jnp.sqrt(data.num_classes) / (
        16.0 * xmax * jnp.sqrt(jnp.asarray(width, xmax.dtype))
    )


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


# ----------------------------------------------------------------------------------
# Time scales
# ----------------------------------------------------------------------------------


def alignment_horizon(
    data: Dataset, width: int | ArrayLike, eps: float | ArrayLike
) -> Float[Array, ""]:
    r"""Lemma 2's horizon `T = log(1/(sqrt(h) eps)) / (4 n X_max)` (NeurIPS 2025).

    Up to `T` the weights stay small (`||w_j||^2 <= eps/sqrt(h)`) and the neurons'
    directions follow the alignment dynamics; the separation time `T*` is at most `T`
    for small enough `eps` (Prop. 3). The loss is a sum over the `n` samples. Valid
    under `lemma2_eps_bound`; use `effective_eps(model)` for `eps`. Same expression as
    ICLR 2024's Lemma 1 horizon. `eps` and `width` may be traced (sweeps).
    """
    xmax = jnp.max(jnp.linalg.norm(data.x, axis=-1))
    h = jnp.asarray(width, xmax.dtype)
    eps = jnp.asarray(eps, xmax.dtype)
    return jnp.log(1.0 / (jnp.sqrt(h) * eps)) / (4.0 * data.num_samples * xmax)


def iclr_mu(data: Dataset) -> float:
    r"""ICLR 2024 Assumption 1's `mu = min_{i,j} <x_i y_i, x_j y_j>/(||x_i|| ||x_j||)`.

    Binary data only (label 1 is `+1`); equals `min(mu_s, mu_d)` of the NeurIPS paper.
    """
    if data.num_classes != 2:
        raise ValueError("iclr_mu is for binary data (K = 2)")
    x = np.asarray(data.x, dtype=np.float64)
    s = 2.0 * np.asarray(data.y) - 1.0
    u = x / np.linalg.norm(x, axis=1, keepdims=True) * s[:, None]
    return float((u @ u.T).min())


def iclr_t1(data: Dataset, zeta: float, xi: float) -> float:
    r"""The alignment time `t1 = 16 log n / (min(zeta, xi) sqrt(mu) X_min)` (ICLR 2024).

    Theorem 1 of Min, Mallada and Vidal (App. C): by `t1` every neuron of `V_+` is in
    `S_+` or `S_dead` (symmetrically for `V_-`). `zeta` and `xi` are data constants
    defined in the paper's Lemmas 8-9 through the geometry of the activation cones; they
    are not computed here and must be given. Without them the theorem only gives the
    order `t1 = O(log n / sqrt(mu))`.

    **Raises:** `ValueError` if `mu <= 0` (Assumption 1 fails) or `zeta`/`xi` are not
    positive.
    """
    if not (zeta > 0 and xi > 0):
        raise ValueError(f"zeta and xi must be positive, got {zeta}, {xi}")
    mu = iclr_mu(data)
    if mu <= 0:
        raise ValueError(f"ICLR Assumption 1 fails: mu = {mu:.4g} <= 0")
    xmin = float(np.linalg.norm(np.asarray(data.x), axis=1).min())
    n = data.num_samples
    return 16.0 * math.log(n) / (min(zeta, xi) * math.sqrt(mu) * xmin)


def separation_time(
    ts: Float[ArrayLike, " T"],
    separated: Bool[ArrayLike, " T"],
    persistent: bool = True,
) -> Float[Array, ""]:
    r"""The measured separation time `T*` from saved values of `metrics.is_separated`.

    `T*` is the first save time at which every neuron is active on at most one class and
    every class has a neuron active on all its samples (NeurIPS 2025, Prop. 1). With
    `persistent` (default), the first save time from which this holds at every later
    save time (the theory says separation, once reached, lasts; this ignores transient
    coincidences). `inf` if never. Resolution is that of the save times. Works under
    `jit`/`vmap` (e.g. over a batch of trajectories).
    """
    ts = jnp.asarray(ts)
    sep = jnp.asarray(separated)
    if sep.dtype != bool:
        sep = sep == 1  # recorded as floats; `inf` marks save times after a failure
    if persistent:
        sep = jnp.flip(jnp.cumprod(jnp.flip(sep).astype(jnp.int32)) > 0)
    idx = jnp.argmax(sep)
    return jnp.where(jnp.any(sep), ts[idx], jnp.inf)


def trajectory_separation_time(
    traj: Trajectory, data: Dataset | None = None, persistent: bool = True
) -> Float[Array, ""]:
    r"""`separation_time` of a `Trajectory`, from its records or its saved models.

    Uses, in order: `traj.records["separated"]`, `traj.records["activation"]
    ["separated"]` (from `metrics.recorder("separated")` or `"activation"`), else the
    saved models (needs `data`).

    **Raises:** `ValueError` if neither records nor models (with `data`) are available.
    """
    rec = traj.records or {}
    if "separated" in rec:
        sep = rec["separated"]
    elif "activation" in rec:
        sep = rec["activation"]["separated"]
    elif traj.models is not None and data is not None:
        sep = jax.vmap(
            lambda W, V: metrics.is_separated(TwoLayerReLU(W, V, traj.models.leak), data)
        )(traj.models.W, traj.models.V)
    else:
        raise ValueError(
            "the trajectory has no 'separated' or 'activation' record and no saved models "
            "(pass data with save_params=True, or record metrics.recorder('separated'))"
        )
    return separation_time(traj.ts, sep, persistent)
