"""How well gradient descent pins down the flow at `T` on M300: a check of the
references of `bench_crossings.py` against each other.

M300 (first 100 test images of each digit 0, 1, 2, centered, h = 50, Gaussian init
of std 1e-3, sum cross-entropy, T = 1, float64). Measured in one run:

1. the sliding solver (`Bosh3` tableau, default crossing control) at rtol 3e-7 and
   1e-7: the flow's tightest runs, and their distance to each other;
2. gradient descent through Optax (`relu'(0) = 0`) at learning rates 8e-6 to 1e-6
   (the smallest of `bench_crossings.py`): the distance of each run to the tightest
   flow run, and its ratio to the previous one (2 for a first-order approach when
   the rate halves);
3. extrapolations of gradient descent to a zero step (linear from the two smallest
   rates, `2 l/2 - l`; Richardson from the three smallest, `(8 l/4 - 6 l/2 + l) / 3`;
   a least-squares line through all four) and their distance to the flow;
4. the default solver (`Bosh3`) at rtol 1e-3 to 1e-6 against every reference.

Usage: `python benchmarks/bench_reference.py [--quick]` (about 35 minutes on a 2-core
CPU, most of it gradient descent at lr 1e-6: a million steps).
"""

from __future__ import annotations

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import numpy as np  # noqa: E402

# The problem and its runs as `bench_crossings.py` (next to this script) sets them up.
from bench_crossings import EPS, WIDTH, _descent, _device, _flat, _flow  # noqa: E402

import neuralcollapse_jax as nc  # noqa: E402


def _dist(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args(argv)
    quick = args.quick
    print(f"# bench_reference{' --quick' if quick else ''}")
    print(f"device: {_device()}; jax {jax.__version__}, float64")
    data = nc.datasets.mnist(per_class=20 if quick else 100)
    model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, WIDTH, 3, EPS)
    T = 0.1 if quick else 1.0
    name = f"M{data.num_samples}"

    def flow(rtol, inner):
        t = time.perf_counter()
        tr = jax.block_until_ready(_flow(model, data, T, rtol, "land", inner=inner)())
        return _flat(tr.final), int(tr.stats["grad_evals"]), time.perf_counter() - t

    tight = [1e-5, 1e-6] if quick else [3e-7, 1e-7]
    flows = {r: flow(r, diffrax.Bosh3()) for r in tight}
    ref = flows[tight[-1]][0]
    print(f"\n## {name}, T = {T}: the flow's tightest runs (sliding, Bosh3)")
    print(f"| rtol | grad evals | wall s (first call) | distance to rtol {tight[-1]:g} |")
    print("|---|---|---|---|")
    for r, (x, ev, w) in flows.items():
        print(f"| {r:g} | {ev} | {w:.1f} | {_dist(x, ref):.2e} |", flush=True)

    lrs = [4e-5, 2e-5, 1e-5, 5e-6] if quick else [8e-6, 4e-6, 2e-6, 1e-6]
    gd = {}
    print(
        f"\n## {name}: gradient descent against the flow (sliding, Bosh3, rtol "
        f"{tight[-1]:g})"
    )
    print("| GD lr | steps | wall s | distance to the flow | previous / this |")
    print("|---|---|---|---|---|")
    prev = None
    for lr in lrs:
        steps = int(round(T / lr))
        t = time.perf_counter()
        gd[lr] = _flat(jax.block_until_ready(_descent(model, data, lr, steps)()))
        e = _dist(gd[lr], ref)
        ratio = "" if prev is None else f"{prev / e:.2f}"
        print(
            f"| {lr:g} | {steps} | {time.perf_counter() - t:.1f} | {e:.2e} | {ratio} |",
            flush=True,
        )
        prev = e

    l8, l4, l2, l1 = (gd[lr] for lr in lrs[-4:])
    h = np.asarray(lrs[-4:])
    A = np.stack([np.ones_like(h), h], axis=1)
    coef = np.linalg.lstsq(A, np.stack([l8, l4, l2, l1]), rcond=None)[0]
    refs = {
        f"GD linear, lr {lrs[-2]:g} and {lrs[-1]:g}": 2 * l1 - l2,
        f"GD Richardson, lr {lrs[-3]:g} to {lrs[-1]:g}": (8 * l1 - 6 * l2 + l4) / 3,
        f"GD least-squares line, lr {lrs[-4]:g} to {lrs[-1]:g}": coef[0],
        f"flow, Bosh3 rtol {tight[-1]:g}": ref,
    }
    print(f"\n## {name}: extrapolations of gradient descent to a zero step")
    print(f"| reference | distance to the flow (rtol {tight[-1]:g}) |")
    print("|---|---|")
    for k, x in refs.items():
        print(f"| {k} | {_dist(x, ref):.2e} |")

    print(f"\n## {name}: the default solver (Bosh3) against each reference")
    print("| rtol | grad evals | " + " | ".join(refs) + " |")
    print("|---|---|" + "---|" * len(refs))
    for r in [1e-4, 1e-5] if quick else [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6]:
        x, ev, _ = flow(r, diffrax.Bosh3())
        cells = " | ".join(f"{_dist(x, v):.2e}" for v in refs.values())
        print(f"| {r:g} | {ev} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
