"""Sliding solver against the regular flow and gradient descent on MNIST digits {0,1,2}.

Problems (float64, h = 50, Gaussian init of std 1e-3, sum cross-entropy, inputs
centered by their mean):

- M300: the first 100 test images of each digit 0, 1, 2 (in file order), horizon T = 1;
- M3147: all 3147 test digits {0, 1, 2}, horizon where the loss falls under 1% of its
  initial value (found by the run itself).

Measured in one run:

1. M300 references: gradient descent (relu'(0) = 0) with shrinking learning rates,
   Richardson-extrapolated from the three smallest; and the sliding solver (Tsit5
   tableau) at rtol 1e-7 as a second method. Every GD run's error against both.
2. M300: plain Diffrax Tsit5 on the regular field (rtol 1e-5, atol 1e-5 x eps) against
   the sliding solver (default Bosh3 tableau, with and without `row_space`, and the
   Tsit5 tableau) at several tolerances: gradient evaluations, steps, wall time,
   errors at T against both references.
3. M300: wall time of gradient descent through Optax (`gradient_descent`) at each flow
   run's accuracy (the fastest tried learning rate that is at least as accurate).
4. M3147: wall time of the sliding solver (compilation reported separately).
5. M300 late phase: gradient evaluations of the sliding solver against the horizon T
   from 1 to 1e4 (table and plot); with `--late-defaults`, of the default call.

Usage: `python benchmarks/bench_sliding.py [--quick] [--out DIR]`. `--quick` shrinks
every problem (a smoke run of a minute or two); the numbers are then not the targets'.
"""

from __future__ import annotations

import argparse
import os
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    EPS,
    SHORT,
    WIDTH,
    descent,
    device_line,
    flat,
    flow,
    mnist_problem,
    table_header,
    timed,
)

import neuralcollapse_jax as nc  # noqa: E402


GD_TIMED_STEPS = 40_000  # GD runs up to this many steps are also timed compiled


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the plot")
    parser.add_argument("--skip-m3147", action="store_true")
    parser.add_argument("--skip-late", action="store_true")
    parser.add_argument(
        "--m3147-only", action="store_true", help="only the M3147 timings (CPU check)"
    )
    parser.add_argument(
        "--late-only", action="store_true", help="only the late-phase table and plot"
    )
    parser.add_argument(
        "--late-defaults",
        action="store_true",
        help="the late phase with the default call (solver and rtol) instead of "
        "solver='sliding' at rtol 1e-5",
    )
    parser.add_argument(
        "--m3147-t1",
        type=float,
        default=None,
        help="M3147 horizon (default: found by a first solve, 0.0562)",
    )
    parser.add_argument(
        "--gd-down-to",
        type=float,
        default=None,
        help="smallest GD learning rate of the reference (default 1e-6; at least three)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    os.makedirs(args.out, exist_ok=True)
    print(f"# bench_sliding{' --quick' if quick else ''}")
    print(f"device: {device_line()}; float64")
    if args.m3147_only:
        _m3147(args, quick)
        return 0

    per_class = 20 if quick else 100
    data, model = mnist_problem(per_class)
    T = 0.1 if quick else 1.0
    name = f"M{data.num_samples}"
    print(
        f"\n## {name}: n = {data.num_samples}, h = {WIDTH}, eps = {EPS}, T = {T}, "
        f"initial loss {float(nc.loss(model, data)):.4g}"
    )
    if args.late_only:
        _late_phase(args, quick, model, data, name)
        return 0

    # 1. reference: GD with shrinking steps, Richardson-extrapolated; the larger steps
    # are there for the wall-time comparison at the flow solvers' accuracy.
    lrs = (
        [4e-5, 2e-5, 1e-5]
        if quick
        else [4e-4, 2e-4, 1e-4, 5e-5, 2.5e-5, 1.6e-5, 8e-6, 4e-6, 2e-6, 1e-6]
    )
    if not quick and args.gd_down_to:
        lrs = [lr for lr in lrs if lr >= args.gd_down_to * (1 - 1e-9)]
    gd = {}
    for lr in lrs:
        steps = int(round(T / lr))
        if steps <= GD_TIMED_STEPS:
            # the runs the flow's wall time is compared with: timed compiled, like the
            # flow runs (a second call; each learning rate compiles once, about 1 s)
            final, first, second = timed(lambda: descent(model, data, lr, steps))
        else:
            final, first, second = timed(
                lambda: descent(model, data, lr, steps), repeat=False
            )
        gd[lr] = (flat(final), first, steps, second)
    # Richardson extrapolation of the three smallest steps, for an error of the form
    # a lr + b lr^2: (8 theta(l/4) - 6 theta(l/2) + theta(l)) / 3.
    l4, l2, l1 = (gd[lr][0] for lr in lrs[-1:-4:-1])
    ref = (8 * l4 - 6 * l2 + l1) / 3
    ref1 = 2 * l4 - l2  # first-order Richardson, for comparison
    norm = np.linalg.norm(ref)
    err = lambda x: float(np.linalg.norm(x - ref) / norm)  # noqa: E731

    # 2. second method: the sliding solver (Tsit5 tableau) at a tight tolerance
    tight = 1e-6 if quick else 1e-7
    tight_solver = nc.SlidingReLU(inner=diffrax.Tsit5())
    tight_tr, tight_wall, _ = timed(
        lambda: flow(model, data, T, tight, tight_solver, 1_000_000), repeat=False
    )
    xs = flat(tight_tr.final)
    ns = np.linalg.norm(xs)
    dist = lambda x: float(np.linalg.norm(x - xs) / ns)  # noqa: E731
    print(
        "\n### reference: gradient descent (Optax, relu'(0) = 0), Richardson "
        "(8 theta(l/4) - 6 theta(l/2) + theta(l)) / 3 over the three smallest steps; "
        f"second method: sliding (Tsit5 tableau) at rtol {tight:g} "
        f"({int(tight_tr.stats['grad_evals'])} grad evals, {tight_wall:.0f} s, "
        f"{int(tight_tr.stats['sliding_max_per_neuron'])} pairs at most on one neuron, "
        f"overflow {int(tight_tr.stats['sliding_overflow'])})"
    )
    table_header(
        [
            "lr",
            "steps = grad evals",
            "wall s (first call, with compile)",
            "wall s (compiled)",
            "rel. error at T",
            "rel. change from previous lr",
            f"distance to sliding rtol {tight:g}",
        ]
    )
    prev = None
    for lr in lrs:
        x, wall, steps, compiled = gd[lr]
        change = "" if prev is None else f"{np.linalg.norm(x - prev) / norm:.2e}"
        comp = "" if compiled is None else f"{compiled:.2f}"
        print(
            f"| {lr:g} | {steps} | {wall:.1f} | {comp} | {err(x):.2e} | {change} | "
            f"{dist(x):.2e} |"
        )
        prev = x
    print(
        f"(first- vs second-order extrapolation differ by {err(ref1):.1e}: the "
        "reference is no more accurate than that; if GD were in its first-order "
        "regime the changes would halve with lr. Richardson reference to sliding "
        f"rtol {tight:g}: {dist(ref):.2e})"
    )

    # 3. plain Tsit5 against the sliding solver
    rows = []
    default = "sliding"  # the Bosh3 tableau at these tolerances (rtol >= 1e-6)
    tsit5 = nc.SlidingReLU(inner=diffrax.Tsit5())
    runs = [("plain Diffrax Tsit5", diffrax.Tsit5(), 1e-5, False)]
    for rtol in [1e-4, 5e-5, 2e-5, 1e-5, 1e-6]:
        runs.append(("sliding (default, Bosh3)", default, rtol, False))
    for rtol in [1e-4, 5e-5, 1e-5]:
        runs.append(("sliding (default), row_space", default, rtol, True))
    runs.append(("sliding (Tsit5)", tsit5, 1e-5, False))
    if quick:
        runs = runs[:2] + runs[4:5] + runs[6:7]
    for label, solver, rtol, rs in runs:
        traj, first, second = timed(
            lambda: flow(model, data, T, rtol, solver, row_space=rs)
        )
        st = traj.stats_summary()
        x = flat(traj.final)
        rows.append((label, rtol, st, first, second, err(x), dist(x)))
    base = rows[0]
    print(f"\n### {name}: flow solvers to T = {T} (atol = rtol x eps)")
    table_header(
        [
            "solver",
            "rtol",
            "grad evals",
            "steps (rejected)",
            "wall s (compiled)",
            "first call s",
            "rel. error at T (GD ref.)",
            f"distance to sliding rtol {tight:g}",
            "evals: Tsit5 / this",
            "at least as accurate as Tsit5",
            "sliding pairs (max)",
            "most pairs of one neuron",
        ]
    )
    for label, rtol, st, first, wall, e, dd in rows:
        pairs = f"{st.get('sliding_pairs', '-')} ({st.get('sliding_max_pairs', '-')})"
        print(
            f"| {label} | {rtol:g} | {st['grad_evals']} | {st['num_steps']} "
            f"({st['num_rejected_steps']}) | {wall:.2f} | {first:.1f} | {e:.2e} | "
            f"{dd:.2e} | {base[2]['grad_evals'] / st['grad_evals']:.1f}x | "
            f"{'yes' if dd <= base[6] else 'no'} | {pairs} | "
            f"{st.get('sliding_max_per_neuron', '-')} |"
        )

    # 4. GD (Optax) at the flow solvers' accuracy: the fastest GD run that is at least
    # as close to the tight sliding solution (the reference that resolves this level)
    print(
        f"\n### {name}: wall time of gradient descent at the same accuracy (distance to "
        f"sliding rtol {tight:g}; both walls compiled, compilation excluded on both "
        f"sides; best of three calls for calls under {SHORT:g} s on both sides)"
    )
    table_header(
        [
            "flow run",
            "its distance",
            "its wall s",
            "fastest GD at least as accurate",
            "GD wall s",
            "GD / flow",
        ]
    )
    for label, rtol, st, _, wall, e, dd in rows:
        better = [lr for lr in lrs if dist(gd[lr][0]) <= dd]
        if better:
            lr = max(better)
            gx, gfirst, _, gwall = gd[lr]
            mark = ""
            if gwall is None:  # not timed twice: its first call, compilation included
                gwall, mark = gfirst, " (first call)"
            print(
                f"| {label}, rtol {rtol:g} | {dd:.2e} | {wall:.2f} | lr {lr:g} "
                f"({dist(gx):.2e}) | {gwall:.2f}{mark} | {gwall / wall:.1f}x |"
            )
        else:
            print(f"| {label}, rtol {rtol:g} | {dd:.2e} | {wall:.1f} | none tried | | |")

    # 5. M3147
    if not args.skip_m3147:
        _m3147(args, quick)

    # 6. late phase
    if not args.skip_late:
        _late_phase(args, quick, model, data, name)
    return 0


def _late_phase(args, quick: bool, model, data, name: str) -> None:
    """Gradient evaluations of the sliding solver against the horizon T (and a plot)."""
    horizons = [1.0, 10.0, 100.0] if quick else [1.0, 10.0, 100.0, 1e3, 1e4]
    # one run per horizon (Diffrax counts the steps of a whole solve)
    what = (
        "the default call (solver and rtol), saved at 0 and T"
        if args.late_defaults
        else "sliding (Bosh3, crossings land) rtol 1e-5"
    )
    print(f"\n### {name}: late phase, {what}: cost against the horizon")
    table_header(
        ["T", "loss at T", "grad evals", "steps (rejected)", "evals / previous", "wall s"]
    )
    evals = []
    prev = None
    for T_h in horizons:
        start = time.perf_counter()
        if args.late_defaults:
            tr = nc.gradient_flow(
                model,
                data,
                t1=T_h,
                saveat=np.array([0.0, T_h]),
                max_steps=400_000,
                save_params=False,
            )
        else:
            tr = flow(model, data, T_h, 1e-5, "sliding", 400_000)
        wall = time.perf_counter() - start
        st = tr.stats_summary()
        evals.append(st["grad_evals"])
        ratio = "" if prev is None else f"{st['grad_evals'] / prev:.2f}"
        print(
            f"| {T_h:g} | {float(tr.loss[-1]):.4g} | {st['grad_evals']} | "
            f"{st['num_steps']} ({st['num_rejected_steps']}) | {ratio} | {wall:.1f} |",
            flush=True,
        )
        prev = st["grad_evals"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        label = "default call" if args.late_defaults else "sliding, rtol 1e-5"
        ax.loglog(horizons, evals, "o-", label=label)
        ax.loglog(
            horizons,
            evals[0] * np.asarray(horizons),
            "k--",
            lw=0.8,
            label="linear growth",
        )
        ax.set_xlabel("horizon T")
        ax.set_ylabel("gradient evaluations")
        ax.set_title(f"{name}: cost of the late phase")
        ax.legend()
        fig.tight_layout()
        stem = "sliding_late_phase" + ("_defaults" if args.late_defaults else "")
        path = os.path.join(args.out, f"{stem}{'_quick' if quick else ''}.png")
        fig.savefig(path, dpi=120)
        print(f"plot: {os.path.basename(path)} (in the --out folder)")
    except ImportError:
        print("matplotlib not installed: no plot")


def _m3147(args, quick: bool) -> None:
    """M3147: wall time of the sliding solver to 1% of the initial loss."""
    big, bmodel = mnist_problem(200 if quick else None)
    l0 = float(nc.loss(bmodel, big))
    # the horizon: the first of 121 log-spaced save times in [1e-3, 1] where the
    # loss is under 1% of its initial value (found by the same solver; 0.0562)
    if args.m3147_t1 is not None:
        T_big = args.m3147_t1
    else:
        ts = np.geomspace(1e-3, 1.0, 121)
        traj = nc.gradient_flow(
            bmodel,
            big,
            t1=1.0,
            saveat=ts,
            rtol=1e-5,
            atol=1e-5 * EPS,
            solver="sliding",
            save_params=False,
            max_steps=100_000,
        )
        loss = np.asarray(traj.loss)
        below = np.nonzero(loss < 0.01 * l0)[0]
        T_big = float(ts[below[0]]) if below.size else 1.0
    print(
        f"\n### M{big.num_samples}: sliding rtol 1e-5 to T = {T_big:.3g} "
        f"(initial loss {l0:.4g})"
    )
    table_header(
        [
            "tableau",
            "wall s (compiled)",
            "first call s (with compile)",
            "grad evals",
            "steps (rejected)",
            "loss at T / initial",
            "sliding pairs (max)",
            "most pairs of one neuron",
            "overflow",
            "status",
        ]
    )
    tsit5 = nc.SlidingReLU(inner=diffrax.Tsit5())
    for label, solver, rs in [
        ("Bosh3 (default)", "sliding", False),
        ("Tsit5", tsit5, False),
    ]:
        tb, first, second = timed(
            lambda: flow(bmodel, big, T_big, 1e-5, solver, 100_000, row_space=rs)
        )
        st = tb.stats_summary()
        print(
            f"| {label} | {second:.1f} | {first:.1f} | {st['grad_evals']} | "
            f"{st['num_steps']} ({st['num_rejected_steps']}) | "
            f"{float(tb.loss[-1]) / l0:.4f} | {st['sliding_pairs']} "
            f"({st['sliding_max_pairs']}) | {st['sliding_max_per_neuron']} | "
            f"{st['sliding_overflow']} | "
            f"{tb.message()} |",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())
