"""SGD training of a `DeepClassifier` with Optax, and the per-epoch NC measurement.

The paper's recipe (Min, Zhu and Vidal, NeurIPS 2025, App. B): mean cross-entropy, SGD
with momentum 0.95 (PyTorch's heavy ball, `optax.sgd(momentum=...)`), batch 128,
learning rate 0.1 (ResNet18) or 0.02 (ResNet50), multiplied by 0.1 every 20 epochs,
50 epochs, no weight decay.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .. import metrics
from ._classifier import DeepClassifier
from ._data import Images


MEASURES = (
    "loss",
    "train_accuracy",
    "test_accuracy",
    "nc1",
    "nc1_papyan",
    "nc2",
    "nc3",
    "nc4",
    "norm_before_mean",
    "norm_before_cv",
    "norm_after_mean",
    "norm_after_cv",
)


@functools.cache
def optimizer(momentum: float = 0.95) -> optax.GradientTransformation:
    """`optax.sgd` with `momentum` and its learning rate as a hyperparameter in the
    optimizer state (`optax.inject_hyperparams`), set every epoch by `learning_rate`.

    Cached per momentum: the same transformation, hence the same compiled step, serves
    every run (a new one per run would recompile the training step).
    """
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=momentum)


def learning_rate_at(
    epoch: int, learning_rate: float, decay_every: int = 20, decay: float = 0.1
) -> float:
    """The step size of (0-based) `epoch`: `learning_rate * decay^(epoch // decay_every)`
    (PyTorch's `StepLR`)."""
    return learning_rate * decay ** (epoch // decay_every)


@eqx.filter_jit
def _sgd_step(model, state, opt_state, x, y, opt):
    def loss_fn(m, s):
        logits, s = m(x, s)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), s

    (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, state)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = opt.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), state, opt_state, loss


@eqx.filter_jit
def _forward(model, state, x):
    model = eqx.nn.inference_mode(model)
    z, _ = model.embed(x, state)
    n = model.normalize(z)
    feats = model.head.features(n)
    return z, n, feats, feats @ model.head.V.T


def head_inputs(
    model: DeepClassifier, state: eqx.nn.State, data: Images, chunk: int = 1000
) -> dict[str, np.ndarray]:
    """The network at inference (BatchNorm on its running averages) on `data`.

    **Returns:** a dict of NumPy arrays: `"before"` the extractor's features `g(x)`
    `(n, F)`, `"after"` the normalized features, the head's input `(n, F)`,
    `"features"` the head's hidden features `relu(W^T norm(g(x)))` `(n, h)` and
    `"logits"` `(n, K)`.
    """
    parts = [
        _forward(model, state, data.x[i : i + chunk])
        for i in range(0, data.num_samples, chunk)
    ]
    keys = ("before", "after", "features", "logits")
    return {
        k: np.concatenate([np.asarray(p[j]) for p in parts]) for j, k in enumerate(keys)
    }


def _norm_stats(z: np.ndarray) -> tuple[float, float]:
    r = np.linalg.norm(z.astype(np.float64), axis=1)
    mean = float(r.mean())
    return mean, float(r.std() / mean) if mean > 0 else float("nan")


@eqx.filter_jit
def _nc_metrics(feats, y, V, k):
    return {
        "nc1": metrics.nc1(feats, y, k),
        "nc1_papyan": metrics.nc1_papyan(feats, y, k),
        "nc2": metrics.nc2(feats, y, k),
        "nc3": metrics.nc3(feats, y, k, V),
        "nc4": metrics.nc4(feats, y, k, V),
    }


def measure(
    model: DeepClassifier, state: eqx.nn.State, train: Images, test: Images
) -> dict[str, float]:
    """NC metrics of the head's hidden features on the training set, accuracies, and
    the norm statistics of the head's input before and after the normalization.

    NC1 (`metrics.nc1`, the paper's trace ratio, and `metrics.nc1_papyan`), NC2
    (`metrics.nc2`), NC3 (`metrics.nc3` with the head's `V`), NC4 (`metrics.nc4`), all
    on `relu(W^T norm(g(x)))` over the training set. `norm_before_mean` /
    `norm_before_cv`: mean and coefficient of variation (std / mean) of `||g(x_i)||`;
    `norm_after_*` the same for `||norm(g(x_i))||`.
    """
    out = head_inputs(model, state, train)
    before = _norm_stats(out["before"])
    after = _norm_stats(out["after"])
    test_logits = head_inputs(model, state, test)["logits"]
    nc = _nc_metrics(jnp.asarray(out["features"]), train.y, model.head.V, train.num_classes)
    return {
        "train_accuracy": float(np.mean(out["logits"].argmax(1) == np.asarray(train.y))),
        "test_accuracy": float(np.mean(test_logits.argmax(1) == np.asarray(test.y))),
        **{name: float(value) for name, value in nc.items()},
        "norm_before_mean": before[0],
        "norm_before_cv": before[1],
        "norm_after_mean": after[0],
        "norm_after_cv": after[1],
    }


def _load_leaf(f, x):
    value = eqx.default_deserialise_filter_spec(f, x)
    if isinstance(x, jax.Array) and x.weak_type and x.shape == ():
        # A saved array loses its weak type; BatchNorm's step counter needs it (with a
        # strongly typed counter, `momentum**counter` promotes to float64 under x64).
        return jnp.asarray(value.item())
    return value


def train(
    model: DeepClassifier,
    state: eqx.nn.State,
    train_set: Images,
    test_set: Images,
    *,
    key,
    epochs: int = 50,
    batch_size: int = 128,
    learning_rate: float = 0.1,
    momentum: float = 0.95,
    decay_every: int = 20,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[DeepClassifier, eqx.nn.State, dict[str, np.ndarray]]:
    """Train by SGD for `epochs` epochs and `measure` after every epoch.

    Every epoch visits the training set in a fresh random order (`key` folded with the
    epoch) in batches of `batch_size`, the last one smaller (PyTorch's `DataLoader`).

    **Arguments:**

    - `model`, `state`: the network and its BatchNorm state (`DeepClassifier.init`).
    - `train_set`, `test_set`: `Images`.
    - `key`: PRNG key of the shuffling.
    - `epochs`, `batch_size`, `learning_rate`, `momentum`, `decay_every`: the recipe
      (see `optimizer`).
    - `checkpoint`: a file path: after every epoch the model, state, optimizer state
      and history are written there (`eqx.tree_serialise_leaves`, with the settings in
      a `.json` next to it), and an existing checkpoint of the same settings is resumed.
    - `progress`: a tqdm bar over the epochs.
    - `log`: called with one line per epoch.

    **Returns:** `(model, state, history)`, `history[name]` an array over the epochs for
    every name in `MEASURES` (`loss` is the mean training loss of the epoch's batches).

    **Raises:** `ValueError` for bad settings, or a checkpoint written with others.
    """
    n = train_set.num_samples
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training images")
    if int(decay_every) != decay_every or decay_every < 1:
        raise ValueError(f"decay_every must be a positive integer, got {decay_every!r}")
    per_epoch = -(-n // batch_size)
    opt = optimizer(float(momentum))
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    history = {m: np.full(epochs, np.nan) for m in MEASURES}
    start = 0
    settings = dict(
        n=n,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        momentum=momentum,
        decay_every=decay_every,
    )
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        side = checkpoint.with_suffix(".json")
        if checkpoint.is_file() and side.is_file():
            saved = json.loads(side.read_text())
            if saved != settings:
                raise ValueError(
                    f"checkpoint {checkpoint} was written with other settings ({saved}); "
                    "remove it or write elsewhere"
                )
            like = (model, state, opt_state, jnp.zeros((), jnp.int32), history)
            model, state, opt_state, done, history = eqx.tree_deserialise_leaves(
                checkpoint, like, filter_spec=_load_leaf
            )
            history = {k: np.asarray(v) for k, v in history.items()}
            start = int(done)
            if log is not None:
                log(f"resumed from {checkpoint.name} after epoch {start}")
    bar = tqdm(range(start, epochs), disable=not progress, leave=False, desc="epochs")
    for epoch in bar:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        losses = []
        lr = learning_rate_at(epoch, learning_rate, decay_every)
        hyper = opt_state.hyperparams
        hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            model, state, opt_state, loss = _sgd_step(
                model, state, opt_state, train_set.x[idx], train_set.y[idx], opt
            )
            losses.append(loss)
        history["loss"][epoch] = float(np.mean(jax.device_get(losses)))
        for name, value in measure(model, state, train_set, test_set).items():
            history[name][epoch] = value
        if checkpoint is not None:
            tmp = checkpoint.with_suffix(".tmp")
            eqx.tree_serialise_leaves(
                tmp, (model, state, opt_state, jnp.asarray(epoch + 1, jnp.int32), history)
            )
            os.replace(tmp, checkpoint)
            checkpoint.with_suffix(".json").write_text(json.dumps(settings))
        if log is not None:
            log(
                f"epoch {epoch + 1}: loss {history['loss'][epoch]:.4f}, test acc "
                f"{history['test_accuracy'][epoch]:.4f}, NC1 {history['nc1'][epoch]:.4g}"
            )
    return model, state, history
