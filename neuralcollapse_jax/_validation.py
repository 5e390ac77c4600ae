"""Checks of the inputs of the flow and of gradient descent, before anything is traced.

Values that are traced (under `jit`/`vmap`) cannot be inspected and pass unchecked.
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import ArrayLike

from ._dataset import Dataset
from ._loss import AbstractLoss
from ._model import TwoLayerReLU


def _concrete(x) -> bool:
    """Whether `x` holds no traced value (a list of save times may hold one)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check_problem(model: TwoLayerReLU, data: Dataset, loss: AbstractLoss) -> None:
    """Raise `ValueError` unless `model` is a single `TwoLayerReLU` with finite weights
    that fits the single `Dataset` `data` and the `loss`."""
    if not isinstance(model, TwoLayerReLU):
        raise ValueError(f"model must be a TwoLayerReLU, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    if model.W.ndim != 2 or data.x.ndim != 2:
        raise ValueError("this takes a single model and data set; use jax.vmap for batches")
    if model.in_dim != data.dim:
        raise ValueError(
            f"model input dimension {model.in_dim} does not match data dimension {data.dim}"
        )
    loss.check(model.out_dim, data.num_classes)
    dtypes = {"W": model.W.dtype, "V": model.V.dtype, "the data x": data.x.dtype}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{k} {np.dtype(v).name}" for k, v in dtypes.items())
        raise ValueError(
            f"the model and the data must share one floating dtype, got {got}: make "
            "them match (Dataset.astype, or TwoLayerReLU.init(..., dtype=...))"
        )
    if (
        _concrete(model.W)
        and _concrete(model.V)
        and not (
            np.all(np.isfinite(np.asarray(model.W)))
            and np.all(np.isfinite(np.asarray(model.V)))
        )
    ):
        raise ValueError("the initial model has non-finite weights")


def check_flow_args(
    t1: float | ArrayLike,
    saveat: ArrayLike,
    rtol: float | ArrayLike,
    atol: float | ArrayLike | None,
    max_steps: int,
) -> None:
    """Raise `ValueError` unless the horizon, save times, tolerances and step budget of
    `gradient_flow` are valid."""
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    if _concrete(t1):
        t1v = float(np.asarray(t1))
        if not (np.isfinite(t1v) and t1v > 0):
            raise ValueError(f"t1 must be positive and finite, got {t1v}")
    if _concrete(saveat):
        tsv = np.asarray(saveat)
        if tsv.ndim != 1 or tsv.size == 0:
            raise ValueError(
                f"saveat must be a non-empty 1-D array of times, got {tsv.shape}"
            )
        if not np.all(np.isfinite(tsv)) or np.any(np.diff(tsv) < 0) or tsv[0] < 0:
            raise ValueError("saveat times must be finite, non-negative and increasing")
        if _concrete(t1) and tsv[-1] > float(np.asarray(t1)) * (1 + 1e-12):
            raise ValueError(f"saveat times must lie in [0, t1]; last is {tsv[-1]} > t1")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and _concrete(tol):
            v = np.asarray(tol)
            real = np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)
            if not real or v.ndim != 0 or not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {tol}")
