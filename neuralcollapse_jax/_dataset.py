"""A labelled data set `{(x_i, y_i)}`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


class Dataset(eqx.Module):
    """Samples `x` of shape `(n, D)` with integer class labels `y` in `[0, K)`.

    Validated on construction when the arrays are concrete (not inside `jit`/`vmap`):
    shapes, finite values, integer labels in range, and at least two classes.

    `num_classes` is `K`. It is inferred as `max(y) + 1` unless given; give it when a
    class may be absent from `y` (e.g. a binary toy set with positive samples only).
    Class `k` is the one-hot target `e_k` for cross-entropy; for the binary losses label
    1 is the sign `+1` and label 0 the sign `-1`.
    """

    x: Float[Array, "n D"]
    y: Int[Array, " n"]
    num_classes: int = eqx.field(static=True)

    def __init__(self, x: ArrayLike, y: ArrayLike, num_classes: int | None = None):
        # Shapes are static even under tracing; values are checked where concrete (a
        # traced `x`, as when differentiating with respect to the data, still gets its
        # labels checked and `num_classes` inferred from them).
        # (`np.shape` reads `.shape` where there is one, tracers included, and takes
        # nested lists, which `jnp.shape` is deprecating.)
        x_shape, y_shape = np.shape(x), np.shape(y)
        if len(x_shape) != 2:
            raise ValueError(f"x must have shape (n, D), got shape {x_shape}")
        if len(y_shape) != 1:
            raise ValueError(f"y must have shape (n,), got shape {y_shape}")
        if x_shape[0] != y_shape[0]:
            raise ValueError(f"x has {x_shape[0]} samples but y has {y_shape[0]} labels")
        if x_shape[0] == 0 or x_shape[1] == 0:
            raise ValueError(f"x must be non-empty, got shape {x_shape}")
        if _is_concrete(x):
            x_np = np.asarray(x)
            if not np.issubdtype(x_np.dtype, np.number) or np.issubdtype(
                x_np.dtype, np.complexfloating
            ):
                raise ValueError(f"x must be real numbers, got dtype {x_np.dtype}")
            if not np.all(np.isfinite(x_np)):
                bad = int(np.sum(~np.isfinite(x_np)))
                raise ValueError(f"x has {bad} non-finite values (NaN or inf)")
            if not np.issubdtype(x_np.dtype, np.floating):
                x_np = x_np.astype(jnp.result_type(float))
            x = jnp.asarray(x_np)
        if _is_concrete(y):
            y_np = np.asarray(y)
            if np.issubdtype(y_np.dtype, np.floating):
                if not np.all(np.isfinite(y_np)) or np.any(y_np != np.round(y_np)):
                    raise ValueError("y must hold integer class labels")
                y_np = y_np.astype(np.int64)
            elif not np.issubdtype(y_np.dtype, np.integer):
                raise ValueError(f"y must hold integer class labels, got {y_np.dtype}")
            if y_np.min() < 0:
                raise ValueError(f"labels must be >= 0, got min {int(y_np.min())}")
            inferred = int(y_np.max()) + 1
            if num_classes is None:
                num_classes = inferred
                if len(np.unique(y_np)) < 2:
                    raise ValueError(
                        "y must contain at least two classes (or pass num_classes)"
                    )
            if int(num_classes) != num_classes or num_classes < 2:
                raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
            if inferred > num_classes:
                raise ValueError(
                    f"labels must be in [0, {num_classes}), got max {inferred - 1}"
                )
            y = jnp.asarray(y_np.astype(np.int32))
        elif num_classes is None:
            raise ValueError("num_classes must be given when y is traced")
        self.x = jnp.asarray(x)
        self.y = jnp.asarray(y)
        self.num_classes = int(num_classes)

    @property
    def num_samples(self) -> int:
        return self.x.shape[-2]

    @property
    def dim(self) -> int:
        return self.x.shape[-1]

    def one_hot(self) -> Float[Array, "n K"]:
        """One-hot targets `e_{y_i}`, shape `(n, K)`."""
        return jax.nn.one_hot(self.y, self.num_classes, dtype=self.x.dtype)

    def signs(self) -> Float[Array, " n"]:
        """Binary signs `+1` for label 1 and `-1` for label 0."""
        return (2 * self.y - 1).astype(self.x.dtype)

    def class_sizes(self) -> Int[Array, " K"]:
        """Number of samples of each class."""
        return jnp.bincount(self.y, length=self.num_classes)

    def astype(self, dtype) -> Dataset:
        """The same data set with `x` cast to `dtype` (e.g. `jnp.float32`)."""
        return Dataset(self.x.astype(dtype), self.y, self.num_classes)


Dataset.__init__.__doc__ = """**Arguments:**

- `x`: samples, shape `(n, D)`, finite real values.
- `y`: integer labels, shape `(n,)`, in `[0, K)`.
- `num_classes`: `K`; inferred as `max(y) + 1` when omitted.

**Raises:** `ValueError` naming the problem.
"""


class WithTranspose(Dataset):
    """A `Dataset` that also holds `x.T`, formed once: the `args` of a solve.

    Data passed to a compiled solve as an argument would otherwise be transposed
    inside every product `x.T @ G` of every step (XLA folds a transpose into the
    product it feeds rather than hoisting it out of the loop), and on CPU the product
    with `x` stored by rows is the slower one for many samples (`_flow.TRANSPOSE_FROM`
    says when the solve uses this). `transposed` reads the stored transpose."""

    xt: Float[Array, "D n"]

    def __init__(self, data: Dataset):
        # (No checks: `data` was checked when it was made.)
        self.x = data.x
        self.y = data.y
        self.num_classes = data.num_classes
        self.xt = jnp.transpose(data.x)


def transposed(data: Dataset) -> Array:
    """`data.x.T`: the stored transpose where `data` holds one (`WithTranspose`)."""
    return data.xt if isinstance(data, WithTranspose) else data.x.T
