"""`ncjax run`: one gradient flow on built-in data, written to an output folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


DATASETS = ("synthetic", "block", "mnist01", "mnist012")

# Default rtol on MNIST. Its many transversal kink crossings make a step's local error
# first order, so the cost grows like 1/rtol there: at 1e-9 neither solver reaches
# t = 2 on 60 digits within 200,000 steps, while 1e-5 takes a few hundred (docs page
# *Sliding*, "Choosing the solver").
RTOL_SYNTHETIC = 1e-9
RTOL_MNIST = 1e-5

# Defaults of `ncjax run`: a synthetic orthogonally separable set with three unequal
# classes, on which the three phases (alignment, separation, 1/t loss decay with
# log-growing weights) all show within seconds on a laptop CPU.
DEFAULTS: dict[str, Any] = {
    "data": "synthetic",
    "classes": 3,
    "per_class": [20, 30, 40],
    "dim": 30,
    "mu_s": 0.5,
    "mu_d": 0.2,
    "norm_min": 0.5,
    "norm_max": 1.5,
    "mnist_per_class": 100,
    "loss": "cross_entropy",
    "reduction": "sum",
    "width": 50,
    "scale": 1e-4,
    "init": "gaussian",
    "t1": 1e4,
    "seed": 0,
    "rtol": None,  # 1e-9; on MNIST 1e-5 (RTOL_MNIST)
    "atol": None,
    "max_steps": 200_000,
    "num_saves": 200,
    "solver": "auto",
    "dtype": "float64",
    "out": "ncjax-out/run",
    "progress": None,
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="integrate the exact gradient flow on built-in data",
        description=(
            "Integrate the exact gradient flow of a two-layer ReLU network and write "
            "summary.json, trajectory.nc and flow.png to the output folder. Options may "
            "also come from a YAML/JSON --config file (keys as the long option names, "
            "with underscores); flags given on the command line override it."
        ),
    )
    p.add_argument("--config", type=Path, help="YAML or JSON file of options")
    p.add_argument("--data", choices=DATASETS, help="data set (default: synthetic)")
    p.add_argument("--classes", type=int, help="synthetic: number of classes K")
    p.add_argument(
        "--per-class", type=int, nargs="+", help="synthetic: points per class (one or K)"
    )
    p.add_argument("--dim", type=int, help="synthetic: dimension D")
    p.add_argument("--mu-s", type=float, help="synthetic: within-class cosine bound")
    p.add_argument("--mu-d", type=float, help="synthetic: cross-class cosine bound")
    p.add_argument("--norm-min", type=float, help="synthetic: smallest sample norm")
    p.add_argument("--norm-max", type=float, help="synthetic: largest sample norm")
    p.add_argument("--mnist-per-class", type=int, help="mnist: images per digit (0: all)")
    p.add_argument("--loss", help="cross_entropy, exponential, logistic or square")
    p.add_argument("--reduction", choices=("sum", "mean"))
    p.add_argument("--width", type=int, help="hidden width h")
    p.add_argument("--scale", type=float, help="init scale eps (a standard deviation)")
    p.add_argument("--init", help="gaussian, lecun, balanced or semi_local")
    p.add_argument("--t1", type=float, help="horizon")
    p.add_argument("--seed", type=int)
    p.add_argument("--rtol", type=float, help="default 1e-9; 1e-5 on MNIST")
    p.add_argument("--atol", type=float, help="default: rtol * rms(theta(0))")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--num-saves", type=int, help="log-spaced save times")
    p.add_argument("--solver", help="auto, or a solver name gradient_flow accepts")
    p.add_argument("--dtype", choices=("float64", "float32"))
    p.add_argument("--out", type=Path, help="output folder (default ncjax-out/run)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=run)


def _load_config(path: Path) -> dict[str, Any]:
    from ._cli import CliError

    if not path.is_file():
        raise CliError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            cfg = json.loads(text)
        else:
            import yaml

            cfg = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is a bad config
        raise CliError(f"cannot parse config {path}: {' '.join(str(e).split())}") from e
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise CliError(f"config {path} must be a mapping of option names to values")
    cfg = {str(k).replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise CliError(f"unknown config key {unknown[0]!r} in {path}")
    return cfg


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the config file, then the command-line flags."""
    from ._cli import CliError

    opts = dict(DEFAULTS)
    if args.config is not None:
        opts.update(_load_config(args.config))
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    if opts["data"] not in DATASETS:
        raise CliError(f"unknown data set {opts['data']!r}; choose one of {DATASETS}")
    if opts["rtol"] is None:
        opts["rtol"] = RTOL_MNIST if opts["data"].startswith("mnist") else RTOL_SYNTHETIC
    for key in ("width", "classes", "dim", "max_steps", "num_saves", "seed"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool):
            raise CliError(f"{key} must be an integer, got {opts[key]!r}")
    for key in ("width", "classes", "dim", "max_steps", "num_saves"):
        if opts[key] < 1:
            raise CliError(f"{key} must be positive, got {opts[key]}")
    for key in ("scale", "t1", "rtol"):
        if not isinstance(opts[key], int | float) or not opts[key] > 0:
            raise CliError(f"{key} must be a positive number, got {opts[key]!r}")
    return opts


def build_problem(opts: dict[str, Any]):
    """The data set and initial model that the options describe."""
    import jax
    import jax.numpy as jnp

    from . import datasets
    from ._model import TwoLayerReLU

    dtype = jnp.float64 if opts["dtype"] == "float64" else jnp.float32
    key_data, key_model = jax.random.split(jax.random.key(opts["seed"]))
    if opts["data"] == "synthetic":
        per = opts["per_class"]
        per = per[0] if isinstance(per, list) and len(per) == 1 else per
        data = datasets.orthogonally_separable(
            key_data,
            num_classes=opts["classes"],
            points_per_class=per,
            dim=opts["dim"],
            mu_s=opts["mu_s"],
            mu_d=opts["mu_d"],
            norm_range=(opts["norm_min"], opts["norm_max"]),
            dtype=dtype,
        )
    elif opts["data"] == "block":
        per = opts["per_class"]
        per = per[0] if isinstance(per, list) and len(per) == 1 else per
        data = datasets.block_orthogonal(
            key_data, num_classes=opts["classes"], points_per_class=per, dtype=dtype
        )
    else:
        digits = (0, 1) if opts["data"] == "mnist01" else (0, 1, 2)
        per = opts["mnist_per_class"] or None
        data = datasets.mnist(digits=digits, per_class=per, dtype=dtype)
    out_dim = 1 if opts["loss"] in ("exponential", "logistic") else data.num_classes
    model = TwoLayerReLU.init(
        key_model,
        data.dim,
        opts["width"],
        out_dim,
        opts["scale"],
        init=opts["init"],
        data=data,
        dtype=dtype,
    )
    return data, model


def run(args: argparse.Namespace) -> int:
    from ._cli import CliError

    opts = resolve_options(args)
    import jax

    jax.config.update("jax_enable_x64", opts["dtype"] == "float64")
    import numpy as np

    from ._flow import gradient_flow, log_times, solver_name
    from ._loss import loss as loss_value
    from ._run_report import write_run
    from ._trajectory import Status

    data, model = build_problem(opts)
    out = Path(opts["out"])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create output folder {out}: {e.strerror}") from e
    if not os.access(out, os.W_OK):
        raise CliError(f"output folder {out} is not writable")
    # Save from t1 * 1e-7 so that the alignment plateau at small t is on the plot.
    ts = log_times(opts["t1"], opts["num_saves"], t_min=opts["t1"] * 1e-7)
    progress = opts["progress"]
    if progress is None:  # auto: a bar when a person is watching
        progress = sys.stderr.isatty()
    # The solver by name, as gradient_flow resolves it (for the summary and the report).
    solver = solver_name(opts["solver"], data, opts["rtol"])
    start = time.perf_counter()
    traj = gradient_flow(
        model,
        data,
        t1=opts["t1"],
        saveat=ts,
        loss=opts["loss"],
        reduction=opts["reduction"],
        rtol=opts["rtol"],
        atol=opts["atol"],
        max_steps=opts["max_steps"],
        progress=bool(progress),
        solver=solver,
    )
    jax.block_until_ready(traj)
    wall = time.perf_counter() - start
    status = int(traj.status)
    summary = {
        "final_loss": float(loss_value(traj.final, data, opts["loss"], opts["reduction"])),
        "initial_loss": float(traj.loss[0]),
        "t1": float(opts["t1"]),
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
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
        "stats": {k: int(v) for k, v in traj.stats.items()},
    }
    write_run(out, traj, data, model, summary, opts)
    np.set_printoptions(precision=4)
    print(
        f"{Status.message(status)}; loss {summary['initial_loss']:.4g} -> "
        f"{summary['final_loss']:.4g} at t = {opts['t1']:g}; {summary['num_steps']} steps, "
        f"{summary['grad_evals']} gradient evaluations ({solver} solver), {wall:.1f} s; "
        f"wrote {out}/"
    )
    return 0 if status == Status.SUCCESS else 1
