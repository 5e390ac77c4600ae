"""`sweep`: run a grid of gradient flows, chunk by chunk, and gather an xarray Dataset."""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from ._config import SweepConfig
from ._plan import Plan, chunk_runs, make_plan, traced_arrays
from ._ray import run_ray
from ._solve import block_spec, chunk_inputs, recorders, run_chunk
from ._store import PartStore, assemble, load_sweep, write_dataset


@dataclass(frozen=True)
class Execution:
    """How a sweep runs (resolved from the config's `execution` and the devices)."""

    backend: str
    platform: str
    devices: tuple
    workers: int
    chunk_size: int
    batch_size: int

    def describe(self) -> str:
        return (
            f"{self.backend} backend on {len(self.devices)} {self.platform} "
            f"device(s): {self.workers} worker(s), chunks of {self.chunk_size} runs, "
            f"{self.batch_size} run(s) batched per solve"
        )


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_execution(config: SweepConfig, largest_block: int) -> Execution:
    """The automatic choices, each overridable in `execution`.

    - CPU: one run per solve (`batch_size = 1`: each run is a `gradient_flow` call,
      as a batched adaptive solve costs more per run than an unbatched one there and
      every member waits for the slowest), one worker thread per core, small chunks
      so that the workers stay busy.
    - GPU/TPU: the chunk is one batched solve (`batch_size = chunk_size`, at most
      4096 runs), one worker per device.
    """
    ex = config.execution
    devices = tuple(jax.local_devices())
    platform = devices[0].platform
    if platform == "cpu":
        workers = cpu_count() if ex["workers"] == "auto" else ex["workers"]
        batch = 1 if ex["batch_size"] == "auto" else ex["batch_size"]
        if ex["chunk_size"] == "auto":
            chunk = max(batch, min(16, math.ceil(largest_block / (4 * workers))))
        else:
            chunk = ex["chunk_size"]
    else:
        workers = len(devices) if ex["workers"] == "auto" else ex["workers"]
        if ex["chunk_size"] == "auto":
            per = math.ceil(largest_block / workers)
            chunk = (
                min(4096, per)
                if ex["batch_size"] == "auto"
                else max(ex["batch_size"], min(4096, per))
            )
        else:
            chunk = ex["chunk_size"]
        batch = chunk if ex["batch_size"] == "auto" else ex["batch_size"]
    batch = min(batch, chunk)
    return Execution(ex["backend"], platform, devices, int(workers), int(chunk), int(batch))


def _check_dtype(config: SweepConfig) -> None:
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype: float64 needs JAX's 64-bit mode: call "
            "jax.config.update('jax_enable_x64', True) first (or set dtype: float32)"
        )


def _tasks(plan: Plan, done: set[int], ex: Execution) -> list[tuple[Any, list[int], int]]:
    tasks = []
    for block in plan.blocks:
        size = min(ex.chunk_size, len(block.runs))
        for runs in chunk_runs(block, done, ex.chunk_size):
            tasks.append((block, runs, size))
    return tasks


def _run_local(
    plan: Plan, tasks, ex: Execution, store: PartStore, progress, record
) -> None:
    """A pool of worker threads, each bound to one device, solves the chunks; each
    chunk is written as soon as it is done. The first error cancels the chunks not
    yet started and is raised."""
    dtype = np.dtype(plan.config.dtype)
    bound = threading.local()
    numbers = itertools.count()

    def bind():
        # With one device, no `jax.default_device` context: JAX's compilation caches
        # are keyed on it, and the runs would not share the compiled solve of plain
        # `gradient_flow` calls.
        k = next(numbers)
        bound.device = ex.devices[k % len(ex.devices)] if len(ex.devices) > 1 else None

    def solve(block, runs, size):
        params, x, y = chunk_inputs(plan, block, runs, dtype)
        out = run_chunk(
            block_spec(block, plan.config.dtype),
            record,
            params,
            x,
            y,
            chunk_size=size,
            batch_size=ex.batch_size,
            shared_data=block.shared_data,
            device=bound.device,
        )
        store.write(runs, out)
        return len(runs)

    with ThreadPoolExecutor(max(1, ex.workers), initializer=bind) as pool:
        futures = [pool.submit(solve, *task) for task in tasks]
        try:
            for future in as_completed(futures):
                progress.update(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def sweep(
    config: SweepConfig | Mapping[str, Any] | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    backend: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    keep_parts: bool = False,
):
    r"""Run a sweep of exact gradient flows and return its results.

    Each run is one `gradient_flow` call (recording the config's diagnostics at
    `log_times(t1, num_saves)`, parameters not kept), with the model
    `TwoLayerReLU.init(jax.random.key(seed), D, width, K_out, scale, init)` on the data
    set the config describes. Runs whose shapes and static settings agree form a
    block compiled once; init scale, seed, horizon, tolerances and data of equal shape
    are traced values, so no value recompiles. With one run per solve (the choice on a
    CPU) the runs are plain `gradient_flow` calls on worker threads, sharing the
    compiled solve with any other call of the same settings, whatever the grid's size;
    with several (accelerators) a chunk is one compiled program, batched with `vmap`.

    Results are written chunk by chunk to `<output>.parts/` (each file atomically),
    then assembled into `output`. A sweep interrupted at any point (even by `kill
    -9`) and started again with the same config resumes: finished chunks are not
    recomputed, and the result equals that of an uninterrupted sweep. A failed run
    (`max_steps` reached, non-finite values) is marked in `status` and the sweep goes
    on.

    **Arguments:**

    - `config`: a `SweepConfig`, a mapping, or the path of a YAML/JSON file.
    - `output`: the result file (`.nc`; `.zarr` with `zarr` installed); default: the
      config's `output`. Without either, nothing is written (no resume).
    - `backend`: `"local"` or `"ray"`; overrides `execution.backend`.
    - `overwrite`: discard partial or final results of a different config at `output`
      (otherwise that is an error) and recompute an existing result.
    - `progress`: show a progress bar (runs done, runs/s, time left); default: the
      config's `execution.progress`.
    - `keep_parts`: keep the chunk files after assembling the result.

    **Returns:**

    An `xarray.Dataset` with one dimension per swept parameter (and `run` for explicit
    runs) plus `time`: `loss` and each recorded diagnostic at the save times `t`,
    `final_<name>` at the end of each run, `status` (see `Status`), `num_steps`,
    `num_rejected_steps` and `grad_evals`.
    """
    if not isinstance(config, SweepConfig):
        if isinstance(config, Mapping):
            config = SweepConfig(config)
        else:
            config = SweepConfig.load(config)
    if backend is not None:
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        config.execution["backend"] = backend
    _check_dtype(config)
    out_path = (
        Path(output)
        if output is not None
        else (Path(config.output) if config.output else None)
    )
    plan = make_plan(config)  # every check happens here, before any run
    record = recorders(config.record, config.record_fns)
    largest = max(len(b.runs) for b in plan.blocks)
    ex = resolve_execution(config, largest)
    show = config.execution["progress"] if progress is None else progress
    attrs = {
        "title": f"neuralcollapse_jax sweep {config.name}",
        "config_hash": config.hash(),
        "config": json.dumps(config.to_dict(), default=repr),
        "num_runs": config.num_runs,
        "dtype": config.dtype,
    }

    if out_path is not None and out_path.exists() and not overwrite:
        ds = load_sweep(out_path)
        if ds.attrs.get("config_hash") == attrs["config_hash"]:
            return ds  # already complete: nothing to recompute
        raise ValueError(
            f"output: {out_path} holds a different sweep; choose another "
            f"file or pass overwrite=True (--overwrite)"
        )

    tmpdir = None
    if out_path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="ncjax-sweep-")
        store_path = Path(tmpdir.name) / "sweep.nc"
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        store_path = out_path
    try:
        store = PartStore(store_path, config, overwrite=overwrite)
        done = set(store.done())
        tasks = _tasks(plan, done, ex)
        bar = tqdm(
            total=config.num_runs,
            initial=len(done),
            unit="run",
            desc=config.name,
            dynamic_ncols=True,
            smoothing=0.1,
            disable=not show,
        )
        try:
            if tasks:
                if ex.backend == "ray":
                    run_ray(plan, tasks, ex, store, bar)
                else:
                    _run_local(plan, tasks, ex, store, bar, record)
        finally:
            bar.close()
        arrays = store.read_all(config.num_runs)
        ts = traced_arrays(plan, list(range(config.num_runs)), np.dtype(config.dtype))["ts"]
        ds = assemble(config, arrays, ts, attrs)
        if out_path is not None:
            write_dataset(ds, out_path)
            if not keep_parts:
                store.remove()
        return ds
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
