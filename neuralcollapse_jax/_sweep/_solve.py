"""One compiled solve per block: a chunk of runs through `gradient_flow`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


# Compiled chunk functions, one per (block settings, chunk layout), shared by the
# threads of a process (and cached across the tasks a Ray worker runs).
_CACHE: dict[tuple, Callable] = {}
_COMPILED: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_COMPILE_LOCKS: dict[tuple, threading.Lock] = {}


def solver_object(name):
    """A solver name of the config as the object `gradient_flow` takes."""
    if not isinstance(name, str):
        return name
    if name.startswith("sliding"):  # the plan has fixed the tableau from the rtol
        return name
    import diffrax

    from .._flow import REGULAR_SOLVERS

    if name in REGULAR_SOLVERS:  # as `gradient_flow(solver=name)` builds it
        return REGULAR_SOLVERS[name]()
    return {"heun": diffrax.Heun, "euler": diffrax.Euler}[name]()


def recorders(record: tuple[str, ...], record_fns: dict | None) -> dict[str, Callable]:
    if record_fns is not None:
        return dict(record_fns)
    from .. import metrics

    return metrics.recorder(*record)


def initial_models(spec: dict, params: dict, x, y, shared_data: bool, dtype):
    """`theta(0)` of every run of a chunk, and its absolute tolerance.

    Built op by op outside the compiled solve, exactly as a single run builds them:
    `TwoLayerReLU.init(jax.random.key(seed), D, width, K_out, scale, init)`, and
    `default_atol(model, rtol)` when the config gives no `atol` (batched where
    `batched_atol`; one run at a time otherwise, as a batched reduction may round
    differently). So a sweep's runs equal single `gradient_flow` calls bit for bit.
    """
    import jax
    import jax.numpy as jnp

    from .._dataset import Dataset
    from .._flow import default_atol
    from .._model import TwoLayerReLU
    from ._plan import out_dim

    K = spec["K"]
    semi = spec["init"] == "semi_local"

    def init(seed, scale, xi, yi):
        data = Dataset(xi, yi, K) if semi else None
        return TwoLayerReLU.init(
            jax.random.key(seed),
            spec["D"],
            spec["width"],
            out_dim(spec["loss"], K),
            scale,
            init=spec["init"],
            data=data,
            leak=spec["leak"],
            dtype=dtype,
        )

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
    from .._dataset import Dataset
    from .._flow import gradient_flow
    from .._loss import loss as loss_value
    from .._model import TwoLayerReLU

    data = Dataset(x, y, spec["K"])
    model = TwoLayerReLU(p["W"], p["V"], spec["leak"])
    traj = gradient_flow(
        model,
        data,
        t1=p["t1"],
        saveat=p["ts"],
        loss=spec["loss"],
        reduction=spec["reduction"],
        rtol=p["rtol"],
        atol=p["atol"],
        max_steps=spec["max_steps"],
        solver=solver_object(spec["solver"]),
        record=record,
        save_params=False,
    )
    final = {name: fn(traj.final, data) for name, fn in record.items()}
    final["loss"] = loss_value(traj.final, data, spec["loss"], spec["reduction"])
    return {
        "loss": traj.loss,
        "records": traj.records,
        "final": final,
        "status": traj.status,
        "num_steps": traj.stats["num_steps"],
        "num_rejected_steps": traj.stats["num_rejected_steps"],
        "grad_evals": traj.stats["grad_evals"],
    }


def chunk_function(
    spec: dict, record: dict[str, Callable], batch_size: int, shared_data: bool
) -> Callable:
    """`jit(f)(params, x, y)` solving a chunk of runs with `jax.lax.map`.

    `batch_size = 1` maps the solve over the runs one at a time (a `scan` of unbatched
    solves: the fastest on a CPU, where a batched solve costs more per run than an
    unbatched one and every member pays for the slowest); a larger `batch_size` vmaps
    that many runs at once (for accelerators). Memory is that of `batch_size` runs.
    """
    key = (
        tuple(sorted((k, repr(v)) for k, v in spec.items())),
        tuple(sorted((k, id(v)) for k, v in record.items())),
        batch_size,
        shared_data,
    )
    with _LOCK:
        fn = _CACHE.get(key)
        if fn is not None:
            return fn
    import jax

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

    fn = jax.jit(chunk)
    with _LOCK:
        _CACHE.setdefault(key, fn)
        return _CACHE[key]


def compiled(fn: Callable, args: tuple) -> Callable:
    """The executable of `fn` for these argument shapes (and devices), compiled once.

    Ahead-of-time compilation under a lock: worker threads that reach the same block
    wait for one compilation instead of each compiling it.
    """
    import jax

    sig = (
        id(fn),
        str(jax.tree.map(lambda a: (a.shape, a.dtype, getattr(a, "sharding", None)), args)),
    )
    with _LOCK:
        exe = _COMPILED.get(sig)
        if exe is not None:
            return exe
        lock = _COMPILE_LOCKS.setdefault(sig, threading.Lock())
    with lock:
        with _LOCK:
            exe = _COMPILED.get(sig)
        if exe is None:
            exe = fn.lower(*args).compile()
            with _LOCK:
                _COMPILED[sig] = exe
    return exe


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
    """Solve the runs of one chunk and return their outputs as host arrays.

    The chunk is padded to `chunk_size` runs (repeating its last run) so that every
    chunk of a block has the same shapes and compiles once.
    """
    import jax

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
    args = (params, x, y)
    if device is not None:
        args = jax.device_put(args, device)
    else:
        args = jax.device_put(args)
    out = jax.device_get(compiled(fn, args)(*args))
    return _flatten(out, count)


def _flatten(out: dict, count: int) -> dict[str, np.ndarray]:
    """`{"loss": ..., "rec.<name>[.<key>]": ..., "final.<name>...": ..., ...}`."""
    import jax

    flat: dict[str, np.ndarray] = {}
    for section, prefix in (("records", "rec."), ("final", "final.")):
        leaves = jax.tree_util.tree_flatten_with_path(out[section])[0]
        for path, leaf in leaves:
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            flat[prefix + name] = np.asarray(leaf)[:count]
    for key in ("loss", "status", "num_steps", "num_rejected_steps", "grad_evals"):
        flat[key] = np.asarray(out[key])[:count]
    return flat


def block_spec(block, dtype: str) -> dict[str, Any]:
    """The static settings that one compiled solve depends on."""
    spec = dict(block.static)
    spec.update(n=block.n, D=block.D, K=block.K, dtype=dtype)
    return spec


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
    """`run_chunk` in another process (a local worker or a Ray task)."""
    import jax

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
