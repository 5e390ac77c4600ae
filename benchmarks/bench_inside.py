"""Transversal crossings inside the steps against steps that end at them.

Compares, in one run and on the same problems, the default solver
(`SlidingReLU(crossings="locate", correct_crossings=True)`: transversal crossings
stay inside the steps, corrected to third order after them; entries into sliding and
exits end the steps) with `SlidingReLU(crossings="locate")` (steps end before each
kink event), at the same tolerances, against the latter at a much tighter tolerance
(a second method: no crossing is corrected there).

Problems:

- `ortho`: `orthogonally_separable(key 0, 3 classes, 5 points each, dim 10, mu_s 0.5,
  mu_d 0.2)`, `TwoLayerReLU.init(key 1, width 10, scale 1e-2)`, `T = 30`, 16 save
  times; reference `rtol 1e-11`.
- `m60-early`: 20 test images per digit 0, 1, 2, centered, `h = 50`, std `1e-3`, to
  `T = 0.016` (the alignment phase: crossings, three entries), 6 save times;
  reference `rtol 1e-11`.
- `m60`: the same digits to `T = 2` (1,288 crossings, 254 entries into sliding), 6
  save times; reference `rtol 1e-10`.
- `ncjax`: the problem `ncjax run` solves with no options (90 points, `h = 50`, to
  `T = 1e4`, 50 save times on a log scale), at the default `rtol`; reference `rtol
  1e-11`.
- `m3147` (`--m3147`, not in the default list): all 3147 test digits {0, 1, 2} to
  `T = 0.0562` (1% of the initial loss), the default solver at the default `rtol`
  only (steps ending at crossings did not finish in 75 minutes), its first call.

Error: the largest relative distance over the save times to the reference. Wall: a
compiled call (best of up to three for short ones), and the first call with its
compilation.

Usage: `python benchmarks/bench_inside.py [--problems ortho m60-early m60 ncjax]
[--m3147]`.
"""

from __future__ import annotations

import argparse
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from common import device_line, mnist_problem, table_header, timed, timed_once

import neuralcollapse_jax as nc


PROBLEMS = ("ortho", "m60-early", "m60", "ncjax")
# Steps that end before each kink event: the reference method.
STEPS_END = nc.SlidingReLU(crossings="locate")


def _problem(name):
    if name == "ortho":
        data = nc.datasets.orthogonally_separable(jax.random.key(0), 3, 5, 10, 0.5, 0.2)
        model = nc.TwoLayerReLU.init(jax.random.key(1), 10, 10, 3, 1e-2)
        return data, model, 30.0, jnp.linspace(0.0, 30.0, 16), 1e-11
    if name == "ncjax":
        from bench_events import ncjax_run_problem

        data, model, T, ts = ncjax_run_problem()
        return data, model, T, ts, 1e-11
    data, model = mnist_problem(20)
    if name == "m60-early":
        return data, model, 0.016, jnp.linspace(0.0, 0.016, 6), 1e-11
    return data, model, 2.0, jnp.linspace(0.0, 2.0, 6), 1e-10


def _saved(traj) -> np.ndarray:
    T = len(traj.ts)
    return np.concatenate(
        [
            np.asarray(traj.models.W).reshape(T, -1),
            np.asarray(traj.models.V).reshape(T, -1),
        ],
        axis=1,
    )


def _error(traj, ref) -> float:
    a, b = _saved(traj), _saved(ref)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def _stats(traj) -> str:
    s = {k: int(v) for k, v in traj.stats.items()}
    return (
        f"{s['grad_evals']:,} | {s['num_steps']:,} ({s['num_rejected_steps']:,}) | "
        f"{s.get('crossings_located', 0):,} / {s.get('crossings_started', 0):,} | "
        f"{s.get('sliding_entries', 0)}"
    )


def _compare(name: str, rtols) -> None:
    data, model, T, ts, ref_rtol = _problem(name)

    def call(solver, rtol):
        return lambda: nc.gradient_flow(
            model, data, t1=T, saveat=ts, solver=solver, rtol=rtol
        )

    ref, ref_wall = timed_once(call(STEPS_END, ref_rtol))
    print(f"\n### {name} (T = {T:g}); reference: steps end at crossings, rtol {ref_rtol:g}")
    print(f"reference: {ref_wall:.1f} s, {int(ref.stats['num_steps']):,} steps\n")
    table_header(
        [
            "rtol",
            "solver",
            "max rel. error",
            "grad evals",
            "steps (rejected)",
            "crossings inside / started",
            "entries",
            "wall s (compiled)",
            "first call s",
        ]
    )
    solvers = (
        ("steps end at crossings", STEPS_END),
        ("corrected crossings (default)", None),
    )
    for rtol in rtols:
        for label, solver in solvers:
            traj, first, best = timed(call(solver, rtol))
            shown = "default (1e-8)" if rtol is None else f"{rtol:g}"
            print(
                f"| {shown} | {label} | {_error(traj, ref):.2e} | {_stats(traj)} | "
                f"{best:.2f} | {first:.1f} |",
                flush=True,
            )


def _m3147() -> None:
    data, model = mnist_problem(None)
    T = 0.0562
    traj, wall = timed_once(
        lambda: nc.gradient_flow(
            model,
            data,
            t1=T,
            saveat=jnp.array([0.0, T]),
            save_params=False,
            max_steps=100_000,
        )
    )
    loss = np.asarray(traj.loss)
    print(f"\n### M3147 (all 3147 digits, T = {T}), the default call\n")
    table_header(
        [
            "status",
            "loss at T / initial",
            "grad evals",
            "steps (rejected)",
            "crossings inside / started",
            "entries",
            "first call s",
        ]
    )
    status = "success" if int(traj.status) == nc.Status.SUCCESS else int(traj.status)
    print(f"| {status} | {loss[-1] / loss[0]:.4f} | {_stats(traj)} | {wall:.1f} |")
    # Where the rejections come from: retries to end a step before a located event,
    # the rest the error test.
    s = traj.stats_summary()
    retries = s.get("event_retries", 0)
    print(
        f"\nRejected steps: {s['num_rejected_steps']:,}, of which {retries:,} retried "
        f"to end before an event and {s['num_rejected_steps'] - retries:,} failed the "
        f"error test; {s.get('sliding_exits', 0)} exits."
    )


def main() -> None:
    warnings.simplefilter("ignore")
    jax.config.update("jax_enable_x64", True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--m3147", action="store_true", help="also M3147 (minutes)")
    args = parser.parse_args()
    print("# bench_inside")
    print(device_line())
    rtols = {
        "ortho": (1e-6, None, 1e-10),
        "m60-early": (1e-6, None, 1e-10),
        "m60": (1e-6, None),
        "ncjax": (None,),
    }
    for name in args.problems:
        _compare(name, rtols[name])
    if args.m3147:
        _m3147()


if __name__ == "__main__":
    main()
