"""`ncjax sweep CONFIG` and `ncjax plot SWEEP_FILE`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from .._config import add_set_option, apply_flags, load_config_file
from ._api import resolve_execution, sweep
from ._config import SweepConfig
from ._plan import make_plan
from ._plot import plot_sweep
from ._store import load_sweep


# Flags, each the same as `--set KEY=VALUE`.
ALIASES = {
    "backend": "execution.backend",
    "chunk_size": "execution.chunk_size",
    "batch_size": "execution.batch_size",
    "workers": "execution.workers",
    "ray_address": "execution.ray_address",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of gradient flows from a YAML config",
        description=(
            "Run the sweep a YAML/JSON config describes and write an xarray Dataset "
            "(netCDF). Finished chunks are saved as they complete: the same command "
            "after an interruption resumes where the sweep stopped."
        ),
    )
    p.add_argument("config", type=Path, help="the sweep config (YAML or JSON)")
    add_set_option(p, "--set flow.t1=100 --set grid.seed=[0,1,2]")
    p.add_argument(
        "-o", "--output", type=Path, help="result file (default: the config's output)"
    )
    p.add_argument("--backend", choices=("local", "ray"), help="= --set execution.backend=")
    p.add_argument("--chunk-size", help="runs per chunk (saved together)")
    p.add_argument("--batch-size", help="runs per batched solve")
    p.add_argument("--workers", help="local worker threads")
    p.add_argument("--ray-address", help="address of a Ray cluster (default: local)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard results of a different config at the output",
    )
    p.add_argument(
        "--keep-parts",
        action="store_true",
        help="keep the chunk files after assembling the result",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config and print the plan, run nothing",
    )
    p.set_defaults(func=run_sweep)

    q = sub.add_parser(
        "plot",
        help="draw the standard views of a sweep file",
        description=(
            "Draw a final diagnostic against a swept parameter, the separation time "
            "against log(1/eps), a heatmap over two parameters and the loss curves."
        ),
    )
    q.add_argument("sweep_file", type=Path, help="a sweep result (.nc)")
    q.add_argument(
        "-o",
        "--out",
        type=Path,
        help="folder for the figures (default: <sweep_file stem>-plots next to it)",
    )
    q.add_argument("--var", help="diagnostic to plot (default: min_margin or loss)")
    q.add_argument("--x", help="swept parameter on the x axis (default: scale)")
    q.add_argument("--y", help="second parameter of the heatmap")
    q.add_argument("--format", default="png", choices=("png", "pdf", "svg"))
    q.set_defaults(func=run_plot)


def load_config(args: argparse.Namespace) -> SweepConfig:
    """The config file, then the execution flags and --set; a relative `output` is
    taken relative to the file."""
    return SweepConfig(apply_flags(load_config_file(args.config), args, ALIASES))


def run_sweep(args: argparse.Namespace) -> int:
    config = load_config(args)
    output = args.output if args.output is not None else config.output
    if output is None and not args.check:
        raise ValueError("no output file: give -o/--output or 'output' in the config")
    jax.config.update("jax_enable_x64", config.dtype == "float64")
    if args.check:
        plan = make_plan(config)
        ex_ = resolve_execution(config, max(len(b.runs) for b in plan.blocks))
        print(
            f"{config.num_runs} runs in {len(plan.blocks)} compiled block(s); "
            f"dims {dict(zip(config.dims, config.shape))}"
        )
        print(ex_.describe())
        return 0
    progress = args.progress if args.progress is not None else config.execution["progress"]
    ds = sweep(
        config,
        output,
        overwrite=args.overwrite,
        progress=progress,
        keep_parts=args.keep_parts,
    )
    failed = int((ds["status"] != 0).sum())
    print(f"wrote {output}: {config.num_runs} runs, {failed} failed", file=sys.stderr)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    ds = load_sweep(args.sweep_file)
    if "status" not in ds:
        raise ValueError(f"{args.sweep_file} is not a sweep result (no 'status' variable)")
    out = args.out or args.sweep_file.with_name(args.sweep_file.stem + "-plots")
    paths = plot_sweep(ds, out, var=args.var, x=args.x, y=args.y, fmt=args.format)
    for path in paths:
        print(path)
    return 0
