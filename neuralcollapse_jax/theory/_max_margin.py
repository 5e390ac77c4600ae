"""The max-margin direction through the origin of a point set and of each class."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._autodiff import with_tangent
from .._dataset import Dataset


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
    - `differentiable`: whether `gamma`, `u` and `alpha` are differentiable in the
      points: converged, with linearly independent support vectors, and every point
      at the margin (within `sqrt(tol)`, relative) a support vector of weight above
      `sqrt(tol)` (strict complementarity). Where it is `False`, a perturbation of the
      points can change the support, and the derivative of the solution map does not
      exist (only one-sided ones do); the derivatives returned are then those with
      the support held fixed, and are not to be trusted. (Data built by
      `datasets.orthogonally_separable` with equal norms puts every point of a class
      at the margin in a low-dimensional span: degenerate in this sense.)

    **Derivatives.** `gamma`, `u` and `alpha` carry the derivatives of the exact
    solution on the support `S`: by the KKT conditions `alpha_S = beta/sum(beta)` with
    `X_S X_S^T beta = 1`, `p = X_S^T alpha_S`, `gamma = ||p||`, `u = p/||p||`, which
    is the implicit function theorem applied to the optimality conditions. The
    iterations themselves are not differentiated.
    """

    gamma: Float[Array, "*K"]
    u: Float[Array, "*K D"]
    alpha: Float[Array, "*K n"]
    gap: Float[Array, "*K"]
    converged: Bool[Array, "*K"]
    num_steps: Int[Array, "*K"]
    differentiable: Bool[Array, "*K"]


def _default_tol(dtype) -> float:
    return float(1e3 * jnp.finfo(dtype).eps)


def _support_solution(x, support):
    """`(alpha, p)`: the minimum-norm point of the affine hull of the support, in exact
    arithmetic a smooth function of `x` for a fixed support (see `MaxMargin`)."""
    s = support.astype(x.dtype)
    gram = (x @ x.T) * s[:, None] * s[None, :] + jnp.diag(1.0 - s)
    sol = lx.linear_solve(lx.MatrixLinearOperator(gram), s, solver=lx.SVD(), throw=False)
    beta = sol.value * s
    alpha = beta / jnp.sum(beta)
    return alpha, alpha @ x


def _with_support_derivatives(x, mask, result: MaxMargin) -> MaxMargin:
    """`result` (computed from `stop_gradient(x)`) with the derivatives in `x` of the
    exact solution on its support; nothing extra is computed unless `x` is
    differentiated."""
    support = mask & (result.alpha > 0)

    def exact(x, support):
        alpha, p = _support_solution(x, support)
        gamma = jnp.linalg.norm(p)
        return gamma, p / gamma, alpha

    gamma, u, alpha = with_tangent(
        (result.gamma, result.u, result.alpha), exact, (x,), (support,), add=False
    )
    return eqx.tree_at(lambda r: (r.gamma, r.u, r.alpha), result, (gamma, u, alpha))


def _polish(x, mask, alpha):
    """Solve the KKT system on the current support exactly (Lineax).

    On the support `S` the optimal dual weights solve `X_S X_S^T beta = 1`,
    `alpha_S = beta / sum(beta)` (all support vectors have the same margin `||p||^2`).
    Off the support the system is replaced by the identity, keeping shapes fixed.
    """
    alpha, _ = _support_solution(x, mask & (alpha > 0))
    return alpha


def _gap(x, mask, alpha):
    p = alpha @ x
    pp = jnp.sum(p**2)
    margins = jnp.where(mask, x @ p, jnp.inf)
    return (pp - jnp.min(margins)) / pp, p


def _max_margin_masked(x, mask, tol, max_steps, polish=True):
    """The solver on `stop_gradient(x)` (a loop is not to be differentiated), with
    the implicit derivatives of its solution attached."""
    result = _solve_masked(jax.lax.stop_gradient(x), mask, tol, max_steps, polish)
    return _with_support_derivatives(x, mask, result)


def _solve_masked(x, mask, tol, max_steps, polish=True):
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
    margins = jnp.where(mask, x @ u, jnp.inf)
    gamma = jnp.min(margins)
    converged = gap <= tol
    # Strict complementarity: every point at the margin carries weight.
    slack = jnp.sqrt(tol)
    tight = mask & (margins - gamma <= slack * jnp.abs(gamma))
    strict = jnp.all(~tight | (alpha > slack))
    # A unique solution map: the support vectors are linearly independent.
    support = mask & (alpha > 0)
    sv = jnp.linalg.svd(x * support[:, None], compute_uv=False)
    independent = jnp.sum(sv > slack * sv[0]) == jnp.sum(support)
    differentiable = converged & strict & independent
    return MaxMargin(gamma, u, alpha, gap, converged, steps, differentiable)


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
