"""Helpers shared by the benchmark scripts in this folder.

The scripts import this module as `common` (they run from any folder: Python puts the
script's own folder first on the path). Set `jax_enable_x64` before importing it when a
benchmark runs in float64; nothing here changes the JAX configuration.

- `device_line()`: the device, the cores and the versions, for the head of an output;
- `mnist_problem(per_class)`: the MNIST problems M300 and M3147 and their initial model;
- `flow(...)`, `descent(...)`, `sliding_solver(...)`: the flow and gradient descent runs
  of the sliding benchmarks, with their settings in one place;
- `timed(fn)`, `timed_once(fn)`: wall times of a first call and of compiled calls;
- `flat(model)`, `relative_distance(a, b)`, `interp_loglog(points, e)`: comparing runs;
- `table_header(columns)`: the head of a Markdown table;
- `kernel_times(trace_dir, hint)`: the kernels of a `jax.profiler` trace, summed by name.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import neuralcollapse_jax as nc


EPS = 1e-3
"""Init scale (Gaussian std) of the MNIST problems."""

WIDTH = 50
"""Hidden width of the MNIST problems."""

SHORT = 10.0
"""Seconds: compiled calls shorter than this are timed best of three."""


def device_line() -> str:
    """One line naming the device, the CPU cores this process may use, the machine and
    the versions of JAX and Python, e.g. `cpu (cpu), 1 device(s), 2 CPU cores, x86_64;
    jax 0.10.2, python 3.11.7`."""
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    return (
        f"{d.platform} ({kind}), {len(jax.devices())} device(s), {cores} CPU cores, "
        f"{platform.machine()}; jax {jax.__version__}, "
        f"python {platform.python_version()}"
    )


def mnist_problem(per_class: int | None = None) -> tuple[nc.Dataset, nc.TwoLayerReLU]:
    """An MNIST problem of the sliding benchmarks and its initial model.

    **Arguments:**

    - `per_class`: the first `per_class` test images of each digit 0, 1, 2 in file order
      (100: M300), or `None` for all 3147 test digits {0, 1, 2} (M3147).

    **Returns:**

    `(data, model)`: the digits centered by their mean, and a `TwoLayerReLU` of width
    `WIDTH` with three outputs and a Gaussian init of std `EPS` (key 0).
    """
    if per_class is None:
        data = nc.datasets.mnist()
    else:
        data = nc.datasets.mnist(per_class=per_class)
    model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, WIDTH, 3, EPS)
    return data, model


def sliding_solver(
    crossings: str = "land", budget: float | None = None, inner=None
) -> nc.SlidingReLU:
    """`SlidingReLU` with the `Bosh3` tableau unless `inner` is given, the crossing
    control `crossings` and, if given, the crossing budget `budget`."""
    extra = {} if budget is None else {"crossing_budget": budget}
    inner = diffrax.Bosh3() if inner is None else inner
    return nc.SlidingReLU(inner=inner, crossings=crossings, **extra)


def flow(model, data, t1, rtol, solver, max_steps=400_000, row_space=False):
    """The exact flow to `t1` (saved at 0 and `t1`, parameters not saved), with
    `atol = rtol * EPS`; returns the `Trajectory`."""
    return nc.gradient_flow(
        model,
        data,
        t1=t1,
        saveat=jnp.array([0.0, t1]),
        rtol=rtol,
        atol=rtol * EPS,
        solver=solver,
        max_steps=max_steps,
        save_params=False,
        row_space=row_space,
    )


def descent(model, data, lr, steps, row_space=False):
    """Full-batch gradient descent through Optax (the library's `gradient_descent`),
    `steps` steps of `lr`; returns the final model."""
    traj = nc.gradient_descent(
        model,
        data,
        learning_rate=lr,
        steps=steps,
        save_steps=np.array([0, steps]),
        save_params=False,
        row_space=row_space,
    )
    return traj.final


def timed(
    fn: Callable[[], Any], repeat: bool = True, repeats: int = 3
) -> tuple[Any, float, float | None]:
    """Time `fn()`: a first call (compilation included), then, if `repeat`, compiled
    calls, repeated up to `repeats` times while they take less than `SHORT` seconds
    (short runs suffer most from a busy machine).

    **Returns:**

    `(result, first call s, best compiled call s)`; the last is `None` when `repeat` is
    false.
    """
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    if not repeat:
        return out, first, None
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        wall = time.perf_counter() - t
        best = wall if best is None else min(best, wall)
        if wall >= SHORT:
            break
    return out, first, best


def timed_once(fn: Callable[[], Any]) -> tuple[Any, float]:
    """`(fn(), its wall time in s)`, for runs too long to repeat."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def flat(model) -> np.ndarray:
    """The parameters `W`, `V` of a model as one flat array."""
    return np.concatenate([np.ravel(model.W), np.ravel(model.V)])


def relative_distance(a, b) -> float:
    """`|a - b| / |b|`."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def interp_loglog(points: Sequence[tuple[float, float]], e: float) -> float | None:
    """The wall time at error `e`, interpolated log-log between the two `(error, wall)`
    points that bracket it; `None` outside the measured range."""
    pts = sorted(points)
    for (e0, w0), (e1, w1) in zip(pts, pts[1:]):
        if e0 <= e <= e1 and e0 < e1:
            f = np.log(e / e0) / np.log(e1 / e0)
            return float(np.exp(np.log(w0) + f * (np.log(w1) - np.log(w0))))
    return None


def table_header(columns: Sequence[str]) -> None:
    """Print the head of a Markdown table: the column names and the rule under them."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


TRACE_CAP = 1_000_000  # events a Perfetto trace keeps (the profiler drops the rest)
# Events that enclose kernels rather than being kernels (the kernels inside a `cond` or
# a `while` are events of their own).
CONTROL = (
    "cond",
    "while",
    "PjitFunction",
    "ExecuteReplicated",
    "CommonPjRt",
    "ThunkExecutor",
    "Slinky",
    "$",
)


def kernel_times(trace_dir: str, hint: str) -> tuple[dict[str, tuple[float, int]], bool]:
    """`{kernel name: (total microseconds, calls)}` from the Perfetto trace written to
    `trace_dir` (`jax.profiler.start_trace(..., create_perfetto_trace=True)`), and
    whether the kernels are a GPU's: where the trace has device processes, only their
    events count; else the host's. A trace cut short at the profiler's cap stops the
    script, with `hint` (how to shorten the run) in the message."""
    (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    if len(events) >= TRACE_CAP:
        raise SystemExit(
            f"the trace holds {len(events)} events, the profiler's cap: it is cut "
            f"short, so the sums are not the whole run's; {hint}"
        )
    names = {
        e["pid"]: e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    gpu = {pid for pid, name in names.items() if "GPU" in name or "gpu" in name}
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X" or (gpu and e.get("pid") not in gpu):
            continue
        if not e["name"].startswith(CONTROL):
            out[e["name"]][0] += e.get("dur", 0.0)
            out[e["name"]][1] += 1
    return {k: (v[0], int(v[1])) for k, v in out.items()}, bool(gpu)
