"""Gradient descent and SGD through Optax: the discrete baseline of the flow."""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import ArrayLike

from ._dataset import Dataset
from ._flow import Recorder, all_finite, save_function
from ._loss import AbstractLoss, as_loss
from ._loss import loss as loss_value
from ._model import TwoLayerReLU
from ._row_space import reduce_to_row_space
from ._times import log_steps
from ._trajectory import Status, Trajectory
from ._validation import check_problem


def gradient_descent(
    model: TwoLayerReLU,
    data: Dataset,
    *,
    learning_rate: float | ArrayLike,
    steps: int,
    batch_size: int | None = None,
    key=None,
    save_steps: ArrayLike | None = None,
    loss: str | AbstractLoss = "cross_entropy",
    reduction: str | None = None,
    optimizer: optax.GradientTransformation | None = None,
    record: Mapping[str, Recorder] | None = None,
    save_params: bool = True,
    row_space: bool = False,
) -> Trajectory:
    r"""Gradient descent `theta <- theta - lr grad L(theta)` (or SGD), through Optax.

    Gradient descent is the explicit Euler method for the flow, so as `learning_rate`
    shrinks it converges to the flow at first order with time `t = learning_rate * step`.
    With `batch_size`, each epoch visits the samples in a fresh random order in batches of
    `batch_size` (the last batch of an epoch may be smaller; `ceil(n / batch_size)` steps
    per epoch), as PyTorch's `DataLoader(shuffle=True)` does.

    **Arguments:**

    - `model`, `data`, `loss`, `reduction`, `record`, `save_params`: as in
      `gradient_flow`. With `"mean"` and batches, the mean is over the batch.
    - `learning_rate`: the step size (may be a traced array).
    - `steps`: number of updates.
    - `batch_size`: minibatch size (default: full batch).
    - `key`: PRNG key for the batch order (default `jax.random.key(0)`).
    - `save_steps`: increasing integer steps in `[0, steps]` at which to save (default
      `log_steps(steps)`).
    - `optimizer`: an Optax optimizer (default `optax.sgd(learning_rate)`); e.g.
      `optax.sgd(lr, momentum=0.9)`.
    - `row_space`: descend in the row space of `data.x`, as `gradient_flow(...,
      row_space=True)` integrates: every gradient `X^T G` lies in the row space, so the
      part of `W` outside it never moves and the iterates are those of the full-space
      run up to rounding, at the cost of `rank(X)` instead of `D` columns. The
      trajectory is returned for the full model. Only with the default `optax.sgd`
      (an `optimizer` such as Adam scales each coordinate and is not invariant under
      the change of basis: `ValueError`); needs concrete data.

    **Returns:**

    A `Trajectory` with `ts = learning_rate * save_steps`; `stats["grad_evals"]` counts
    (mini)batch gradients.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    steps = int(steps)
    if save_steps is None:
        save_steps = log_steps(steps)
    if not isinstance(save_steps, jax.core.Tracer):
        ss = np.asarray(save_steps)
        if ss.ndim != 1 or ss.size == 0 or not np.issubdtype(ss.dtype, np.integer):
            raise ValueError("save_steps must be a non-empty 1-D array of integers")
        if np.any(np.diff(ss) < 0) or ss[0] < 0 or ss[-1] > steps:
            raise ValueError(f"save_steps must be increasing and lie in [0, {steps}]")
    if not isinstance(learning_rate, jax.core.Tracer):
        lr = np.asarray(learning_rate)
        if lr.ndim != 0 or not np.isfinite(lr) or lr <= 0:
            raise ValueError(
                f"learning_rate must be a positive number, got {learning_rate}"
            )
    if batch_size is not None:
        if int(batch_size) != batch_size or not 1 <= batch_size:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if batch_size > data.num_samples:
            raise ValueError(
                f"batch_size {batch_size} exceeds the number of samples {data.num_samples}"
            )
        batch_size = int(batch_size)
    loss = as_loss(loss, reduction)
    check_problem(model, data, loss)
    if row_space and optimizer is not None:
        raise ValueError(
            "row_space=True needs the default optimizer (plain SGD): a custom optimizer "
            "may scale each coordinate, which the change of basis does not preserve"
        )
    if key is None:
        key = jax.random.key(0)
    dtype = model.W.dtype
    lift = None
    if row_space:
        model, data, lift = reduce_to_row_space(model, data)
    return _descend(
        model,
        data,
        lift,
        jnp.asarray(learning_rate, dtype),
        jnp.asarray(save_steps, jnp.int32),
        key,
        steps=steps,
        batch_size=batch_size,
        loss=loss,
        optimizer=optimizer,
        record=tuple(sorted((record or {}).items())),
        save_params=save_params,
    )


def _batch(data: Dataset, key, step, batch_size: int) -> tuple[Dataset, jax.Array]:
    """The minibatch of `step`: a fresh permutation per epoch, padded last batch."""
    n = data.num_samples
    per_epoch = -(-n // batch_size)
    epoch, b = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    pos = b * batch_size + jnp.arange(batch_size)
    valid = pos < n
    idx = perm[jnp.minimum(pos, n - 1)]
    return Dataset(data.x[idx], data.y[idx], data.num_classes), valid.astype(data.x.dtype)


@eqx.filter_jit
def _descend(
    model,
    data,
    lift,
    learning_rate,
    save_steps,
    key,
    *,
    steps,
    batch_size,
    loss,
    optimizer,
    record,
    save_params,
) -> Trajectory:
    opt = optax.sgd(learning_rate) if optimizer is None else optimizer
    fn = save_function(loss, save_params, dict(record), lift)

    def one_step(k, carry):
        m, opt_state = carry
        if batch_size is None:
            g = jax.grad(loss_value)(m, data, loss)
        else:
            batch, weights = _batch(data, key, k, batch_size)
            g = jax.grad(loss_value)(m, batch, loss, None, weights)
        updates, opt_state = opt.update(g, opt_state, m)
        return optax.apply_updates(m, updates), opt_state

    # One scan over all `steps` (a static count), writing the records at the save
    # steps as it passes them: unlike loops between traced save steps, a scan can be
    # differentiated in reverse mode as well as in forward mode. The buffer is written
    # linearly (`where`), so reverse mode keeps no copy of it per step.
    first = fn(None, model, data)
    buffer = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (save_steps.shape[0],) + a.shape), first
    )

    def body(carry, k):
        m, opt_state, buf = carry
        m, opt_state = one_step(k, (m, opt_state))
        hit = save_steps == k + 1

        def write(buf):
            out = fn(None, m, data)
            return jax.tree.map(
                lambda b, o: jnp.where(hit.reshape((-1,) + (1,) * o.ndim), o[None], b),
                buf,
                out,
            )

        buf = jax.lax.cond(jnp.any(hit), write, lambda b: b, buf)
        return (m, opt_state, buf), None

    init = (model, opt.init(eqx.filter(model, eqx.is_inexact_array)), buffer)
    (final, opt_state, saved), _ = jax.lax.scan(
        body, init, jnp.arange(steps, dtype=save_steps.dtype)
    )
    if lift is not None:
        final, data = lift.lift(final), lift.data
    models = None
    if save_params:
        models = TwoLayerReLU(*saved["params"], leak=model.leak)
    ok = all_finite(final) & jnp.isfinite(loss_value(final, data, loss))
    n_steps = jnp.asarray(steps)
    stats = {
        "num_steps": n_steps,
        "num_accepted_steps": n_steps,
        "num_rejected_steps": jnp.zeros_like(n_steps),
        "grad_evals": n_steps,
    }
    return Trajectory(
        ts=learning_rate * save_steps.astype(learning_rate.dtype),
        models=models,
        loss=saved["loss"],
        records=saved["records"],
        final=final,
        stats=stats,
        status=jnp.where(ok, Status.SUCCESS, Status.NONFINITE).astype(jnp.int32),
    )
