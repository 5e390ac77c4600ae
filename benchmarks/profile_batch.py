"""Where the time of a batched step of the default solver goes: a profile of
`jit(vmap)` of the default call over B runs of the reference sweep problem, by line of
the source that each XLA kernel comes from.

The problem is `bench_sweep.py --vmapped`'s (`block_orthogonal`, h = 50, scales
`geomspace(1e-6, 1e-2, B)`, seeds 0..B-1), to a short horizon. The compiled call runs
once, then once more under `jax.profiler` (a Perfetto trace, parsed here). Each
kernel of the trace is matched to the instruction of the compiled program it runs
(on a GPU, the kernel of a fusion is named after it), and the instruction's metadata
names the line of Python that produced it. Kernel time is summed by that line
(a fusion counts for its root's line) and divided by the steps of the slowest run,
which is how many steps the batch takes.

Also printed: the wall time of a step, the kernel time of a step and the kernels a
step launches (on a GPU, wall time well above kernel time is time the device waits:
for the host at each `while` and `cond`, or between small kernels).

The trace keeps at most a million events: at B = 8 the default horizon (180 steps)
stays within it; for larger batches take a shorter one (B = 64: `--t1 0.01`).

Usage: `python benchmarks/profile_batch.py [--batch 8] [--t1 0.02] [--quick]`.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import device_line, kernel_times, table_header  # noqa: E402

import neuralcollapse_jax as nc  # noqa: E402


def instruction_lines(hlo: str, by_line: bool = True) -> dict[str, str]:
    """`{instruction name: "file:line (function)"}` (or `"file function"`) from the
    compiled HLO text: the innermost frame of the instruction's stack in this
    package's code (else its innermost frame). Names are also keyed with `.` and `-`
    written `_` (GPU kernels are named so); an instruction without a frame takes its
    first operand's. The text lists file names, functions, locations and stack frames
    (each with its parent, `parent_frame_id - 1`, 0 for none) before the
    computations."""
    files, funcs, locs, frames = {}, {}, {}, {}
    section = None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if line.startswith("%") or line.startswith("ENTRY"):
            break
        m = re.match(r"(\d+) (.*)", line)
        if not m or section is None:
            continue
        k, rest = int(m.group(1)), m.group(2)
        if section == "FileNames":
            files[k] = rest.strip('"')
        elif section == "FunctionNames":
            funcs[k] = rest.strip('"')
        elif section == "FileLocations":
            f = re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", rest)
            name = files.get(int(f.group(1)), "?")
            locs[k] = (name, funcs.get(int(f.group(2)), "?"), int(f.group(3)))
        elif section == "StackFrames":
            f = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", rest)
            frames[k] = (int(f.group(1)), int(f.group(2)) - 1)
    package = {f for f in files.values() if "neuralcollapse_jax/" in f.replace("\\", "/")}

    def where(frame: int) -> str:
        chain, seen = [], set()
        while frame in frames and frame not in seen:
            seen.add(frame)
            loc_id, parent = frames[frame]
            chain.append(locs.get(loc_id, ("?", "?", 0)))
            frame = parent
        # (`rare_cond`'s own lines are attributed to its caller.)
        own = [c for c in chain if c[0] in package and not c[0].endswith("_batching.py")]
        f, fn, n = (own or chain or [("?", "?", 0)])[0]
        f = f.replace("\\", "/").rsplit("/", 1)[-1]
        return f"{f}:{n} ({fn})" if by_line else f"{f} {fn}"

    # Instructions without a frame (XLA drops the metadata of the products it
    # rewrites) take their first operand's, followed back through frameless ones.
    define = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ [\w-]+\(([^)]*)\)(.*)")
    own, operands = {}, {}
    for line in hlo.splitlines():
        m = define.match(line)
        if m:
            f = re.search(r"stack_frame_id=(\d+)", m.group(3))
            if f:
                own[m.group(1)] = where(int(f.group(1)))
            operands[m.group(1)] = re.findall(r"%([\w.\-]+)", m.group(2))

    def located(name: str, depth: int = 0) -> str | None:
        if name in own or depth > 8:
            return own.get(name)
        for o in operands.get(name, ()):
            loc = located(o, depth + 1)
            if loc:
                return loc
        return None

    out = {}
    for name in operands:
        loc = located(name)
        if loc:
            out[name] = out[re.sub(r"[.\-]", "_", name)] = loc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="runs in the batch (8)")
    parser.add_argument("--t1", type=float, default=0.02, help="horizon (default 0.02)")
    parser.add_argument("--top", type=int, default=25, help="rows to show (25)")
    parser.add_argument(
        "--quick", action="store_true", help="B = 4 to T = 0.003 (half a minute)"
    )
    args = parser.parse_args()
    B, T = (4, 0.003) if args.quick else (args.batch, args.t1)
    data = nc.datasets.block_orthogonal(jax.random.key(0))
    ts = jnp.asarray([T])

    def one(scale, seed):
        model = nc.TwoLayerReLU.init(
            jax.random.key(seed), data.dim, 50, 3, scale, init="lecun"
        )
        traj = nc.gradient_flow(model, data, t1=T, saveat=ts, save_params=False)
        return traj.loss, traj.stats["num_steps"]

    scales = jnp.asarray(np.geomspace(1e-6, 1e-2, B))
    seeds = jnp.arange(B)
    t = time.perf_counter()
    solve = jax.jit(jax.vmap(one)).lower(scales, seeds).compile()
    compile_s = time.perf_counter() - t
    _, steps = jax.block_until_ready(solve(scales, seeds))
    t = time.perf_counter()
    jax.block_until_ready(solve(scales, seeds))
    wall = time.perf_counter() - t
    n_steps = int(np.max(np.asarray(steps)))
    print(f"compiled in {compile_s:.1f} s; {n_steps} steps in {wall:.2f} s", flush=True)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        jax.block_until_ready(solve(scales, seeds))
        jax.profiler.stop_trace()
        kernels, on_gpu = kernel_times(trace_dir, "use a shorter --t1 or a smaller --batch")
    total_us = sum(v[0] for v in kernels.values())
    total_calls = sum(v[1] for v in kernels.values())
    print("# profile_batch")
    print("device: " + device_line())
    print(
        f"\n## jit(vmap) of the default call, B = {B}, T = {T}: {n_steps} steps (slowest "
        f"run), compile {compile_s:.1f} s, run {wall:.2f} s "
        f"({1e3 * wall / n_steps:.2f} ms per step); {'GPU' if on_gpu else 'host'} "
        f"kernels {total_us / 1e3 / n_steps:.2f} ms per step, "
        f"{total_calls / n_steps:.0f} kernels per step"
    )
    hlo = solve.as_text()
    for by_line in (False, True):
        report(kernels, instruction_lines(hlo, by_line), n_steps, args.top, by_line)


def report(kernels, lines, n_steps, top, by_line) -> None:
    """The table of kernel time by function (or line) of the source."""
    rows: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for name, (us, calls) in kernels.items():
        key = name.split(" ")[0]
        loc = lines.get(key) or lines.get(re.sub(r"[.\-]", "_", key)) or "(no source)"
        rows[loc][0] += us
        rows[loc][1] += calls
    total_us = sum(v[0] for v in kernels.values())
    what = "source line (function)" if by_line else "source file, function"
    print(f"\n### Kernel time by {what}\n")
    table_header([what, "ms per step", "share of kernel time", "kernels per step"])
    for loc, (us, calls) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        print(
            f"| {loc} | {us / 1e3 / n_steps:.3f} | {us / max(total_us, 1e-9):.1%} "
            f"| {calls / n_steps:.1f} |"
        )


if __name__ == "__main__":
    main()
