"""Recording diagnostics along the exact flow on all 3147 MNIST test digits {0, 1, 2}.

Problem M3147 (float64, h = 50, Gaussian init of std 1e-3, sum cross-entropy, centered
inputs), integrated with the sliding solver to the horizon where the loss falls under
1% of its initial value, with 1000 save times and `metrics.standard_recorders()`,
parameters not saved (`save_params=False`). Prints a table: device, wall time (with and
without compilation), steps, the size of what was recorded against the size the
parameters at every save time would have taken, and the process's peak resident memory.

Usage: `python benchmarks/bench_recording.py [--t1 T] [--saves N] [--rtol R]`.
"""

from __future__ import annotations

import argparse
import resource

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    EPS,
    WIDTH,
    device_line,
    mnist_problem,
    table_header,
    timed_once,
)

import neuralcollapse_jax as nc  # noqa: E402
from neuralcollapse_jax import metrics  # noqa: E402


def _nbytes(tree) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t1", type=float, default=0.0562, help="horizon (default: 1%% loss)")
    p.add_argument("--saves", type=int, default=1000)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--warm", action="store_true", help="time a second, compiled call too")
    args = p.parse_args(argv)
    data, model = mnist_problem()
    ts = nc.log_times(args.t1, args.saves - 1, t_min=args.t1 * 1e-4)

    def run():
        return nc.gradient_flow(
            model,
            data,
            t1=args.t1,
            saveat=ts,
            rtol=args.rtol,
            atol=args.rtol * EPS,
            solver="sliding",
            record=metrics.standard_recorders(),
            save_params=False,
            max_steps=200_000,
        )

    traj, first = timed_once(run)
    warm = float("nan")
    if args.warm:
        traj, warm = timed_once(run)
    recorded = _nbytes(traj.records) + _nbytes(traj.loss) + _nbytes(traj.ts)
    params = len(ts) * (model.W.size + model.V.size) * 8
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"device: {device_line()}; float64")
    print(
        f"M3147: n = {data.num_samples}, h = {WIDTH}, eps = {EPS:g}, T = {args.t1:g}, "
        f"{len(ts)} save times, rtol {args.rtol:g}, sliding solver, standard recorders"
    )
    table_header(
        [
            "status",
            "loss 0 -> T",
            "steps (rejected)",
            "wall s (first call)",
            "wall s (warm)",
            "recorded",
            "parameters at every save",
            "peak RSS",
        ]
    )
    print(
        f"| {traj.message()} | {float(traj.loss[0]):.4g} -> {float(traj.loss[-1]):.4g} | "
        f"{int(traj.stats['num_steps'])} ({int(traj.stats['num_rejected_steps'])}) | "
        f"{first:.1f} | {warm:.1f} | {recorded / 2**20:.2f} MiB | "
        f"{params / 2**20:.0f} MiB | {peak:.0f} MiB |"
    )
    shapes = jax.tree_util.tree_flatten_with_path(traj.records)[0]
    print(
        "recorded:",
        ", ".join(f"{jax.tree_util.keystr(k)} {tuple(v.shape)}" for k, v in shapes),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
