"""The default call with the data as an argument: what a stored transpose saves.

A user calls `gradient_flow(model, data, t1=...)`: the data reach the compiled solve
as an argument. XLA on CPU runs a product `X^T G` (`X` the `n x D` data) faster with
the transpose stored than with `X` stored by rows when `n` is large, and slower when
it is small; without help it transposes inside every such product of every step.
Data closed over by an outer `jax.jit` are constants, laid out at compile time. Since
2026-12-07 the solve's `args` hold the transpose, formed once before the loop, from
`_flow.TRANSPOSE_FROM` samples on (`WithTranspose`).

For each problem, in one run: the default call with the data as an argument; the
same with the transpose stored and with it not stored (`_flow.TRANSPOSE_ONCE`
forced); and the default call with the data closed over by an outer `jax.jit`. The
first call (compilation included) and the best of three compiled calls, the steps
and gradient evaluations (which rounding can change), and the ratio of each
compiled call to the call without the stored transpose (the code before). Then the
product alone, `X^T G` with 50 columns, `X` an argument against its transpose
stored, over a range of shapes (those of the problems among them).

Problems: MNIST-60 to `T = 0.02` and M300 to `T = 0.05` (both in the row space of
their data, as the default call integrates them: `n x rank`) and M3147 to `T = 1e-4`
(in the full space), the problems of `bench_events.py` and `profile_step.py`,
float64.

Usage: `python benchmarks/bench_args.py [--problems m60,m300,m3147]`.
"""

from __future__ import annotations

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from common import device_line, mnist_problem, table_header, timed  # noqa: E402

import neuralcollapse_jax as nc  # noqa: E402
from neuralcollapse_jax import _flow  # noqa: E402


PROBLEMS = {"m60": (20, 0.02), "m300": (100, 0.05), "m3147": (None, 1e-4)}


def variants(data, model, T):
    def argument(m):
        return nc.gradient_flow(m, data, t1=T, saveat=[T])

    closed = jax.jit(lambda m: nc.gradient_flow(m, data, t1=T, saveat=[T]))
    # (Each variant traced afresh: `TRANSPOSE_ONCE` is read when `_solve` is traced.)
    yield "data an argument, the default", None, lambda: argument(model)
    yield "data an argument, transpose stored", True, lambda: argument(model)
    yield "data an argument, transposed in each product", False, lambda: argument(model)
    yield "data closed over by an outer `jax.jit`", None, lambda: closed(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="m60,m300,m3147")
    args = parser.parse_args()
    print("# bench_args")
    print("device: " + device_line())
    for name in args.problems.split(","):
        per_class, T = PROBLEMS[name]
        data, model = mnist_problem(per_class)
        print(
            f"\n## {name.upper()} to T = {T}: n = {data.x.shape[0]}, D = {data.dim}, "
            f"h = {model.W.shape[1]}\n"
        )
        rows = []
        for label, once, fn in variants(data, model, T):
            _flow.TRANSPOSE_ONCE = once
            jax.clear_caches()
            tr, first, best = timed(fn)
            s = tr.stats_summary()
            rows.append(
                (label, first, best, int(s["num_steps"]), int(s["grad_evals"]), tr.loss[-1])
            )
        _flow.TRANSPOSE_ONCE = None
        base = rows[2][2]
        table_header(
            [
                "call",
                "first call s",
                "compiled s",
                "vs transposed in each product",
                "steps",
                "evals",
                "final loss",
            ]
        )
        for label, first, best, steps, evals, loss in rows:
            print(
                f"| {label} | {first:.1f} | {best:.3f} | {best / base:.2f}x | {steps} "
                f"| {evals} | {float(loss):.15g} |"
            )
    print("\n## The product alone: X^T G, G with 50 columns\n")
    table_header(["n", "D", "X an argument", "X^T stored", "ratio"])
    for n, D in ((60, 59), (300, 299), (400, 399), (500, 499), (1000, 784), (3147, 784)):
        x = jax.random.normal(jax.random.key(2), (n, D))
        xt = jnp.transpose(x) + 0.0
        G = jax.random.normal(jax.random.key(1), (n, 50))
        plain = jax.jit(lambda x, g: x.T @ g)
        stored = jax.jit(lambda xt, g: xt @ g)
        t_plain = timed(lambda: plain(x, G), repeats=200)[2]
        t_stored = timed(lambda: stored(xt, G), repeats=200)[2]
        print(
            f"| {n} | {D} | {t_plain * 1e6:.0f} us | {t_stored * 1e6:.0f} us "
            f"| {t_stored / t_plain:.2f}x |"
        )


if __name__ == "__main__":
    main()
