"""Sweep throughput against a Python loop of `gradient_flow` calls and a naive `vmap`.

Reference sweep: `datasets.block_orthogonal()` (K = 3, 20 points per class, D = 30),
h = 50, "lecun" init (W std eps/sqrt(D), V std eps/sqrt(h)), sum cross-entropy,
T = 2000, Tsit5 with rtol 1e-6 and atol 1e-6 * eps, 100 log-spaced saves of the loss,
float64; 16 init scales in [1e-6, 1e-2] x 4 seeds = 64 runs.

    python benchmarks/bench_sweep.py            # CPU: loop vs naive vmap vs sweep
    python benchmarks/bench_sweep.py --quick    # a short smoke run
    python benchmarks/bench_sweep.py --gpu      # accelerator: runs/s against B
    python benchmarks/bench_sweep.py --memory   # compiled memory against B
    python benchmarks/bench_sweep.py --vmapped --sizes 8 64 --dtypes float64
                                                # jit(vmap) of the default call

Every table prints the device, the figures and the ratio to the baselines measured in
the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import device_line, table_header


def _setup(dtype: str):
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    return jax


def problem(num_scales: int, num_seeds: int, t1: float, dtype: str, order: str = "grid"):
    """The reference problem's data, and the (scale, seed) of every run."""
    import jax
    import numpy as np

    import neuralcollapse_jax as nc

    data = nc.datasets.block_orthogonal(jax.random.key(0), dtype=dtype)
    scales = np.geomspace(1e-6, 1e-2, num_scales)
    runs = [(float(s), int(seed)) for s in scales for seed in range(num_seeds)]
    if order == "shuffled":
        rng = np.random.default_rng(0)
        runs = [runs[k] for k in rng.permutation(len(runs))]
    return data, runs


def config(num_scales, num_seeds, t1, dtype, rtol, solver="tsit5", **execution):
    """The sweep's configuration. `solver="default"`: the library's default solver
    and tolerances (`rtol` unused); `"tsit5"`: the reference sweep's."""
    flow = {"t1": t1, "num_saves": 100}
    if solver != "default":
        flow.update(rtol=rtol, atol_per_scale=rtol, solver=solver)
    return {
        "name": "bench",
        "data": {"generator": "block_orthogonal"},
        "model": {"width": 50, "init": "lecun"},
        "flow": flow,
        "grid": {
            "scale": {"geomspace": [1e-6, 1e-2, num_scales]},
            "seed": list(range(num_seeds)),
        },
        "record": [],
        "dtype": dtype,
        "execution": execution,
    }


def single_run(data, scale, seed, t1, rtol, dtype):
    import jax

    import neuralcollapse_jax as nc

    model = nc.TwoLayerReLU.init(
        jax.random.key(seed), data.dim, 50, 3, scale, init="lecun", dtype=dtype
    )
    return nc.gradient_flow(
        model,
        data,
        t1=t1,
        saveat=nc.log_times(t1, 100, t_min=t1 * 1e-4),
        rtol=rtol,
        atol=rtol * scale,
        solver="tsit5",  # the library's (UnrolledERK), as the sweep's "tsit5"
        save_params=False,
    )


def naive_vmap_fn(data, t1, rtol, dtype):
    """`jit(vmap(gradient_flow))` over (scale, seed), all runs at once. With `rtol`:
    Diffrax's own `Tsit5` at `rtol`, `atol = rtol * scale` (the baseline of the
    measurements); `rtol=None`: every default (solver and tolerances), the batched
    call that a user writes."""
    import diffrax
    import jax
    import jax.numpy as jnp

    import neuralcollapse_jax as nc

    ts = jnp.asarray(nc.log_times(t1, 100, t_min=t1 * 1e-4), dtype=dtype)

    def one(scale, seed):
        model = nc.TwoLayerReLU.init(
            jax.random.key(seed), data.dim, 50, 3, scale, init="lecun", dtype=dtype
        )
        tolerances = (
            {}
            if rtol is None
            else dict(rtol=rtol, atol=rtol * scale, solver=diffrax.Tsit5())
        )
        traj = nc.gradient_flow(
            model,
            data,
            t1=jnp.asarray(t1, dtype),
            saveat=ts,
            save_params=False,
            **tolerances,
        )
        return traj.loss, traj.stats["num_steps"], traj.status

    return jax.jit(jax.vmap(one))


def run_arrays(runs, dtype=None):
    """The scales and seeds of `runs` as arrays (the arguments of `naive_vmap_fn`)."""
    import jax.numpy as jnp

    return jnp.asarray([r[0] for r in runs], dtype=dtype), jnp.asarray([r[1] for r in runs])


def flops_per_step(n=60, D=30, h=50, K=3, evals=6) -> float:
    """Arithmetic of one Tsit5 step of the reference problem.

    One gradient: forward `X W` (2nDh), `phi V^T` (2nhK); backward `dV = R^T phi`
    (2nKh), `R V` (2nKh), `dW = X^T (.)` (2nDh): `4nDh + 6nhK` flops (elementwise work
    is lower order). Tsit5 (FSAL) evaluates 6 gradients per step; its stage
    combinations add about `2 * 6 * 6 * (D + K) h` flops.
    """
    grad = 4 * n * D * h + 6 * n * h * K
    stages = 2 * 6 * 6 * (D + K) * h
    return evals * grad + stages


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def timed_cpu(fn):
    """Wall time, CPU time of this process (all threads), and the result."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def bench_cpu(args) -> None:
    jax = _setup("float64")
    import numpy as np

    import neuralcollapse_jax as nc

    S, R, t1 = (4, 2, 200.0) if args.quick else (16, 4, 2000.0)
    rtol, dtype = 1e-6, "float64"
    data, runs = problem(S, R, t1, dtype)
    print(f"device: {device_line()}")
    print(
        f"reference sweep: {S} scales x {R} seeds = {len(runs)} runs, T = {t1}, "
        f"rtol {rtol}, {dtype}"
    )

    # 1. Sequential Python loop of gradient_flow calls (compiled once, then timed).
    jax.block_until_ready(single_run(data, *runs[0], t1, rtol, dtype).loss)

    def loop():
        out = []
        for scale, seed in runs:
            traj = single_run(data, scale, seed, t1, rtol, dtype)
            out.append((np.asarray(traj.loss), int(traj.stats["num_steps"])))
        return out

    # 2. Naive vmap over all runs.
    f = naive_vmap_fn(data, t1, rtol, dtype)
    sc, se = run_arrays(runs)
    jax.block_until_ready(f(sc, se))

    def naive():
        return jax.block_until_ready(f(sc, se))

    # 3. The sweep (warm: compiled by a first call).
    cfg = config(
        S,
        R,
        t1,
        dtype,
        rtol,
        progress=False,
        **({"workers": args.workers} if args.workers else {}),
    )
    t_first, _ = timed(lambda: nc.sweep(cfg, progress=False))

    def swept():
        return nc.sweep(cfg, progress=False)

    rows = []
    # Interleave the three (the machine may be shared): best of `repeat` each.
    t_loop = t_naive = t_sweep = float("inf")
    c_loop = c_naive = c_sweep = float("inf")
    load = []
    for _ in range(args.repeat):
        load.append(os.getloadavg()[0])
        t, c, loop_out = timed_cpu(loop)
        t_loop, c_loop = min(t_loop, t), min(c_loop, c)
        t, c, naive_out = timed_cpu(naive)
        t_naive, c_naive = min(t_naive, t), min(c_naive, c)
        t, c, ds = timed_cpu(swept)
        t_sweep, c_sweep = min(t_sweep, t), min(c_sweep, c)
    load.append(os.getloadavg()[0])
    steps = np.array([s for _, s in loop_out])
    # The sweep's numbers are the loop's numbers (runs in the same order: scale, seed).
    loss_loop = np.stack([loss for loss, _ in loop_out]).reshape(S, R, -1)
    same = np.array_equal(ds["loss"].values, loss_loop)
    n = len(runs)
    rows.append(("loop of gradient_flow", t_loop, n / t_loop, 1.0, c_loop / n))
    rows.append(
        ("naive jit(vmap) (all runs)", t_naive, n / t_naive, t_loop / t_naive, c_naive / n)
    )
    ex = nc._sweep._api.resolve_execution(nc.SweepConfig(cfg), n)
    rows.append(
        (
            f"sweep ({ex.workers} workers, chunk {ex.chunk_size}, batch {ex.batch_size})",
            t_sweep,
            n / t_sweep,
            t_loop / t_sweep,
            c_sweep / n,
        )
    )
    print(
        f"steps per run: mean {steps.mean():.0f}, max {steps.max()} "
        f"(naive vmap pays max/mean = {steps.max() / steps.mean():.2f})"
    )
    print(f"sweep first call (with compilation): {t_first:.2f} s; loop/naive timed warm")
    print(f"sweep == loop, element by element: {same}")
    print(
        f"1-min load average during the timings: "
        f"{', '.join(f'{x:.1f}' for x in load)} (a shared machine distorts wall times)"
    )
    print()
    table_header(["method", "wall (s)", "runs/s", "x loop", "CPU s/run"])
    for name, t, rate, ratio, cpu in rows:
        print(f"| {name} | {t:.2f} | {rate:.1f} | {ratio:.2f} | {cpu:.3f} |")


def bench_gpu(args) -> None:
    """Runs/s of the sweep against the batch size B, for each solver and dtype: one
    chunk of B runs, vmapped, timed warm after a first call that compiles it. The
    naive `jit(vmap)` of Diffrax's `Tsit5` at the same B is the baseline."""
    import numpy as np

    import neuralcollapse_jax as nc

    sizes = [64, 1024, 4096] if args.quick else [64, 256, 1024, 4096, 16384]
    sizes = args.sizes or sizes
    peak = {"float64": args.peak_fp64, "float32": args.peak_fp32}
    rows = []
    naive_rates = {}
    for dtype in args.dtypes:
        jax = _setup(dtype)
        rtol = 1e-6 if dtype == "float64" else 1e-4
        t1 = 2000.0
        print(f"device: {device_line()}", flush=True)
        for solver in args.solvers:
            for B in sizes:
                seeds = max(1, B // 64)
                S = B // seeds
                cfg = config(
                    S,
                    seeds,
                    t1,
                    dtype,
                    rtol,
                    solver=solver,
                    progress=False,
                    chunk_size=min(B, args.chunk),
                    batch_size=min(B, args.chunk),
                )
                t_first, _ = timed(lambda: nc.sweep(cfg, progress=False))
                print(
                    f"  {solver} {dtype} B = {B}: first call (compiles) {t_first:.1f} s",
                    flush=True,
                )
                t, ds = timed(lambda: nc.sweep(cfg, progress=False))
                steps = ds["num_steps"].values
                ok = int(np.sum(ds["status"].values == 0))
                floor = B * steps.mean() * flops_per_step() / (peak[dtype] * 1e12)
                if B in args.naive_at and (dtype, B) not in naive_rates:
                    data, runs = problem(S, seeds, t1, dtype, order="shuffled")
                    f = naive_vmap_fn(data, t1, rtol, dtype)
                    sc, se = run_arrays(runs, dtype)
                    jax.block_until_ready(f(sc, se))
                    tn, _ = timed(lambda: jax.block_until_ready(f(sc, se)))
                    naive_rates[dtype, B] = B / tn
                naive_rate = naive_rates.get((dtype, B), float("nan"))
                mem = jax.devices()[0].memory_stats() or {}
                rows.append(
                    (
                        solver,
                        dtype,
                        B,
                        B / t,
                        naive_rate,
                        (B / t) / naive_rate,
                        B / floor,
                        steps.mean(),
                        steps.max(),
                        ok,
                        t_first - t,
                        mem.get("peak_bytes_in_use", float("nan")) / 2**20,
                    )
                )
                print(
                    f"  {solver} {dtype} B = {B}: {B / t:.3g} runs/s ({t:.2f} s) "
                    f"(compile {t_first - t:.1f} s, max steps {steps.max()}, "
                    f"{ok}/{B} succeeded)",
                    flush=True,
                )
    print()
    print(
        f"floor: mean steps x {flops_per_step() / 1e6:.2f} MFLOP/step at "
        f"{args.peak_fp64} TFLOP/s (fp64), {args.peak_fp32} TFLOP/s (fp32); "
        "solver 'default': the library's defaults (solver and rtol); 'tsit5': "
        "rtol 1e-6 (float64) or 1e-4 (float32), atol rtol x scale"
    )
    table_header(
        [
            "solver",
            "dtype",
            "B",
            "sweep runs/s",
            "naive vmap (Tsit5) runs/s",
            "x naive",
            "floor runs/s",
            "mean steps",
            "max steps",
            "succeeded",
            "compile (s)",
            "peak MiB",
        ]
    )
    for r in rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3g} | {r[4]:.3g} | {r[5]:.3g} | "
            f"{r[6]:.0f} | {r[7]:.0f} | {r[8]} | {r[9]} | {r[10]:.1f} | {r[11]:.0f} |"
        )


def bench_vmapped(args) -> None:
    """The default call vmapped over B runs of the reference problem: compilation and
    run timed apart (AOT), against the naive `jit(vmap)` of Diffrax's `Tsit5` at rtol
    1e-6 on the same runs."""
    import numpy as np

    rows = []
    for dtype in args.dtypes:
        jax = _setup(dtype)
        t1 = 2000.0
        print(f"device: {device_line()}", flush=True)
        for B in args.sizes or [8]:
            seeds = max(1, B // 64)
            data, runs = problem(B // seeds, seeds, t1, dtype, order="shuffled")
            sc, se = run_arrays(runs, dtype)
            row = [dtype, B]
            for rtol in (None, 1e-6):  # the default call, then the baseline
                t = time.perf_counter()
                compiled = naive_vmap_fn(data, t1, rtol, dtype).lower(sc, se).compile()
                t_compile = time.perf_counter() - t
                t = time.perf_counter()
                _, steps, status = jax.block_until_ready(compiled(sc, se))
                t_run = time.perf_counter() - t
                ok = int(np.sum(np.asarray(status) == 0))
                row += [t_compile, t_run, B / t_run, int(np.max(steps)), ok]
                print(
                    f"  {dtype} B = {B}: compile {t_compile:.1f} s, run {t_run:.2f} s, "
                    f"max steps {int(np.max(steps))}, {ok}/{B} succeeded",
                    flush=True,
                )
            rows.append(row)
    print()
    table_header(
        [
            "dtype",
            "B",
            "default call: compile s",
            "run s",
            "runs/s",
            "max steps",
            "succeeded",
            "Diffrax Tsit5 1e-6: compile s",
            "run s",
            "runs/s",
            "max steps",
            "succeeded",
            "runs/s: default / Tsit5",
        ]
    )
    for r in rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.3g} | {r[5]} | {r[6]} | "
            f"{r[7]:.1f} | {r[8]:.2f} | {r[9]:.3g} | {r[10]} | {r[11]} | "
            f"{r[4] / r[9]:.3g} |"
        )


def bench_memory(args) -> None:
    """Compiled memory of one chunk against its size B (no run: `memory_analysis`)."""
    _setup("float64")
    import numpy as np

    import neuralcollapse_jax as nc
    from neuralcollapse_jax._sweep import _plan, _solve

    print(f"device: {device_line()}")
    table_header(
        [
            "B",
            "batch",
            "temp MiB",
            "output MiB",
            "temp / B (KiB)",
            "recorded / run (KiB)",
            "params x max_steps / run (MiB)",
        ]
    )
    for B in [16, 64] if args.quick else [16, 64, 256, 1024]:
        for batch in (1, B):
            cfg = nc.SweepConfig(
                config(B, 1, 2000.0, "float64", 1e-6, chunk_size=B, batch_size=batch)
            )
            plan = _plan.make_plan(cfg)
            block = plan.blocks[0]
            params, x, y = _solve.chunk_inputs(plan, block, block.runs, np.float64)
            spec = dict(_solve.block_spec(block, "float64"), batched_atol=batch > 1)
            args_ = (_solve.solve_inputs(spec, params, x, y, True), x, y)
            fn = _solve.chunk_function(spec, {}, batch, True)
            ma = fn.lower(*args_).compile().memory_analysis()
            temp = ma.temp_size_in_bytes
            outb = ma.output_size_in_bytes
            recorded = 101 * 8 + 8 * 4
            params_steps = (30 * 50 + 3 * 50) * 8 * 100_000
            print(
                f"| {B} | {batch} | {temp / 2**20:.2f} | {outb / 2**20:.3f} | "
                f"{temp / B / 1024:.1f} | {recorded / 1024:.2f} | "
                f"{params_steps / 2**20:.0f} |"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--gpu", action="store_true", help="runs/s against B on an accelerator")
    p.add_argument("--memory", action="store_true", help="compiled memory against B")
    p.add_argument(
        "--vmapped",
        action="store_true",
        help="jit(vmap) of the default call against B (compile and run apart)",
    )
    p.add_argument("--repeat", type=int, default=1, help="CPU: timed repetitions (best)")
    p.add_argument("--workers", type=int, help="CPU: sweep worker threads (default: cores)")
    p.add_argument("--chunk", type=int, default=4096, help="GPU: runs per chunk")
    p.add_argument("--sizes", type=int, nargs="*", help="GPU: batch sizes B to time")
    p.add_argument(
        "--dtypes", nargs="*", default=["float32", "float64"], help="GPU: dtypes to time"
    )
    p.add_argument(
        "--solvers",
        nargs="*",
        default=["tsit5"],
        help="GPU: 'tsit5' (the reference sweep's solver and rtol) and/or 'default' (the "
        "library's defaults: far slower batched, see docs/benchmarks.md)",
    )
    p.add_argument(
        "--naive-at",
        type=int,
        nargs="*",
        default=[4096],
        help="GPU: batch sizes at which to time the naive vmap too",
    )
    p.add_argument(
        "--peak-fp64",
        type=float,
        default=67.0,
        help="TFLOP/s for the floor (H100 SXM: 67 fp64 tensor, 34 vector)",
    )
    p.add_argument(
        "--peak-fp32",
        type=float,
        default=67.0,
        help="TFLOP/s for the floor (H100 SXM: 67 fp32 vector)",
    )
    args = p.parse_args()
    if args.vmapped:
        bench_vmapped(args)
    elif args.gpu:
        bench_gpu(args)
    elif args.memory:
        bench_memory(args)
    else:
        bench_cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
