"""`ncjax run`: one gradient flow, configured as a sweep of one point."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from . import metrics
from ._config import (
    RunConfig,
    add_set_option,
    apply_flags,
    build_data,
    load_config_file,
    out_dim,
    resolve_rtol,
    solver_name,
    to_yaml,
)
from ._flow import gradient_flow, log_times, status_reported
from ._loss import check_loss
from ._loss import loss as loss_value
from ._model import TwoLayerReLU
from ._run_report import write_run
from ._trajectory import Status


# The data sets of `--data NAME`: a replacement of the config's `data` section.
DATA_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "generator": "orthogonally_separable",
        "num_classes": 3,
        "points_per_class": [20, 30, 40],
        "dim": 30,
        "mu_s": 0.5,
        "mu_d": 0.2,
        "norm_min": 0.5,
        "norm_max": 1.5,
    },
    "block": {
        "generator": "block_orthogonal",
        "num_classes": 3,
        "points_per_class": [20, 30, 40],
    },
    "mnist01": {"generator": "mnist", "digits": [0, 1], "per_class": 100},
    "mnist012": {"generator": "mnist", "digits": [0, 1, 2], "per_class": 100},
}

# The problem `ncjax run` solves without --config: three unequal synthetic classes, on
# which the three phases (alignment, separation, 1/t loss decay with log-growing
# weights) all show within seconds on a laptop CPU. Save times from t1 * 1e-7, so that
# the alignment plateau at small t is on the plot.
DEFAULT_RUN: dict[str, Any] = {
    "data": DATA_PRESETS["synthetic"],
    "model": {"width": 50, "scale": 1e-4},
    "flow": {"t1": 1e4, "max_steps": 200_000, "num_saves": 200, "t_min_ratio": 1e-7},
}

# Short flags, each the same as `--set KEY=VALUE`.
ALIASES = {
    "width": "model.width",
    "scale": "model.scale",
    "seed": "model.seed",
    "t1": "flow.t1",
    "rtol": "flow.rtol",
    "loss": "flow.loss",
    "solver": "flow.solver",
    "dtype": "dtype",
    "out": "output",
}
DEFAULT_OUTPUT = "ncjax-out/run"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="integrate the exact gradient flow on built-in data",
        description=(
            "Integrate the exact gradient flow of a two-layer ReLU network and write "
            "summary.json, trajectory.nc and flow.png to the output folder. The problem "
            "is the default one, or a --config file (the sections data, model, flow, "
            "record, dtype, output of a sweep file, without grid/runs/execution), then "
            "--data, the short flags and --set SECTION.KEY=VALUE in that order."
        ),
    )
    p.add_argument("--config", type=Path, help="YAML or JSON config file")
    add_set_option(p, "--set flow.t1=100 --set data.points_per_class=[5,6,7]")
    p.add_argument(
        "--data",
        choices=tuple(DATA_PRESETS),
        help="replace the data section by a built-in data set (default: synthetic)",
    )
    for flag, key in ALIASES.items():
        if flag not in ("dtype", "out"):
            p.add_argument(f"--{flag}", metavar="VALUE", help=f"= --set {key}=VALUE")
    p.add_argument("--dtype", choices=("float64", "float32"), help="= --set dtype=VALUE")
    p.add_argument("--out", help="output folder (default ncjax-out/run); = --set output=")
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config as YAML and run nothing",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The default problem or the config file, then --data, the short flags and --set.
    A relative `output` in the file is taken relative to the file, as in a sweep."""
    raw = dict(DEFAULT_RUN) if args.config is None else load_config_file(args.config)
    if args.data is not None:
        raw["data"] = DATA_PRESETS[args.data]
    return RunConfig.from_dict(apply_flags(raw, args, ALIASES))


def build_problem(cfg: RunConfig):
    """The data set and initial model that the config describes. Without
    `data.data_seed`, `model.seed` is split into the keys of the data and the model."""
    dtype = cfg.dtype
    if cfg.data.data_seed is None:
        key_data, key_model = jax.random.split(jax.random.key(cfg.model.seed))
    else:
        key_data = jax.random.key(cfg.data.data_seed)
        key_model = jax.random.key(cfg.model.seed)
    data = build_data(cfg.flat(), key_data, dtype)
    k_out = out_dim(cfg.flow.loss, data.num_classes)
    check_loss(cfg.flow.loss, cfg.flow.reduction, k_out, data.num_classes)
    model = TwoLayerReLU.init(
        key_model,
        data.dim,
        cfg.model.width,
        k_out,
        cfg.model.scale,
        init=cfg.model.init,
        data=data,
        leak=cfg.model.leak,
        dtype=dtype,
    )
    return data, model


@eqx.filter_jit
def _at_end(model, data, loss, reduction, record):
    """The loss and the recorded diagnostics of the final model, in one compiled call
    (run operation by operation, each operation would compile on its own on a first
    call; see the docs page *Benchmarks*, *Start-up*)."""
    values = {name: fn(model, data) for name, fn in record.items()}
    return loss_value(model, data, loss, reduction), values


def _where_ended(traj, t1: float, status: int) -> str:
    """Where the final model of the summary line lies: at `t1`, or, for a run that
    stopped early (the trajectory keeps no time for its final state), past the last
    save time it reached."""
    if status == Status.SUCCESS:
        return f"at t = {t1:g}"
    reached = np.asarray(traj.ts)[np.isfinite(np.asarray(traj.loss))]
    past = f" (past the save time t = {reached[-1]:g})" if reached.size else ""
    return f"where the run stopped, before t = {t1:g}{past}"


def _events(stats: dict) -> str:
    """The kink events that the solver located and the steps they cost, for the run's
    summary line ("" for a solver that locates none)."""
    if "event_retries" not in stats:
        return ""
    crossings = stats.get("crossings_located", 0) + stats.get("crossings_started", 0)
    return (
        f"events: {crossings} kink crossings, {stats.get('sliding_entries', 0)} entries "
        f"into sliding, {stats.get('sliding_exits', 0)} exits, "
        f"{stats['event_retries']} steps retried to end before one; "
    )


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.show_config:
        sys.stdout.write(to_yaml(cfg.to_dict()))
        return 0
    jax.config.update("jax_enable_x64", cfg.dtype == "float64")
    data, model = build_problem(cfg)
    flow = cfg.flow
    # The solver by name, as gradient_flow resolves it (for the summary and the report).
    solver = solver_name(flow.solver, data, resolve_rtol(flow.rtol, cfg.dtype))
    tolerances: dict[str, Any] = {}  # unset: gradient_flow's defaults
    if flow.rtol is not None:
        tolerances["rtol"] = flow.rtol
    if flow.atol is not None:
        tolerances["atol"] = flow.atol
    elif flow.atol_per_scale is not None:
        tolerances["atol"] = flow.atol_per_scale * cfg.model.scale
    record = metrics.recorder(*cfg.record)
    out = Path(cfg.output if cfg.output is not None else DEFAULT_OUTPUT)
    # Everything is checked; only now the output folder.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create output folder {out}: {e.strerror}") from e
    if not os.access(out, os.W_OK):
        raise ValueError(f"output folder {out} is not writable")
    ts = log_times(flow.t1, flow.num_saves, t_min=flow.t1 * flow.t_min_ratio)
    progress = args.progress
    if progress is None:  # auto: a bar when a person is watching
        progress = sys.stderr.isatty()
    opts = {
        **cfg.flat(),
        "record": list(cfg.record),
        "dtype": cfg.dtype,
        "output": str(out),
        "data": cfg.data.generator,
    }
    start = time.perf_counter()
    with status_reported():  # (in the summary and the exit code, below)
        traj = gradient_flow(
            model,
            data,
            t1=flow.t1,
            saveat=ts,
            loss=flow.loss,
            reduction=flow.reduction,
            max_steps=flow.max_steps,
            progress=bool(progress),
            solver=solver,
            **tolerances,
        )
    jax.block_until_ready(traj)
    wall = time.perf_counter() - start
    status = int(traj.status)
    final_loss, final_records = _at_end(traj.final, data, flow.loss, flow.reduction, record)
    summary = {
        "final_loss": float(final_loss),
        "initial_loss": float(traj.loss[0]),
        "t1": float(flow.t1),
        "num_steps": int(traj.stats["num_steps"]),
        "num_rejected_steps": int(traj.stats["num_rejected_steps"]),
        "grad_evals": int(traj.stats["grad_evals"]),
        "wall_time_s": wall,
        "status": Status.message(status),
        "status_code": status,
        "solver": solver,
        "n": data.num_samples,
        "D": data.dim,
        "K": data.num_classes,
        "options": cfg.to_dict(),
        "stats": traj.stats_summary(),
    }
    summary["final"] = {  # the recorded diagnostics at t1
        name: jax.tree.map(lambda v: np.asarray(v).tolist(), value)
        for name, value in final_records.items()
    }
    write_run(out, traj, data, model, summary, opts)
    print(
        f"{Status.message(status)}; loss {summary['initial_loss']:.4g} -> "
        f"{summary['final_loss']:.4g} {_where_ended(traj, flow.t1, status)}; "
        f"{summary['num_steps']} steps, "
        f"{summary['grad_evals']} gradient evaluations ({solver} solver), {wall:.1f} s; "
        f"{_events(summary['stats'])}wrote {out}/"
    )
    return 0 if status == Status.SUCCESS else 1
