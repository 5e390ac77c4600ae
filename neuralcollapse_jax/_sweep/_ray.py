"""The Ray backend: chunks as Ray tasks, gathered into the same chunk files."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._solve import block_spec, chunk_inputs, run_chunk_task


def run_ray(plan, tasks, ex, store, progress) -> None:
    """Ship every chunk as a task; write each result as it arrives.

    Connects to `execution.ray_address` (or starts a local instance) unless Ray is
    already initialised. Each task asks for `ray_num_cpus` CPUs and `ray_num_gpus`
    GPUs. Shared data sets are put in the object store once per block; per-run data
    travel with their chunk.
    """
    try:
        import ray
    except ImportError:
        raise ValueError(
            "execution.backend: 'ray' needs the ray extra "
            "(pip install 'neuralcollapse_jax[ray]')"
        ) from None
    config = plan.config
    ex_cfg = config.execution
    if not ray.is_initialized():
        ray.init(
            address=ex_cfg["ray_address"], include_dashboard=False, log_to_driver=False
        )
    options: dict[str, Any] = {"num_cpus": float(ex_cfg["ray_num_cpus"])}
    if ex_cfg["ray_num_gpus"]:
        options["num_gpus"] = float(ex_cfg["ray_num_gpus"])
    remote = ray.remote(run_chunk_task).options(**options)
    dtype = np.dtype(config.dtype)
    x64 = config.dtype == "float64"
    # On a cluster the workers may have other devices than the driver: the batch size
    # is the configured one, or one run per solve for CPU workers.
    batch = ex_cfg["batch_size"]
    if batch == "auto":
        batch = 1 if not ex_cfg["ray_num_gpus"] else ex.chunk_size
    shared_refs: dict[int, Any] = {}
    pending: dict[Any, list[int]] = {}
    for block, runs, size in tasks:
        params, x, y = chunk_inputs(plan, block, runs, dtype)
        if block.shared_data:
            if block.index not in shared_refs:
                shared_refs[block.index] = (ray.put(x), ray.put(y))
            x, y = shared_refs[block.index]
        ref = remote.remote(
            block_spec(block, config.dtype),
            config.record,
            config.record_fns,
            params,
            x,
            y,
            size,
            min(batch, size),
            block.shared_data,
            x64,
        )
        pending[ref] = runs
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            runs = pending.pop(ref)
            out = ray.get(ref)
            store.write(runs, out)
            progress.update(len(runs))
