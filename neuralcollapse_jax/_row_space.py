"""The flow in the row space of the data: exact, and cheaper when `rank(X) < D`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._dataset import Dataset
from ._model import TwoLayerReLU


class RowSpace(eqx.Module):
    """The data's row space `Q` (`D x r`, orthonormal columns), the part `W_perp` of the
    initial `W` outside it, and the full data set.

    `X W = (X Q)(Q^T W)` because `X W_perp = 0`, and `grad_W L = X^T G` lies in the row
    space, so `W_perp` never moves: the flow of `(Q^T W, V)` on the data `X Q` is the
    flow of `(W, V)` on `X`, exactly (to the rank threshold of `X`'s singular values).
    """

    Q: Float[Array, "D r"]
    W_perp: Float[Array, "D h"]
    data: Dataset

    def lift(self, y: TwoLayerReLU) -> TwoLayerReLU:
        """The full model `W = Q W_r + W_perp` of a reduced one."""
        return TwoLayerReLU(self.Q @ y.W + self.W_perp, y.V, y.leak)


def row_space_basis(data: Dataset) -> Float[Array, "D r"]:
    """An orthonormal basis (`D x r`) of the row space of `data.x`, from its SVD.

    The rank `r` counts singular values above `max(n, D) * eps * s_max` (NumPy's
    `matrix_rank` threshold, with the data's floating-point `eps`). The data must be
    concrete (not traced under `jit`/`vmap`): `r` decides array shapes.
    """
    return jnp.asarray(basis_of(data))


def basis_of(data: Dataset) -> np.ndarray:
    """`row_space_basis` as a NumPy array (in the data's dtype): under a trace, a
    NumPy array stays a constant that NumPy can multiply (a JAX array made there is a
    tracer)."""
    if isinstance(data.x, jax.core.Tracer):
        raise ValueError(
            "row_space=True needs concrete data: the rank decides array shapes, so it "
            "cannot be used with data traced under jit/vmap"
        )
    _, s, vt = np.linalg.svd(np.asarray(data.x, dtype=np.float64), full_matrices=False)
    eps = jnp.finfo(data.x.dtype).eps
    r = int(np.sum(s > max(data.x.shape) * eps * (s[0] if s.size else 0.0)))
    return np.asarray(vt[:r].T, dtype=data.x.dtype)


def reduce_to_row_space(
    model: TwoLayerReLU, data: Dataset, basis: np.ndarray | None = None
) -> tuple[TwoLayerReLU, Dataset, RowSpace | None]:
    """The model and data in the row space of `data.x` (`basis`, default
    `basis_of(data)`), and the `RowSpace` that lifts the reduced model back (`None`,
    with the inputs unchanged, for full-rank data). The data are concrete (`basis_of`
    requires it)."""
    basis = basis_of(data) if basis is None else basis
    if basis.shape[1] == data.dim:
        return model, data, None
    Q = jnp.asarray(basis)
    W_r, W_perp = _reduce(model.W, Q)
    lift = RowSpace(Q=Q, W_perp=W_perp, data=data)
    # `x Q` in NumPy, once: formed in JAX under a trace (data closed over by a jitted
    # function), it is a product of two constants, which XLA folds at every
    # compilation (over a second for 300 MNIST digits, with an error-level log line
    # about slow constant folding).
    x_r = jnp.asarray(np.asarray(data.x) @ basis, dtype=data.x.dtype)
    reduced = Dataset(x_r, data.y, data.num_classes)
    return TwoLayerReLU(W_r, model.V, model.leak), reduced, lift


@jax.jit
def _reduce(W: Array, Q: Array) -> tuple[Array, Array]:
    """`Q^T W` and `W - Q Q^T W`, in one compiled call (operation by operation, each
    would compile on its own on a first call)."""
    W_r = Q.T @ W
    return W_r, W - Q @ W_r
