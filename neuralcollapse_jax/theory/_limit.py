"""The limit of Theorem 1 (NeurIPS 2025) and the distance of a network to it."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .. import metrics
from .._dataset import Dataset
from .._model import TwoLayerReLU, pseudo_labels
from ._max_margin import class_max_margins


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
