"""The cost of a derivative through the flow against one forward solve (issue target:
a reverse-mode gradient at most 3x a forward solve, memory bounded by checkpoints).

For each problem, in one run: the forward solve (`gradient_flow` at the defaults,
compiled), the reverse-mode gradient of the final loss with respect to the initial
`W` and `V` (`jax.grad` at the defaults, `ForwardOrReverse`; Diffrax's
`RecursiveCheckpointAdjoint`, the baseline it wraps; and with 64 and 8 checkpoints),
and the forward-mode derivative along one direction (`jax.jvp` at the defaults, which
pick `diffrax.ForwardMode()`, and `jax.jvp` of the jitted solve, where
`ForwardOrReverse` runs it); wall times of compiled calls (best of three under 10 s),
their ratio to the forward solve, the steps taken, and the temporary memory of each
compiled call (XLA's `memory_analysis`: what a call allocates besides its inputs and
outputs; in reverse mode mostly the checkpoints, about `checkpoints` times one solver
state, with Diffrax's default `floor(sqrt(2 max_steps))`, 447 at `max_steps` 100,000).

A table for the default solver follows with its `derivative_safety` at the default
and at 1 (the differentiated solve's steps sized as the value's): the steps of the
solve and of the differentiated solve, forward solve, reverse and forward mode. Then
two reference tables, for what the 3x target asks of a reverse mode:

- **Diffrax's own reverse mode on a plain solve**: plain Diffrax `Tsit5` on the
  regular field (`solver=diffrax.Tsit5()`, whose derivative misses every jump term)
  at `rtol 1e-5` and `1e-8`, its forward solve and its gradient with
  `RecursiveCheckpointAdjoint`, the ratio of the two;
- **the stages alone**: the same field (`nc.GradientField`) stepped with the `Tsit5`
  tableau at a fixed step in a `jax.lax.scan` (no controller, no events, no
  selects), its gradient by JAX's own scan rule (every stage's residuals stored) and
  with `jax.checkpoint` on the step (each step recomputed once in the backward pass,
  as a checkpointed solve does): the ratio a backward pass that replays only the
  stages could reach.

Problems:

- orthogonally separable, `n = 15, D = 10, h = 10, K = 3`, init 1e-2, `T = 30` (as in
  `bench_events.py`; pairs cross and slide);
- the one-neuron crossing problem of the tests (`T = 2`);
- MNIST-60 (20 test images per digit 0, 1, 2, centered, `h = 50`, init 1e-3), `T = 0.02`
  (a short horizon; not in `--quick`).

With `--compile-only`, only the time to a first result at the defaults: tracing
and lowering (JAX's transforms, in Python), XLA's compilation and the first run of
the forward solve, the gradient and the forward-mode derivative, each in a fresh
`jax.jit`.

With `--cache-dir DIR`, JAX's persistent compilation cache is kept in `DIR`: run
`--compile-only` twice, the second time in a new process, to see XLA's compilation
read from it. JAX does not cache a program with host callbacks, and Diffrax checks
the save times with Equinox's `error_if`, a host callback unless `EQX_ON_ERROR=nan`
is set (docs page *Getting started*, *Compilation*).

Usage: `python benchmarks/bench_grad.py [--quick] [--default-only | --compile-only]
[--cache-dir DIR]`.
"""

from __future__ import annotations

import argparse
import os
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import device_line, table_header, timed  # noqa: E402

import neuralcollapse_jax as nc  # noqa: E402


def ortho():
    data = nc.datasets.orthogonally_separable(jax.random.PRNGKey(0), 3, 5, 10, 0.5, 0.2)
    model = nc.TwoLayerReLU.init(jax.random.PRNGKey(1), 10, 10, 3, 1e-2)
    return "orthogonally separable (n 15, h 10)", data, model, 30.0, "cross_entropy"


def crossing():
    X = np.array([[1.0, 0.0], [np.cos(1.2), np.sin(1.2)]])
    model = nc.TwoLayerReLU(jnp.asarray([[0.6], [-0.45]]), jnp.asarray([[0.5]]))
    return (
        "one neuron, one crossing",
        nc.Dataset(X, np.array([1, 1]), 2),
        model,
        2.0,
        "exponential",
    )


def m60():
    data = nc.datasets.mnist(per_class=20)
    model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, 50, 3, 1e-3)
    return "MNIST-60 (h 50)", data, model, 0.02, "cross_entropy"


def compiled(fn, *args):
    """`(fn compiled for args, its temporary memory in MB)`: XLA's `memory_analysis`
    of the one compilation that is also timed, the buffers a call allocates besides
    its inputs and outputs (for a reverse-mode solve, mostly the stored checkpoints)."""
    c = fn.lower(*args).compile()
    return c, c.memory_analysis().temp_size_in_bytes / 1e6


def measure(name, data, model, T, loss):
    def solve(m, adjoint=None):
        return nc.gradient_flow(m, data, t1=T, saveat=[T], loss=loss, adjoint=adjoint)

    forward = jax.jit(lambda m: solve(m).loss[-1])
    grad = jax.jit(jax.grad(lambda m: solve(m).loss[-1]))
    grad_rca = jax.jit(
        jax.grad(lambda m: solve(m, diffrax.RecursiveCheckpointAdjoint()).loss[-1])
    )

    def grad_ck(k):
        return jax.jit(
            jax.grad(lambda m: solve(m, nc.ForwardOrReverse(checkpoints=k)).loss[-1])
        )

    direction = jax.tree.map(jnp.ones_like, model)
    jvp = jax.jit(lambda m: jax.jvp(lambda m: solve(m).loss[-1], (m,), (direction,)))
    jvp_of_jit = jax.jit(lambda m: jax.jvp(forward, (m,), (direction,)))
    steps = int(solve(model).stats["num_steps"])
    forward_c, mb = compiled(forward, model)  # (`forward` itself is differentiated)
    _, _, t_fwd = timed(lambda: forward_c(model))
    rows = [("forward solve", t_fwd, mb)]
    for label, fn in (
        ("reverse (grad), default (ForwardOrReverse)", grad),
        ("reverse (grad), RecursiveCheckpointAdjoint", grad_rca),
        ("reverse (grad), 64 checkpoints", grad_ck(64)),
        ("reverse (grad), 8 checkpoints", grad_ck(8)),
        ("forward mode (jvp), default (ForwardMode)", jvp),
        ("forward mode, jvp of the jitted solve (ForwardOrReverse)", jvp_of_jit),
    ):
        fn, mb = compiled(fn, model)
        _, _, t = timed(lambda fn=fn: fn(model))
        rows.append((label, t, mb))
    for label, t, mb in rows:
        print(
            f"| {name} | {T} | {steps} | {label} | {t:.3f} | {t / t_fwd:.2f}x | {mb:.2f} |"
        )


def plain(name, data, model, T, loss):
    """Diffrax's reverse mode on a plain `Tsit5` solve of the regular field."""
    for rtol, atol in ((1e-5, 1e-8), (1e-8, 1e-10)):

        def solve(m, adjoint=None, rtol=rtol, atol=atol):
            return nc.gradient_flow(
                m,
                data,
                t1=T,
                saveat=[T],
                loss=loss,
                solver=diffrax.Tsit5(),
                rtol=rtol,
                atol=atol,
                adjoint=adjoint,
            )

        forward = jax.jit(lambda m, solve=solve: solve(m).loss[-1])
        grad = jax.jit(
            jax.grad(
                lambda m, solve=solve: solve(m, diffrax.RecursiveCheckpointAdjoint()).loss[
                    -1
                ]
            )
        )
        steps = int(solve(model).stats["num_steps"])
        _, _, t_fwd = timed(lambda: forward(model))
        _, _, t_grad = timed(lambda: grad(model))
        print(
            f"| {name} | {T} | rtol {rtol:g} | {steps} | {t_fwd:.4f} | {t_grad:.4f} "
            f"| {t_grad / t_fwd:.2f}x |"
        )


def corrected(name, data, model, T, loss, safety):
    """The default solver (crossings corrected inside the steps) with
    `derivative_safety=safety`: forward solve, reverse mode (the default adjoint) and
    forward mode, against the forward solve; the steps of the solve without a
    transform and of the differentiated one (`for_derivatives`)."""
    solver = nc.SlidingReLU(
        crossings="locate", correct_crossings=True, derivative_safety=safety
    )

    def solve(m, solver=solver):
        return nc.gradient_flow(m, data, t1=T, saveat=[T], loss=loss, solver=solver)

    forward = jax.jit(lambda m: solve(m).loss[-1])
    grad = jax.jit(jax.grad(lambda m: solve(m).loss[-1]))
    direction = jax.tree.map(jnp.ones_like, model)
    jvp = jax.jit(lambda m: jax.jvp(lambda m: solve(m).loss[-1], (m,), (direction,)))
    stats = solve(model).stats
    steps, evals = int(stats["num_steps"]), int(stats["grad_evals"])
    stats_d = solve(model, solver.for_derivatives()).stats
    steps_d, evals_d = int(stats_d["num_steps"]), int(stats_d["grad_evals"])
    # (Best of 15 compiled calls: with 3, the forward solve of the orthogonally
    # separable set, 0.03 s, came out up to 1.8 times apart between two rows.)
    _, _, t_fwd = timed(lambda: forward(model), repeats=15)
    _, _, t_grad = timed(lambda: grad(model), repeats=15)
    _, _, t_jvp = timed(lambda: jvp(model), repeats=15)
    print(
        f"| {name} | {T} | {safety:g} | {steps} / {steps_d} | {evals} / {evals_d} "
        f"| {t_fwd:.3f} | {t_grad:.3f} | {t_grad / t_fwd:.2f}x | {t_jvp:.3f} "
        f"| {t_jvp / t_fwd:.2f}x |"
    )


def default_table(problems):
    print(
        "The default solver (crossings corrected inside the steps): derivative_safety "
        f"{nc.SlidingReLU().derivative_safety:g} (the default) and 1 (the "
        "differentiated solve's steps sized as the value's):"
    )
    print()
    table_header(
        [
            "problem",
            "T",
            "derivative_safety",
            "steps (solve / differentiated solve)",
            "grad evals (same)",
            "forward s",
            "reverse (grad) s",
            "reverse/forward",
            "forward mode (jvp) s",
            "jvp/forward",
        ]
    )
    for problem in problems:
        for safety in (nc.SlidingReLU().derivative_safety, 1.0):
            corrected(*problem(), safety)


def stages_alone(name, data, model, T, loss, steps=200):
    """The field stepped with the `Tsit5` tableau at a fixed step in a `lax.scan`:
    forward, gradient with stored residuals, gradient with each step recomputed."""
    tableau = diffrax.Tsit5().tableau
    field = nc.vector_field(loss)
    dt = T / steps
    rows = [np.asarray(a) for a in tableau.a_lower]
    b = np.asarray(tableau.b_sol)
    if b[-1] == 0:  # first same as last: the last row is the next step's first stage
        rows, b = rows[:-1], b[:-1]

    def combine(y, ks, coeffs):
        return jax.tree.map(
            lambda y, *k: y + dt * sum(float(c) * kk for c, kk in zip(coeffs, k)),
            y,
            *ks,
        )

    def final_loss(m, data, remat=False):
        def step(y, _):
            ks = [field(0.0, y, data)]
            for a in rows:
                ks.append(field(0.0, combine(y, ks, a), data))
            return combine(y, ks, b), None

        body = jax.checkpoint(step) if remat else step
        end, _ = jax.lax.scan(body, m, None, length=steps)
        return nc.loss(end, data, loss)

    # (The data are an argument, not a constant that XLA would fold.)
    forward = jax.jit(final_loss)
    stored = jax.jit(jax.grad(final_loss))
    remat = jax.jit(jax.grad(lambda m, d: final_loss(m, d, remat=True)))
    _, _, t_fwd = timed(lambda: forward(model, data))
    _, _, t_stored = timed(lambda: stored(model, data))
    _, _, t_remat = timed(lambda: remat(model, data))
    print(
        f"| {name} | {steps} | {t_fwd:.4f} | {t_stored / t_fwd:.2f}x "
        f"| {t_remat / t_fwd:.2f}x |"
    )


def compile_times(name, data, model, T, loss):
    """The time to a first result at the defaults: tracing and lowering
    (`jax.jit(f).lower`, JAX's Python side: the transforms), compiling (XLA) and the
    first run, for the forward solve, the reverse-mode gradient and the forward-mode
    derivative of the final loss, each in a fresh `jax.jit`; and the compiled call
    (best of three), for scale."""

    def solve(m):
        return nc.gradient_flow(m, data, t1=T, saveat=[T], loss=loss).loss[-1]

    direction = jax.tree.map(jnp.ones_like, model)
    calls = (
        ("forward solve", solve),
        ("reverse (grad)", jax.grad(solve)),
        ("forward mode (jvp)", lambda m: jax.jvp(solve, (m,), (direction,))),
    )
    for what, fn in calls:
        t = time.perf_counter()
        lowered = jax.jit(fn).lower(model)
        t_lower = time.perf_counter() - t
        t = time.perf_counter()
        call = lowered.compile()
        t_compile = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(call(model))
        t_first = time.perf_counter() - t
        _, _, t_call = timed(lambda: call(model))
        total = t_lower + t_compile + t_first
        print(
            f"| {name} | {what} | {t_lower:.1f} | {t_compile:.1f} | {t_first:.3f} "
            f"| {total:.1f} | {t_call:.4f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip MNIST-60")
    parser.add_argument(
        "--default-only",
        action="store_true",
        help="only the table of the default solver's derivative_safety",
    )
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="only the table of the time to trace, compile and first run each call",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="JAX's persistent compilation cache in DIR (with --compile-only: run "
        "twice to see a warm cache; programs with host callbacks are not cached, so "
        "set EQX_ON_ERROR=nan, docs page Getting started, Compilation)",
    )
    args = parser.parse_args()
    if args.cache_dir:
        os.makedirs(args.cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    chosen = (
        ("--quick", args.quick),
        ("--default-only", args.default_only),
        ("--compile-only", args.compile_only),
    )
    flags = [f for f, on in chosen if on]
    print("# bench_grad" + "".join(" " + f for f in flags))
    print("device: " + device_line())
    print()
    problems = [crossing, ortho] + ([] if args.quick else [m60])
    if args.default_only:
        default_table(problems)
        return
    if args.compile_only:
        cache = (
            "JAX's persistent compilation cache in --cache-dir "
            f"({len(os.listdir(args.cache_dir))} entries at the start), "
            if args.cache_dir
            else "no persistent compilation cache, "
        )
        print(
            "Time to a first result at the defaults, each call in a fresh jax.jit; "
            f"{cache}EQX_ON_ERROR={os.environ.get('EQX_ON_ERROR', '(unset)')}:"
        )
        print()
        table_header(
            [
                "problem",
                "call",
                "trace and lower s",
                "compile s",
                "first run s",
                "to first result s",
                "compiled call s",
            ]
        )
        for problem in problems:
            compile_times(*problem())
        return
    table_header(
        [
            "problem",
            "T",
            "steps",
            "what",
            "wall s (compiled)",
            "vs forward",
            "temporary memory MB (compiled)",
        ]
    )
    for problem in problems:
        measure(*problem())
    print()
    print("Diffrax's own reverse mode on a plain solve (regular field, Tsit5):")
    print()
    table_header(
        ["problem", "T", "tolerance", "steps", "forward s", "reverse s", "reverse/forward"]
    )
    for problem in problems:
        plain(*problem())
    print()
    default_table(problems)
    print()
    print("The stages alone (Tsit5 tableau, fixed step, lax.scan):")
    print()
    table_header(
        [
            "problem",
            "steps",
            "forward s",
            "gradient, residuals stored / forward",
            "gradient, each step recomputed / forward",
        ]
    )
    for problem in problems:
        stages_alone(*problem())


if __name__ == "__main__":
    main()
