"""Solving the runs of a chunk: one `gradient_flow` call per run, or one batched program.

With one run per solve (`batch_size = 1`, the choice on a CPU) every run is a plain
`gradient_flow` call: it reuses the compiled solve of any earlier call with the same
shapes and settings, and a grid of any size compiles nothing more. With more runs per
solve (accelerators) a chunk is one compiled program that vmaps `gradient_flow` over
`batch_size` runs at a time.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from .._dataset import Dataset
from .._field import vector_field
from .._flow import default_atol, gradient_flow, status_reported
from .._loss import loss as loss_value
from .._model import TwoLayerReLU
from .._solvers import resolve_solver
from ._config import _hashable
from ._plan import Plan, out_dim, traced_arrays


def solver_object(spec: dict) -> diffrax.AbstractSolver:
    """The Diffrax solver of a block (its name resolved as `gradient_flow` resolves it;
    the plan has already fixed `auto` per data set and `sliding`'s tableau per rtol)."""
    return resolve_solver(spec["solver"])


def recorders(record: tuple[str, ...], record_fns: dict | None) -> dict[str, Callable]:
    if record_fns is not None:
        return dict(record_fns)
    return metrics.recorder(*record)


def chunk_inputs(plan: Plan, block, runs: list[int], dtype) -> tuple:
    """The per-run arrays of a chunk (`traced_arrays`) and its data: one `(x, y)` when
    the block shares its data set, stacked per run otherwise."""
    params = traced_arrays(plan, runs, dtype)
    if block.shared_data:
        ds = plan.data[plan.run_data[runs[0]]]
        x, y = np.asarray(ds.x), np.asarray(ds.y)
    else:
        x = np.stack([np.asarray(plan.data[plan.run_data[i]].x) for i in runs])
        y = np.stack([np.asarray(plan.data[plan.run_data[i]].y) for i in runs])
    return params, x, y


def block_spec(block, dtype: str) -> dict[str, Any]:
    """The static settings that one compiled solve depends on."""
    spec = dict(block.static)
    spec.update(n=block.n, D=block.D, K=block.K, dtype=dtype)
    return spec


def initial_model(spec: dict, seed, scale, data: Dataset | None, dtype) -> TwoLayerReLU:
    """`theta(0)` of a run: `TwoLayerReLU.init(jax.random.key(seed), D, width, K_out,
    scale, init)`, as a single run builds it."""
    return TwoLayerReLU.init(
        jax.random.key(seed),
        spec["D"],
        spec["width"],
        out_dim(spec["loss"], spec["K"]),
        scale,
        init=spec["init"],
        data=data if spec["init"] == "semi_local" else None,
        leak=spec["leak"],
        dtype=dtype,
    )


def final_values(
    final: TwoLayerReLU, data: Dataset, spec: dict, record: dict[str, Callable]
) -> dict:
    """The recorded diagnostics and the loss of a run's final model."""
    values = {name: fn(final, data) for name, fn in record.items()}
    values["loss"] = loss_value(final, data, spec["loss"], spec["reduction"])
    return values


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


@eqx.filter_jit
def _final_values_compiled(final, data, loss, reduction, record):
    spec = {"loss": loss, "reduction": reduction}
    values = final_values(final, data, spec, dict(record))
    # `gradient_flow` checks the final state with this expression, and in the batched
    # program the final loss is compiled next to it (XLA shares the forward pass).
    # Compiling it here too makes the final loss round the same in both programs.
    finite = (
        _all_finite(final)
        & _all_finite(vector_field(loss, reduction)(None, final, data))
        & jnp.isfinite(values["loss"])
    )
    return values, finite


def _outputs(traj, final: dict) -> dict:
    return {
        "loss": traj.loss,
        "records": traj.records,
        "final": final,
        "status": traj.status,
        "num_steps": traj.stats["num_steps"],
        "num_rejected_steps": traj.stats["num_rejected_steps"],
        "grad_evals": traj.stats["grad_evals"],
    }


def _flow(model, data, p: dict, atol, spec: dict, record: dict, solver):
    """The `gradient_flow` call of one run (the sequential and the batched paths).
    Failed runs are recorded by their status, not warned about."""
    with status_reported():
        return gradient_flow(
            model,
            data,
            t1=p["t1"],
            saveat=p["ts"],
            loss=spec["loss"],
            reduction=spec["reduction"],
            rtol=p["rtol"],
            atol=atol,
            max_steps=spec["max_steps"],
            solver=solver,
            record=record,
            save_params=False,
        )


def solve_run(
    spec: dict, record: dict[str, Callable], p: dict, x, y, solver
) -> dict[str, Any]:
    """One run of a sweep as a user would write it: `TwoLayerReLU.init`, then
    `gradient_flow` (the compiled solve is shared with every call of equal shapes and
    settings), then the final diagnostics."""
    dtype = np.dtype(spec["dtype"])
    data = Dataset(x, y, spec["K"])
    # A Python seed and scale, as a user passes them: the same values, and the same
    # compiled initialization.
    model = initial_model(spec, int(p["seed"]), float(p["scale"]), data, dtype)
    atol = p["atol"] if p["atol"] > 0 else None
    traj = _flow(model, data, p, atol, spec, record, solver)
    final, _ = _final_values_compiled(
        traj.final, data, spec["loss"], spec["reduction"], tuple(sorted(record.items()))
    )
    return _outputs(traj, final)


def _run_each(spec, record, params, x, y, shared_data: bool, device) -> dict:
    """The runs of a chunk one `gradient_flow` call at a time, stacked on the host."""
    solver = solver_object(spec)
    outs = []
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        x, y = jnp.asarray(x), jnp.asarray(y)
        for k in range(len(params["scale"])):
            p = {name: a[k] for name, a in params.items()}
            xk, yk = (x, y) if shared_data else (x[k], y[k])
            outs.append(jax.device_get(solve_run(spec, record, p, xk, yk, solver)))
    return jax.tree.map(lambda *a: np.stack(a), *outs)


# --- The batched program (accelerators) ---------------------------------------------


def initial_models(spec: dict, params: dict, x, y, shared_data: bool, dtype):
    """`theta(0)` of every run of a chunk (`initial_model`, vmapped), and its absolute
    tolerance: `default_atol(model, rtol)` when the config gives none, batched where
    `batched_atol`, one run at a time otherwise (a batched reduction may round
    differently)."""
    semi = spec["init"] == "semi_local"  # the only init that reads the data

    def init(seed, scale, xi, yi):
        data = Dataset(xi, yi, spec["K"]) if semi else None
        return initial_model(spec, seed, scale, data, dtype)

    seeds = jnp.asarray(params["seed"])
    scales = jnp.asarray(params["scale"], dtype=dtype)
    if semi and not shared_data:
        models = jax.vmap(init)(seeds, scales, jnp.asarray(x), jnp.asarray(y))
    else:
        models = jax.vmap(init, in_axes=(0, 0, None, None))(
            seeds, scales, jnp.asarray(x), jnp.asarray(y)
        )
    atol = np.asarray(params["atol"])
    if np.any(atol <= 0):
        rtol = params["rtol"]
        if spec.get("batched_atol", False):
            default = np.asarray(jax.vmap(default_atol)(models, jnp.asarray(rtol, dtype)))
        else:
            default = np.array(
                [
                    default_atol(
                        TwoLayerReLU(models.W[k], models.V[k], spec["leak"]),
                        jnp.asarray(rtol[k], dtype),
                    )
                    for k in range(len(atol))
                ]
            )
        atol = np.where(atol > 0, atol, default).astype(atol.dtype)
    return models.W, models.V, atol


def solve_one(p: dict, x, y, *, spec: dict, record: dict[str, Callable]) -> dict:
    """One run, traceable: integrate from `theta(0) = (W, V)` and summarise."""
    data = Dataset(x, y, spec["K"])
    model = TwoLayerReLU(p["W"], p["V"], spec["leak"])
    traj = _flow(model, data, p, p["atol"], spec, record, solver_object(spec))
    return _outputs(traj, final_values(traj.final, data, spec, record))


@functools.lru_cache(maxsize=32)
def _chunk_program(
    spec_items: tuple, record_items: tuple, batch_size: int, shared_data: bool
) -> Callable:
    spec, record = dict(spec_items), dict(record_items)

    def one(p, x, y):
        return solve_one(p, x, y, spec=spec, record=record)

    def chunk(params, x, y):
        if shared_data:
            body = lambda p: one(p, x, y)  # noqa: E731
            xs = params
        else:
            body = lambda a: one(a[0], a[1], a[2])  # noqa: E731
            xs = (params, x, y)
        if batch_size == 1:
            return jax.lax.map(body, xs)
        return jax.lax.map(body, xs, batch_size=batch_size)

    return jax.jit(chunk)


def chunk_function(
    spec: dict, record: dict[str, Callable], batch_size: int, shared_data: bool
) -> Callable:
    """`jit(f)(params, x, y)` solving a chunk of runs with `jax.lax.map`, `batch_size`
    runs vmapped at a time. Memory is that of `batch_size` runs. One per block
    settings (a bounded cache); `jax.jit` caches its compilations per shape and
    device."""
    key = (
        tuple(sorted((k, _hashable(v)) for k, v in spec.items())),
        tuple(sorted(record.items())),
        batch_size,
        shared_data,
    )
    try:
        hash(key)
    except TypeError:  # a setting that is not hashable (a solver holding arrays)
        return _chunk_program.__wrapped__(*key)
    return _chunk_program(*key)


def solve_inputs(spec: dict, params: dict, x, y, shared_data: bool) -> dict:
    """The traced inputs of a chunk's compiled solve: `theta(0)` of every run (see
    `initial_models`), its horizon, save times and tolerances."""
    W, V, atol = initial_models(spec, params, x, y, shared_data, np.dtype(spec["dtype"]))
    return {
        "W": W,
        "V": V,
        "t1": params["t1"],
        "ts": params["ts"],
        "rtol": params["rtol"],
        "atol": atol,
    }


def _run_batched(spec, record, params, x, y, chunk_size, batch_size, shared_data, device):
    """The chunk as one compiled program, padded to `chunk_size` runs (repeating its
    last run) so that every chunk of a block has the same shapes."""
    count = len(params["scale"])
    pad = chunk_size - count
    if pad < 0:
        raise ValueError(f"chunk of {count} runs exceeds chunk_size {chunk_size}")

    def padded(a):
        if pad == 0:
            return a
        return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])

    params = {k: padded(v) for k, v in params.items()}
    if not jax.config.jax_enable_x64:
        params["seed"] = params["seed"].astype(np.int32)
    if not shared_data:
        x, y = padded(x), padded(y)
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        spec = dict(spec, batched_atol=batch_size > 1)
        params = solve_inputs(spec, params, x, y, shared_data)
    fn = chunk_function(spec, record, min(batch_size, chunk_size), shared_data)
    args = jax.device_put((params, x, y), device)
    out = jax.device_get(fn(*args))
    return jax.tree.map(lambda a: a[:count], out)


def run_chunk(
    spec: dict,
    record: dict[str, Callable],
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    chunk_size: int,
    batch_size: int,
    shared_data: bool,
    device=None,
) -> dict[str, np.ndarray]:
    """Solve the runs of one chunk and return their outputs as host arrays:
    `{"loss": ..., "rec.<name>[.<key>]": ..., "final.<name>...": ..., "status": ...}`.

    One `gradient_flow` call per run when `batch_size = 1`, one compiled program of
    `chunk_size` runs otherwise.
    """
    if batch_size == 1:
        out = _run_each(spec, record, params, x, y, shared_data, device)
    else:
        out = _run_batched(
            spec, record, params, x, y, chunk_size, batch_size, shared_data, device
        )
    return _flatten(out)


def _flatten(out: dict) -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for section, prefix in (("records", "rec."), ("final", "final.")):
        leaves = jax.tree_util.tree_flatten_with_path(out[section])[0]
        for path, leaf in leaves:
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            flat[prefix + name] = np.asarray(leaf)
    for key in ("loss", "status", "num_steps", "num_rejected_steps", "grad_evals"):
        flat[key] = np.asarray(out[key])
    return flat


def run_chunk_task(
    spec: dict,
    record_names: tuple,
    record_fns,
    params: dict,
    x,
    y,
    chunk_size: int,
    batch_size: int,
    shared_data: bool,
    x64: bool,
):
    """`run_chunk` in another process (a Ray task)."""
    if x64:
        jax.config.update("jax_enable_x64", True)
    record = recorders(record_names, record_fns)
    return run_chunk(
        spec,
        record,
        params,
        x,
        y,
        chunk_size=chunk_size,
        batch_size=batch_size,
        shared_data=shared_data,
    )
