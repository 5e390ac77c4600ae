"""The time scales of the dynamics: init scale, alignment horizon, separation time."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .. import metrics
from .._dataset import Dataset
from .._model import TwoLayerReLU
from .._trajectory import Trajectory


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


@functools.partial(jax.jit, static_argnames="persistent")
def separation_time(
    ts: Float[ArrayLike, " T"],
    separated: Bool[ArrayLike, " T"],
    persistent: bool = True,
) -> Float[Array, " *batch"]:
    r"""The measured separation time `T*` from saved values of `metrics.is_separated`.

    `T*` is the first save time at which every neuron is active on at most one class and
    every class has a neuron active on all its samples (NeurIPS 2025, Prop. 1). With
    `persistent` (default), the first save time from which this holds at every later
    save time (the theory says separation, once reached, lasts; this ignores transient
    coincidences). `inf` if never. Resolution is that of the save times. Works under
    `jit`/`vmap` (e.g. over a batch of trajectories), and along the last axis of
    batched arrays (`ts` broadcast against `separated`: one time per run).
    """
    ts = jnp.asarray(ts)
    sep = jnp.asarray(separated)
    try:
        shape = jnp.broadcast_shapes(ts.shape, sep.shape)
    except ValueError:
        shape = None
    if ts.ndim == 0 or sep.ndim == 0 or shape is None or ts.shape[-1] != sep.shape[-1]:
        raise ValueError(
            "separation_time needs one value of `separated` per save time (the last "
            f"axis): got ts of shape {ts.shape} and separated of shape {sep.shape}"
        )
    if sep.dtype != bool:
        sep = sep == 1  # recorded as floats; `inf` marks save times after a failure
    sep = jnp.broadcast_to(sep, shape)
    if persistent:
        sep = jnp.flip(jnp.cumprod(jnp.flip(sep, -1).astype(jnp.int32), axis=-1) > 0, -1)
    idx = jnp.argmax(sep, axis=-1)
    first = jnp.take_along_axis(jnp.broadcast_to(ts, shape), idx[..., None], axis=-1)
    return jnp.where(jnp.any(sep, axis=-1), first[..., 0], jnp.inf)


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
        sep = _separated_along(traj.models, data)
    else:
        raise ValueError(
            "the trajectory has no 'separated' or 'activation' record and no saved models "
            "(pass data with save_params=True, or record metrics.recorder('separated'))"
        )
    return separation_time(traj.ts, sep, persistent)


@eqx.filter_jit
def _separated_along(models: TwoLayerReLU, data: Dataset) -> Bool[Array, " T"]:
    """`metrics.is_separated` of each of a batch of models (one compiled call)."""
    return jax.vmap(
        lambda W, V: metrics.is_separated(TwoLayerReLU(W, V, models.leak), data)
    )(models.W, models.V)
