"""The bridge to the theory: the exact flow of a fresh head on frozen deep features.

Freeze a trained extractor and its normalization; their output on a set of images is
a plain `Dataset` of vectors `x_i = norm(g(image_i))`, the data of the two-layer
theory (Min, Zhu and Vidal, NeurIPS 2025). A fresh `TwoLayerReLU` trained on it by the
exact gradient flow from a small initialization is the setting of Theorem 1, whose
hypotheses (`theory.check_assumption1`) and predicted limit (`theory.predicted_limit`,
`theory.limit_distance`) can then be checked on features a deep network learned.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._dataset import Dataset
from .._flow import gradient_flow
from .._model import TwoLayerReLU
from .._trajectory import Trajectory
from ._classifier import DeepClassifier
from ._data import Images
from ._train import head_inputs


def frozen_features(
    model: DeepClassifier,
    state: eqx.nn.State,
    images: Images,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    dtype=jnp.float64,
) -> Dataset:
    """The head's inputs `norm(g(x))` of `images` as a `Dataset` (network at inference).

    **Arguments:**

    - `model`, `state`: the trained network and its BatchNorm state.
    - `images`: `Images`.
    - `classes`: keep these classes (default all), relabelled `0..len(classes)-1` in the
      given order.
    - `per_class`: keep the first so many images of each kept class (default all).
    - `dtype`: dtype of the returned features (default float64, for the flow).
    """
    y = np.asarray(images.y)
    classes = tuple(range(images.num_classes)) if classes is None else tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be at least two distinct labels, got {classes}")
    keep = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        if idx.size == 0:
            raise ValueError(f"class {c} has no images")
        keep.append(idx if per_class is None else idx[:per_class])
    idx = np.sort(np.concatenate(keep))
    x = head_inputs(model, state, images.take(idx))["after"]
    lookup = np.full(images.num_classes, -1, dtype=np.int32)
    lookup[list(classes)] = np.arange(len(classes))
    return Dataset(jnp.asarray(x, dtype=dtype), jnp.asarray(lookup[y[idx]]), len(classes))


def restricted_head(model: DeepClassifier, classes: Sequence[int]) -> TwoLayerReLU:
    """The trained head with the output rows of `classes` only (in that order): the
    SGD-trained counterpart of a head trained on `frozen_features(..., classes)`."""
    V = model.head.V[jnp.asarray(list(classes))]
    return TwoLayerReLU(model.head.W, V, model.head.leak)


def flow_head(
    data: Dataset,
    *,
    key,
    width: int = 50,
    scale: float = 1e-3,
    t1: float = 100.0,
    rtol: float = 1e-5,
    solver: str | None = "sliding",
    num_saves: int = 50,
    record=None,
) -> Trajectory:
    """A fresh `TwoLayerReLU` trained on `data` by the exact gradient flow.

    Gaussian initialization of standard deviation `scale` (`TwoLayerReLU.init`), mean
    cross-entropy, `gradient_flow(..., solver=solver, rtol=rtol)` to time `t1`, saved
    at `num_saves` log-spaced times.
    """
    model = TwoLayerReLU.init(
        key, data.dim, width, data.num_classes, scale, dtype=data.x.dtype
    )
    ts = np.concatenate([[0.0], np.geomspace(1e-3 * t1, t1, num_saves)])
    return gradient_flow(
        model,
        data,
        t1=t1,
        saveat=ts,
        reduction="mean",
        rtol=rtol,
        solver=solver,
        record=record,
        save_params=False,
    )
