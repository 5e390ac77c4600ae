"""Where the time of a step of the default solver goes: a profile of the compiled
default call on MNIST data, by kind of XLA kernel.

The default call (`gradient_flow` at the defaults) on M300 (as in `bench_events.py`:
100 test images per digit 0, 1, 2, centered, `h = 50`, init 1e-3) runs to a short
horizon under `jax.profiler` (a Perfetto trace, parsed here; no other package), and
the time of the kernels XLA ran is summed by kind and divided by the steps taken:

- **products with the data**: matrix-product kernels (XLA's `dot`/`dot_general` and
  the YNNPACK fusions `ynn_fusion`, a product with elementwise work fused into it)
  with the data matrix (`n x r` in the row space, where the default call integrates
  in it, else `n x D`) as an operand, found in the compiled HLO: `X W` and `X^T G`,
  two per gradient evaluation, and the velocities `X dW` of the events;
- **other matrix products**: the small ones (with the `n x K` outputs, the `K x h`
  output weights, the sliding sets);
- **everything else**: the elementwise fusions, reductions, scatters and copies of the
  step, the events and the controller.

Kernels inside a `cond` are counted once (as themselves, not as the `cond`). The
compiled call is run once before it is profiled. The trace holds at most a million
events (about 800 steps on M300): the default horizon stays within it.

With `--by-line TOP`, also the `TOP` lines of the source that take the most kernel
time (as in `profile_batch.py`).

M3147 (`--problem m3147`) is all 3147 test digits {0, 1, 2}; a horizon of `1e-4`
stays within the trace.

Usage: `python benchmarks/profile_step.py [--t1 0.002] [--problem m300|m60|m3147]
[--by-line TOP]`.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from common import device_line, kernel_times, table_header  # noqa: E402

import neuralcollapse_jax as nc  # noqa: E402
from neuralcollapse_jax._flow import row_space_default  # noqa: E402


PRODUCTS = ("ynn_fusion", "dot", "dot_general")


def data_kernels(hlo: str, shape: tuple[int, int]) -> set[str]:
    """Names of the instructions of the compiled HLO text with an operand of `shape`
    (either way round). The text names its operands only: their shapes are looked
    up where they are defined (names are unique in an HLO module)."""
    define = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) [\w-]+\((.*)")
    shapes, operands = {}, {}
    for line in hlo.splitlines():
        m = define.match(line)
        if m:
            dims = re.match(r"\w+\[([\d,]*)\]", m.group(2))
            shapes[m.group(1)] = (
                tuple(int(d) for d in dims.group(1).split(",") if d) if dims else ()
            )
            operands[m.group(1)] = re.findall(r"%([\w.\-]+)", m.group(3).split("), ")[0])
    want = {tuple(shape), tuple(shape[::-1])}
    return {k for k, ops in operands.items() if any(shapes.get(o) in want for o in ops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t1", type=float, default=0.002, help="horizon (default 0.002)")
    parser.add_argument("--problem", default="m300", choices=["m300", "m60", "m3147"])
    parser.add_argument(
        "--by-line",
        type=int,
        default=0,
        metavar="TOP",
        help="also the TOP lines of the source that take the most kernel time",
    )
    args = parser.parse_args()
    if args.problem == "m3147":
        data = nc.datasets.mnist()
    else:
        data = nc.datasets.mnist(per_class=100 if args.problem == "m300" else 20)
    model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, 50, 3, 1e-3)
    T = args.t1
    # Compiled once: the kernels' names in the trace are those of this executable.
    solve = jax.jit(lambda m: nc.gradient_flow(m, data, t1=T, saveat=[T]))
    solve = solve.lower(model).compile()
    tr = jax.block_until_ready(solve(model))
    stats = tr.stats_summary()
    steps, evals = int(stats["num_steps"]), int(stats["grad_evals"])
    t = time.perf_counter()
    jax.block_until_ready(solve(model))
    wall = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        jax.block_until_ready(solve(model))
        jax.profiler.stop_trace()
        times, _ = kernel_times(trace_dir, "use a shorter --t1")
    n, h = data.x.shape[0], model.W.shape[1]
    rank = int(np.linalg.matrix_rank(np.asarray(data.x)))
    # The columns of the data the call integrates with: `rank` in the row space,
    # which the default takes where the rank is small enough (M300), else all.
    cols = rank if row_space_default(data) is not None else data.dim
    with_data = data_kernels(solve.as_text(), (n, cols))
    groups = collections.Counter()
    calls = collections.Counter()
    for name, (us, c) in times.items():
        if name.startswith(PRODUCTS):
            key = "products with the data" if name in with_data else "other matrix products"
        else:
            key = "other kernels"
        groups[key] += us
        calls[key] += c
    total = sum(groups.values())
    print("# profile_step")
    print("device: " + device_line())
    print(
        f"\n## The default call on {args.problem.upper()} to T = {T}: n = {n}, "
        f"rank {rank} (integrated in {cols} dimensions), h = {h}; {steps} steps, "
        f"{evals} gradient evaluations "
        f"({evals / steps:.2f} per step), {wall:.2f} s compiled "
        f"({1e3 * wall / steps:.2f} ms per step)\n"
    )
    table_header(["kernels", "ms per step", "share", "kernels per step"])
    for key in ("products with the data", "other matrix products", "other kernels"):
        print(
            f"| {key} | {groups[key] / 1e3 / steps:.2f} | {groups[key] / total:.0%} "
            f"| {calls[key] / steps:.1f} |"
        )
    print(
        f"| all kernels | {total / 1e3 / steps:.2f} | 100% "
        f"| {sum(calls.values()) / steps:.1f} |"
    )
    print("\nThe ten kinds of kernel that take the most time (per step):\n")
    table_header(["kind", "ms per step", "kernels per step"])
    kinds = collections.Counter()
    kind_calls = collections.Counter()
    for name, (us, c) in times.items():
        kind = name.split(".")[0]
        kinds[kind] += us
        kind_calls[kind] += c
    for kind, us in kinds.most_common(10):
        print(f"| {kind} | {us / 1e3 / steps:.3f} | {kind_calls[kind] / steps:.1f} |")
    if args.by_line:
        # (The attribution of `profile_batch.py`: each kernel to the line of this
        # package that its instruction comes from.)
        from profile_batch import instruction_lines, report

        report(times, instruction_lines(solve.as_text()), steps, args.by_line, True)


if __name__ == "__main__":
    main()
