"""Regular against sliding solver on several data sets: what `solver="auto"` should pick.

For each data set, prints its measured separability `(mu_s, mu_d)`, the choice of
`auto_solver`, and for each rtol the gradient evaluations, steps and wall time (one
call, compilation included) of the regular solver and of the sliding solver with the
Tsit5 and the Bosh3 tableau, then the distances at `T` to the sliding Tsit5 run at the
tightest rtol.

Data sets (float64):

0. the default `ncjax run` problem (orthogonally separable), h = 50, std 1e-4, T = 1e4;
1. 60 MNIST test digits {0, 1, 2} (20 per class, file order), centered, h = 20,
   std 1e-3, T = 2 (the `ncjax run --data mnist012` example of the docs);
2. the same digits, not centered;
3. 90 Gaussian points in D = 30 with random labels, h = 50, std 1e-4, T = 100.

Usage: `python benchmarks/bench_auto.py [--cases 0 1 2 3] [--rtols 1e-5 1e-6]
[--max-steps 200000]`. `--quick`: case 0 and 1 at rtol 1e-5, T shortened.
"""

from __future__ import annotations

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import device_line, flat, table_header, timed_once  # noqa: E402

import neuralcollapse_jax as nc  # noqa: E402
from neuralcollapse_jax._cli_run import DEFAULT_RUN  # noqa: E402


def _problems(quick: bool):
    d = DEFAULT_RUN["data"]
    syn = nc.datasets.orthogonally_separable(
        jax.random.key(0),
        3,
        d["points_per_class"],
        d["dim"],
        d["mu_s"],
        d["mu_d"],
        norm_range=(d["norm_min"], d["norm_max"]),
    )
    yield (
        "default ncjax run problem (h 50, std 1e-4)",
        syn,
        50,
        1e-4,
        10.0 if quick else 1e4,
    )
    m = nc.datasets.mnist((0, 1, 2), per_class=20)
    yield "60 MNIST digits, centered (h 20, std 1e-3)", m, 20, 1e-3, 0.2 if quick else 2.0
    m = nc.datasets.mnist((0, 1, 2), per_class=20, center=False)
    yield "60 MNIST digits, not centered (h 20, std 1e-3)", m, 20, 1e-3, 2.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 30))
    labels = rng.integers(0, 3, 90)
    g = nc.Dataset(jnp.asarray(x), jnp.asarray(labels), 3)
    yield "90 Gaussian points in D 30, random labels (h 50, std 1e-4)", g, 50, 1e-4, 100.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", type=int, nargs="*", default=None)
    p.add_argument("--rtols", type=float, nargs="*", default=None)
    p.add_argument("--max-steps", type=int, default=200_000)
    args = p.parse_args(argv)
    cases = (
        args.cases if args.cases is not None else ([0, 1] if args.quick else [0, 1, 2, 3])
    )
    rtols = args.rtols or ([1e-5] if args.quick else [1e-5, 1e-6])
    print("# bench_auto")
    print(
        f"device: {device_line()}; float64; "
        f"max_steps {args.max_steps}; wall = one call, compilation included"
    )
    solvers = [
        ("regular", "regular"),
        ("sliding Tsit5", nc.SlidingReLU(inner=diffrax.Tsit5())),
        ("sliding Bosh3", nc.SlidingReLU(inner=diffrax.Bosh3())),
    ]
    print()
    table_header(
        [
            "data",
            "mu_s, mu_d",
            "auto picks",
            "rtol",
            "solver",
            "grad evals",
            "steps (rejected)",
            "wall s",
            "status",
            "sliding pairs at T (max)",
        ]
    )
    for k, (name, data, h, scale, T) in enumerate(_problems(args.quick)):
        if k not in cases:
            continue
        mu_s, mu_d = nc.datasets.separability(data)
        pick = nc.auto_solver(data)
        model = nc.TwoLayerReLU.init(
            jax.random.key(0), data.dim, h, data.num_classes, scale
        )
        finals = {}
        for rtol in rtols:
            for label, solver in solvers:
                tr, wall = timed_once(
                    lambda: nc.gradient_flow(
                        model,
                        data,
                        t1=T,
                        rtol=rtol,
                        solver=solver,
                        max_steps=args.max_steps,
                        save_params=False,
                    )
                )
                st = tr.stats_summary()
                finals[(rtol, label)] = (flat(tr.final), bool(tr.ok))
                pairs = (
                    f"{st.get('sliding_pairs', '-')} ({st.get('sliding_max_pairs', '-')})"
                )
                print(
                    f"| {name}, T {T:g} | {mu_s:.2f}, {mu_d:.2f} | {pick} | {rtol:g} | "
                    f"{label} | {st['grad_evals']} | {st['num_steps']} "
                    f"({st['num_rejected_steps']}) | {wall:.2f} | {tr.message()} | "
                    f"{pairs} |",
                    flush=True,
                )
        ref, ok = finals[(min(rtols), "sliding Tsit5")]
        if ok:
            dists = ", ".join(
                f"{lab} rtol {r:g}: {np.linalg.norm(x - ref) / np.linalg.norm(ref):.2e}"
                for (r, lab), (x, fine) in finals.items()
                if fine and (r, lab) != (min(rtols), "sliding Tsit5")
            )
            print(f"|  distances at T to sliding Tsit5 rtol {min(rtols):g}: {dists} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
