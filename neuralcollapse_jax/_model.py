"""The two-layer bias-free ReLU network `f(x) = V relu(W^T x)`."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._dataset import Dataset


InitName = Literal["gaussian", "lecun", "balanced", "semi_local"]
INIT_NAMES: tuple[str, ...] = ("gaussian", "lecun", "balanced", "semi_local")


def activation(z: Array, leak: float = 0.0) -> Array:
    """ReLU (or leaky ReLU) with the derivative convention `relu'(0) = 0`.

    `jnp.where(z > 0, z, leak * z)` differentiates to `1` where `z > 0` and to `leak`
    elsewhere, so at the kink `z = 0` the derivative is `leak` (`0` for the plain ReLU),
    as in the papers' regular solutions.
    """
    return jnp.where(z > 0, z, leak * z)


def pseudo_labels(num_classes: int, dtype=None) -> Float[Array, "K K"]:
    """The pseudo-label matrix `E~ = sqrt(K/(K-1)) (I - 11^T/K)` of Min, Zhu and Vidal.

    Its columns `e~_k` have unit norm and pairwise inner products `-1/(K-1)` (a simplex
    ETF). Defined for `K >= 2`.
    """
    if num_classes < 2:
        raise ValueError(f"pseudo_labels needs num_classes >= 2, got {num_classes}")
    k = num_classes
    eye = jnp.eye(k, dtype=dtype)
    return jnp.sqrt(k / (k - 1)) * (eye - jnp.full((k, k), 1.0 / k, dtype=dtype))


def augment(x: Float[ArrayLike, "n D"]) -> Float[Array, "n D+1"]:
    """Append a constant coordinate, `x -> [x; 1]`.

    The network is bias-free, as in both papers. A hidden bias `b_j` is recovered by
    training on augmented inputs: `<w_j, [x; 1]> = <w_j[:D], x> + w_j[D]`. The papers'
    results apply when the *augmented* data are orthogonally separable (NeurIPS 2025,
    App. A).
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"augment expects x of shape (n, D), got shape {x.shape}")
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), dtype=x.dtype)], axis=1)


class TwoLayerReLU(eqx.Module):
    r"""Two-layer bias-free ReLU network `f(x) = V relu(W^T x)`.

    Notation of Min, Zhu and Vidal (NeurIPS 2025, eq. 2): `W = [w_1 ... w_h]` of shape
    `(D, h)` holds the input weights of the `h` hidden neurons as columns, and
    `V = [v_1 ... v_h]` of shape `(K_out, h)` the output weights. The hidden features
    are `phi(x) = relu(W^T x)` and `f(x) = sum_j v_j relu(<w_j, x>)`.

    The derivative of the ReLU at 0 is taken as 0 (the regular solutions of the ICLR
    2024 paper). A leaky slope `leak` gives `relu(z) = max(z, leak z)`.

    Arrays may carry leading batch axes (e.g. a `Trajectory`'s time axis); such a model
    is used inside `jax.vmap`.
    """

    W: Float[Array, "D h"]
    V: Float[Array, "K h"]
    leak: float = eqx.field(static=True, default=0.0)

    def __init__(self, W: ArrayLike, V: ArrayLike, leak: float = 0.0):
        W = jnp.asarray(W)
        V = jnp.asarray(V)
        if W.ndim < 2 or V.ndim < 2:
            raise ValueError(
                f"W must have shape (D, h) and V shape (K_out, h); got W {W.shape}, "
                f"V {V.shape}"
            )
        if W.shape[-1] != V.shape[-1]:
            raise ValueError(
                f"W and V must have the same width h (last axis): W {W.shape}, V {V.shape}"
            )
        if not jnp.issubdtype(W.dtype, jnp.floating) or not jnp.issubdtype(
            V.dtype, jnp.floating
        ):
            raise ValueError(f"W and V must be floating point, got {W.dtype} and {V.dtype}")
        if not 0.0 <= float(leak) < 1.0:
            raise ValueError(f"leak must be in [0, 1), got {leak}")
        self.W = W
        self.V = V
        self.leak = float(leak)

    @property
    def in_dim(self) -> int:
        return self.W.shape[-2]

    @property
    def width(self) -> int:
        return self.W.shape[-1]

    @property
    def out_dim(self) -> int:
        return self.V.shape[-2]

    def __getitem__(self, index) -> TwoLayerReLU:
        """The model at `index` of the leading axis (e.g. `traj.models[-1]`, a save time).

        `index` is concrete: an integer (negative from the end), a slice, an integer
        array or a boolean mask, as in NumPy.

        **Raises:** `ValueError` for a model without a leading axis (`W` of shape
        `(D, h)`); `IndexError` for an index out of range (JAX itself would clamp it).
        """
        if self.W.ndim < 3:
            raise ValueError(
                f"the model has no leading axis to index (W has shape {self.W.shape})"
            )
        if isinstance(index, jax.Array):
            index = np.asarray(index)
        index = np.arange(self.W.shape[0])[index]
        return TwoLayerReLU(self.W[index], self.V[index], self.leak)

    def preactivations(self, x: Float[Array, "n D"]) -> Float[Array, "n h"]:
        """`x_i^T w_j` for every sample `i` and neuron `j`."""
        return x @ self.W

    def features(self, x: Float[Array, "n D"]) -> Float[Array, "n h"]:
        """Hidden features `phi(x) = relu(W^T x)` (one row per sample)."""
        return activation(self.preactivations(x), self.leak)

    def __call__(self, x: Float[Array, "n D"]) -> Float[Array, "n K"]:
        """Outputs `f(x_i) = V relu(W^T x_i)`, one row per sample."""
        return self.features(x) @ self.V.T

    @staticmethod
    def init(
        key: PRNGKeyArray,
        in_dim: int,
        width: int,
        out_dim: int,
        scale: float | ArrayLike,
        init: InitName = "gaussian",
        *,
        data: Dataset | None = None,
        leak: float = 0.0,
        dtype=None,
    ) -> TwoLayerReLU:
        r"""Random small initialization `theta(0) = scale * theta_0`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `in_dim`, `width`, `out_dim`: `D`, `h` and `K_out`.
        - `scale`: the initialization scale `eps`. **It is a standard deviation**, not a
          variance. For `"gaussian"` every entry of `W` and `V` is `N(0, scale^2)`: the ICLR
          2024 paper's `alpha` (its MNIST run uses `scale=1e-6`); the NeurIPS 2025 paper
          states a *variance* of `1e-6`, which is `scale=1e-3` here. May be a traced
          array, so that `jax.vmap` sweeps it without recompiling.
        - `init`: one of
            - `"gaussian"`: i.i.d. `N(0, scale^2)` entries (unbalanced, as in the
              papers' experiments);
            - `"lecun"`: `W ~ N(0, scale^2/D)`, `V ~ N(0, scale^2/h)`;
            - `"balanced"`: `w_j(0) = scale * w_j0` with `[W_0]_ij ~ N(0, 1/D)` (ICLR
              eq. 3), and `v_j(0)` of the same norm as `w_j(0)` in a uniformly random
              direction (a random sign when `K_out = 1`): `||w_j|| = ||v_j||`;
            - `"semi_local"`: the multi-class initialization suggested by the NeurIPS
              paper (after Assumption 4): each shape pair `(w_j0, v_j0)` is drawn
              uniformly from `{(x_i/||x_i||, E~ y_i)}` over the samples of `data`
              (`E~` = `pseudo_labels(K)`; for `K_out = 1`, `v_j0 = +-1` by the label
              sign), then scaled by `scale`. Balanced by construction. Needs `data`.
        - `data`: the `Dataset`, for `"semi_local"` only.
        - `leak`: leaky-ReLU slope (default 0: ReLU).
        - `dtype`: floating dtype of the weights (default: JAX's default float).

        **Returns:**

        A `TwoLayerReLU`.
        """
        if init not in INIT_NAMES:
            raise ValueError(f"unknown init {init!r}; choose one of {INIT_NAMES}")
        for name, value in (("in_dim", in_dim), ("width", width), ("out_dim", out_dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(scale, jax.core.Tracer):
            s = jnp.asarray(scale)
            if s.ndim != 0 or not bool(jnp.isfinite(s)) or not bool(s > 0):
                raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if dtype is None:
            dtype = jnp.result_type(float)
        if init == "semi_local":
            if data is None:
                raise ValueError('init="semi_local" needs the data: pass data=Dataset')
            if data.dim != in_dim:
                raise ValueError(f"data has dimension {data.dim} but in_dim is {in_dim}")
            if out_dim == 1 and data.num_classes != 2:
                raise ValueError("out_dim = 1 needs a binary data set (K = 2)")
            if out_dim != 1 and out_dim != data.num_classes:
                raise ValueError(
                    f"out_dim {out_dim} differs from the number of classes "
                    f"{data.num_classes}"
                )
        W, V = _sample(
            key,
            jnp.asarray(scale, dtype=dtype),
            data if init == "semi_local" else None,
            in_dim=int(in_dim),
            width=int(width),
            out_dim=int(out_dim),
            init=init,
            dtype=jnp.dtype(dtype),
        )
        return TwoLayerReLU(W, V, leak=leak)


@eqx.filter_jit
def _sample(key, scale, data, *, in_dim, width, out_dim, init, dtype):
    """The random draw of `TwoLayerReLU.init`, compiled once per shape and kind (eager
    dispatch of its dozen small ops costs more than the draw)."""
    kw, kv = jax.random.split(key)
    if init == "gaussian":
        W = jax.random.normal(kw, (in_dim, width), dtype)
        V = jax.random.normal(kv, (out_dim, width), dtype)
    elif init == "lecun":
        W = jax.random.normal(kw, (in_dim, width), dtype) / jnp.sqrt(in_dim)
        V = jax.random.normal(kv, (out_dim, width), dtype) / jnp.sqrt(width)
    elif init == "balanced":
        W = jax.random.normal(kw, (in_dim, width), dtype) / jnp.sqrt(in_dim)
        if out_dim == 1:
            V = jnp.where(jax.random.bernoulli(kv, 0.5, (1, width)), 1.0, -1.0)
            V = V.astype(dtype)
        else:
            V = jax.random.normal(kv, (out_dim, width), dtype)
            V = V / jnp.linalg.norm(V, axis=0, keepdims=True)
        V = V * jnp.linalg.norm(W, axis=0, keepdims=True)
    else:  # semi_local
        x = jnp.asarray(data.x, dtype)
        idx = jax.random.randint(kw, (width,), 0, data.num_samples)
        xs = x[idx]
        W = (xs / jnp.linalg.norm(xs, axis=1, keepdims=True)).T
        labels = data.y[idx]
        if out_dim == 1:
            V = (2.0 * labels - 1.0).astype(dtype)[None, :]
        else:
            V = pseudo_labels(out_dim, dtype)[:, labels]
    return scale * W, scale * V


TwoLayerReLU.__init__.__doc__ = """**Arguments:**

- `W`: input weights, shape `(D, h)` (columns are the neurons' `w_j`).
- `V`: output weights, shape `(K_out, h)` (columns are the neurons' `v_j`).
- `leak`: leaky-ReLU slope in `[0, 1)`; 0 (default) is the ReLU.
"""
