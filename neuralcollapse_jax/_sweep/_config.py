"""The configuration of a sweep: fixed settings, a grid, explicit runs, execution."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


# Every parameter of a run, by section. `kind` says how a sweep over it executes:
#
# - "traced": a per-run array inside one compiled solve (no recompilation);
# - "data": generated on the host per run (cached); runs whose data have equal
#   shapes share one compiled solve, other shapes form separate blocks;
# - "static": part of the compiled program (shapes, loss, solver): one block per value.
@dataclass(frozen=True)
class _Param:
    section: str
    default: Any
    kind: str
    check: Callable[[str, Any], Any]
    doc: str


def _fail(key: str, msg: str):
    raise ValueError(f"{key}: {msg}")


def _positive_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
        _fail(key, f"must be a positive integer, got {v!r}")
    return int(v)


def _nonneg_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
        _fail(key, f"must be a non-negative integer, got {v!r}")
    return int(v)


def _positive(key, v):
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        _fail(key, f"must be a number, got {v!r}")
    if not (math.isfinite(float(v)) and float(v) > 0):
        _fail(key, f"must be positive and finite, got {v!r}")
    return float(v)


def _optional_positive(key, v):
    return None if v is None else _positive(key, v)


def _number(key, v):
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        _fail(key, f"must be a number, got {v!r}")
    if not math.isfinite(float(v)):
        _fail(key, f"must be finite, got {v!r}")
    return float(v)


def _flag(key, v):
    if not isinstance(v, bool | np.bool_):
        _fail(key, f"must be true or false, got {v!r}")
    return bool(v)


def _choice(*names):
    def check(key, v):
        if v not in names:
            _fail(key, f"must be one of {list(names)}, got {v!r}")
        return v

    return check


def _sizes(key, v):
    if isinstance(v, Sequence) and not isinstance(v, str):
        return tuple(_positive_int(key, s) for s in v)
    return _positive_int(key, v)


def _digits(key, v):
    if not isinstance(v, Sequence) or isinstance(v, str):
        _fail(key, f"must be a list of digits, got {v!r}")
    return tuple(_nonneg_int(key, d) for d in v)


def _solver(key, v):
    if isinstance(v, str):
        if v not in SOLVERS:
            _fail(key, f"must be one of {sorted(SOLVERS)} (or a Diffrax solver), got {v!r}")
        return v
    import diffrax

    if isinstance(v, diffrax.AbstractSolver):
        return v
    _fail(key, f"must be a solver name or a Diffrax solver, got {v!r}")


SOLVERS = (
    "default",
    "auto",
    "regular",
    "sliding",
    "sliding_bosh3",
    "sliding_tsit5",
    "tsit5",
    "dopri5",
    "dopri8",
    "bosh3",
    "heun",
    "euler",
)
GENERATORS = ("orthogonally_separable", "block_orthogonal", "mnist", "iclr_toy")
INITS = ("gaussian", "lecun", "balanced", "semi_local")
LOSSES = ("cross_entropy", "exponential", "logistic", "square")

PARAMS: dict[str, _Param] = {
    # model
    "width": _Param("model", 50, "static", _positive_int, "hidden width `h`"),
    "init": _Param("model", "gaussian", "static", _choice(*INITS), "initialization"),
    "leak": _Param("model", 0.0, "static", _number, "leaky-ReLU slope"),
    "scale": _Param("model", 1e-3, "traced", _positive, "init scale `eps` (a std)"),
    "seed": _Param("model", 0, "traced", _nonneg_int, "PRNG seed of the init"),
    # flow
    "t1": _Param("flow", 1000.0, "traced", _positive, "horizon"),
    "rtol": _Param("flow", 1e-8, "traced", _positive, "relative tolerance"),
    "atol": _Param("flow", None, "traced", _optional_positive, "absolute tolerance"),
    "atol_per_scale": _Param(
        "flow", None, "traced", _optional_positive, "absolute tolerance / init scale"
    ),
    "loss": _Param("flow", "cross_entropy", "static", _choice(*LOSSES), "loss"),
    "reduction": _Param("flow", "sum", "static", _choice("sum", "mean"), "reduction"),
    "max_steps": _Param("flow", 100_000, "static", _positive_int, "step budget"),
    "num_saves": _Param("flow", 100, "static", _positive_int, "log-spaced save times"),
    "t_min_ratio": _Param("flow", 1e-4, "static", _positive, "first save time / t1"),
    "solver": _Param("flow", "default", "static", _solver, "Diffrax solver"),
    # data
    "generator": _Param(
        "data", "orthogonally_separable", "data", _choice(*GENERATORS), "data generator"
    ),
    "data_seed": _Param("data", 0, "data", _nonneg_int, "PRNG seed of the data"),
    "num_classes": _Param("data", None, "data", _positive_int, "`K`"),
    "points_per_class": _Param("data", None, "data", _sizes, "class sizes"),
    "dim": _Param("data", None, "data", _positive_int, "`D`"),
    "mu_s": _Param("data", None, "data", _number, "within-class cosine bound"),
    "mu_d": _Param("data", None, "data", _number, "cross-class cosine bound"),
    "norm_min": _Param("data", None, "data", _positive, "smallest sample norm"),
    "norm_max": _Param("data", None, "data", _positive, "largest sample norm"),
    "rotate": _Param("data", None, "data", _flag, "random rotation"),
    "block_dim": _Param("data", None, "data", _positive_int, "block size"),
    "spread": _Param("data", None, "data", _number, "block spread"),
    "digits": _Param("data", None, "data", _digits, "MNIST digits"),
    "per_class": _Param("data", None, "data", _positive_int, "MNIST images per digit"),
    "center": _Param("data", None, "data", _flag, "MNIST centering"),
    "toy": _Param(
        "data", None, "data", _choice("mu_large", "mu_small", "orthogonal"), "toy set"
    ),
}

# The data parameters each generator takes (others are rejected, naming the key).
GENERATOR_ARGS: dict[str, tuple[str, ...]] = {
    "orthogonally_separable": (
        "data_seed",
        "num_classes",
        "points_per_class",
        "dim",
        "mu_s",
        "mu_d",
        "norm_min",
        "norm_max",
        "rotate",
    ),
    "block_orthogonal": (
        "data_seed",
        "num_classes",
        "points_per_class",
        "block_dim",
        "spread",
    ),
    "mnist": ("digits", "per_class", "center"),
    "iclr_toy": ("toy",),
}

SECTIONS = ("model", "flow", "data")
TOP_KEYS = (
    "name",
    "model",
    "flow",
    "data",
    "record",
    "grid",
    "runs",
    "dtype",
    "execution",
    "output",
)
EXECUTION: dict[str, Any] = {
    "backend": "local",
    "chunk_size": "auto",
    "batch_size": "auto",
    "workers": "auto",
    "progress": True,
    "ray_address": None,
    "ray_num_cpus": 1,
    "ray_num_gpus": 0,
}
DEFAULT_RECORD = ("weight_norm", "min_margin", "separated")


def _grid_values(key: str, spec) -> list:
    """A grid entry: a list, or `{geomspace|linspace: [start, stop, num]}`,
    or `{range: [start, stop]}` / `{range: [start, stop, step]}`."""
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            _fail(
                key,
                f"a generated grid has exactly one of geomspace, linspace, range; "
                f"got {sorted(spec)}",
            )
        ((how, args),) = spec.items()
        if how not in ("geomspace", "linspace", "range"):
            _fail(key, f"unknown grid generator {how!r}; use geomspace, linspace or range")
        if not isinstance(args, Sequence) or isinstance(args, str):
            _fail(key, f"{how} takes a list of numbers, got {args!r}")
        if how == "range":
            if len(args) not in (2, 3) or not all(isinstance(a, int) for a in args):
                _fail(
                    key,
                    f"range takes [start, stop] or [start, stop, step] integers, "
                    f"got {args!r}",
                )
            values = list(range(*args))
        else:
            if len(args) != 3 or not isinstance(args[2], int):
                _fail(key, f"{how} takes [start, stop, num], got {args!r}")
            start, stop, num = args
            if how == "geomspace" and not (float(start) > 0 and float(stop) > 0):
                _fail(key, f"geomspace needs positive start and stop, got {args!r}")
            fn = np.geomspace if how == "geomspace" else np.linspace
            values = [float(v) for v in fn(float(start), float(stop), num)]
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        values = list(spec)
    else:
        _fail(
            key,
            f"must be a list of values or a geomspace/linspace/range spec, got {spec!r}",
        )
    if len(values) == 0:
        _fail(key, "the grid is empty: give at least one value")
    return values


def _hashable(v):
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    return v


def _plain(v):
    """A JSON/YAML-friendly copy of a value (tuples as lists, numpy as Python)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return repr(v)


class SweepConfig:
    """A validated sweep configuration.

    Built from a mapping (or a YAML/JSON file with `SweepConfig.load`) with the
    sections:

    - `data`: `generator` (`orthogonally_separable`, `block_orthogonal`, `mnist`,
      `iclr_toy`) and its arguments (`data_seed`, `num_classes`, `points_per_class`,
      `dim`, `mu_s`, `mu_d`, `norm_min`, `norm_max`, `rotate`; `block_dim`, `spread`;
      `digits`, `per_class`, `center`; `toy`). Unset arguments take the generator's
      defaults.
    - `model`: `width`, `init`, `leak`, `scale`, `seed`.
    - `flow`: `t1`, `rtol`, `atol` (or `atol_per_scale`: `atol = atol_per_scale *
      scale`; neither: `gradient_flow`'s scale-free default), `loss`, `reduction`,
      `max_steps`, `num_saves`, `t_min_ratio` (saves at `log_times(t1, num_saves,
      t_min_ratio * t1)`), `solver` (`default` = `auto`: `regular` on orthogonally
      separable data, `sliding` otherwise, decided per data set before anything runs;
      `sliding`'s tableau is chosen per run from its rtol; or a name).
    - `record`: names from `neuralcollapse_jax.metrics.RECORDERS`, `"standard"`, or
      (from Python) a dict `{name: fn(model, data)}`.
    - `grid`: `{parameter: values}`, swept as a Cartesian product. Values are a list
      or `{geomspace: [start, stop, num]}`, `{linspace: ...}`, `{range: [start, stop]}`.
    - `runs`: an explicit list of `{parameter: value}` points (all with the same
      keys), crossed with the grid.
    - `dtype`: `float64` (default) or `float32`.
    - `execution`: `backend` (`local` or `ray`), `chunk_size`, `batch_size`,
      `workers` (each `auto` or an integer), `progress`, and for Ray `ray_address`,
      `ray_num_cpus`, `ray_num_gpus` (resources of one chunk task).
    - `output`: the result file (`.nc`, or `.zarr` when `zarr` is installed).

    Every key is checked on construction; an unknown key, an empty grid or an
    impossible value raises `ValueError` naming the key.
    """

    def __init__(self, config: Mapping[str, Any]):
        if not isinstance(config, Mapping):
            raise ValueError(
                f"a sweep config must be a mapping, got {type(config).__name__}"
            )
        config = dict(config)
        unknown = sorted(set(config) - set(TOP_KEYS))
        if unknown:
            raise ValueError(
                f"{unknown[0]}: unknown config key; the keys are {list(TOP_KEYS)}"
            )
        self.name = str(config.get("name", "sweep"))
        fixed: dict[str, Any] = {}
        for section in SECTIONS:
            values = config.get(section) or {}
            if not isinstance(values, Mapping):
                _fail(section, "must be a mapping of parameter names to values")
            for key, value in values.items():
                p = PARAMS.get(key)
                if p is None or p.section != section:
                    hint = f" (it belongs in '{p.section}')" if p is not None else ""
                    _fail(f"{section}.{key}", f"unknown parameter{hint}")
                fixed[key] = value
        self.fixed = {
            k: PARAMS[k].check(f"{PARAMS[k].section}.{k}", v) if v is not None else None
            for k, v in fixed.items()
        }

        grid = config.get("grid") or {}
        if not isinstance(grid, Mapping):
            _fail("grid", "must be a mapping of parameter names to value lists")
        self.grid: dict[str, list] = {}
        for key, spec in grid.items():
            if key not in PARAMS:
                _fail(f"grid.{key}", "unknown parameter")
            if key in ("solver",) and not isinstance(spec, Sequence):
                _fail(f"grid.{key}", "must be a list")
            values = _grid_values(f"grid.{key}", spec)
            values = [PARAMS[key].check(f"grid.{key}", v) for v in values]
            if len({_hashable(v) for v in values}) != len(values):
                _fail(f"grid.{key}", f"repeated values in {values}")
            self.grid[key] = values

        runs = config.get("runs")
        self.runs: list[dict[str, Any]] | None = None
        if runs is not None:
            if not isinstance(runs, Sequence) or isinstance(runs, str):
                _fail("runs", "must be a list of {parameter: value} mappings")
            if len(runs) == 0:
                _fail("runs", "the list of runs is empty")
            keys = None
            self.runs = []
            for i, run in enumerate(runs):
                if not isinstance(run, Mapping) or not run:
                    _fail(f"runs[{i}]", "must be a non-empty mapping")
                if keys is None:
                    keys = tuple(run)
                if set(run) != set(keys):
                    _fail(
                        f"runs[{i}]",
                        f"has keys {sorted(run)}; every run must set "
                        f"the same keys {sorted(keys)}",
                    )
                checked = {}
                for key, value in run.items():
                    if key not in PARAMS:
                        _fail(f"runs[{i}].{key}", "unknown parameter")
                    if key in self.grid:
                        _fail(f"runs[{i}].{key}", "is also a grid parameter")
                    checked[key] = (
                        PARAMS[key].check(f"runs[{i}].{key}", value)
                        if value is not None
                        else None
                    )
                self.runs.append(checked)
            self.run_keys = tuple(keys)
        else:
            self.run_keys = ()

        record = config.get("record", list(DEFAULT_RECORD))
        self.record_fns: dict[str, Callable] | None = None
        if isinstance(record, Mapping):
            for name, fn in record.items():
                if not callable(fn):
                    _fail(f"record.{name}", "must be a function fn(model, data)")
            self.record_fns = dict(record)
            self.record = tuple(sorted(record))
        else:
            from .. import metrics

            if isinstance(record, str):
                record = [record]
            names: list[str] = []
            for name in record or []:
                if name == "standard":
                    names.extend(metrics.STANDARD)
                elif name in metrics.RECORDERS:
                    names.append(name)
                else:
                    _fail(
                        f"record.{name}",
                        f"unknown diagnostic; choose from "
                        f"{sorted(metrics.RECORDERS)} or 'standard'",
                    )
            self.record = tuple(dict.fromkeys(names))

        dtype = config.get("dtype", "float64")
        if dtype not in ("float64", "float32"):
            _fail("dtype", f"must be 'float64' or 'float32', got {dtype!r}")
        self.dtype = dtype

        execution = dict(EXECUTION)
        given = config.get("execution") or {}
        if not isinstance(given, Mapping):
            _fail("execution", "must be a mapping")
        for key, value in given.items():
            if key not in EXECUTION:
                _fail(
                    f"execution.{key}",
                    f"unknown option; the options are {sorted(EXECUTION)}",
                )
            execution[key] = value
        _choice("local", "ray")("execution.backend", execution["backend"])
        for key in ("chunk_size", "batch_size", "workers"):
            if execution[key] != "auto":
                _positive_int(f"execution.{key}", execution[key])
        _flag("execution.progress", execution["progress"])
        _number("execution.ray_num_cpus", execution["ray_num_cpus"])
        _number("execution.ray_num_gpus", execution["ray_num_gpus"])
        self.execution = execution

        output = config.get("output")
        if output is not None and not isinstance(output, str | Path):
            _fail("output", f"must be a file name, got {output!r}")
        self.output = None if output is None else str(output)
        self._raw = config
        self._validate_combinations()

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        """Read a YAML (or JSON) file; a relative `output` is taken relative to it."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - any parse error is a bad config
            raise ValueError(f"cannot parse {path}: {' '.join(str(e).split())}") from e
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: a sweep config must be a mapping")
        raw = dict(raw)
        if raw.get("output") is not None and not Path(raw["output"]).is_absolute():
            raw["output"] = str(path.parent / raw["output"])
        return cls(raw)

    # -- the runs ----------------------------------------------------------------------

    @property
    def dims(self) -> tuple[str, ...]:
        """The dimensions of the result: `run` (for explicit runs), then the grid."""
        return (("run",) if self.runs is not None else ()) + tuple(self.grid)

    @property
    def shape(self) -> tuple[int, ...]:
        lead = (len(self.runs),) if self.runs is not None else ()
        return lead + tuple(len(v) for v in self.grid.values())

    @property
    def num_runs(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def run_params(self) -> list[dict[str, Any]]:
        """Every run's full parameters, in the result's C order."""
        base = {k: PARAMS[k].default for k in PARAMS}
        base.update({k: v for k, v in self.fixed.items() if v is not None})
        explicit = self.runs if self.runs is not None else [{}]
        out = []
        for run in explicit:
            for combo in itertools.product(*self.grid.values()):
                p = dict(base)
                p.update({k: v for k, v in run.items() if v is not None})
                p.update(dict(zip(self.grid, combo)))
                out.append(p)
        return out

    def swept(self) -> tuple[str, ...]:
        return tuple(self.grid) + tuple(self.run_keys)

    def _validate_combinations(self) -> None:
        swept = self.swept()
        for p in self.run_params():
            gen = p["generator"]
            allowed = set(GENERATOR_ARGS[gen])
            for key in PARAMS:
                if PARAMS[key].section == "data" and key != "generator":
                    given = key in swept or self.fixed.get(key) is not None
                    if given and key not in allowed and p.get(key) is not None:
                        where = (
                            "grid"
                            if key in self.grid
                            else ("runs" if key in self.run_keys else "data")
                        )
                        _fail(
                            f"{where}.{key}",
                            f"is not an argument of the {gen} "
                            f"generator (it takes {sorted(allowed)})",
                        )
            if p["atol"] is not None and p["atol_per_scale"] is not None:
                _fail("flow.atol", "give atol or atol_per_scale, not both")

    # -- identity ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (what `hash` is computed from)."""
        raw = copy.copy(self._raw)
        if self.record_fns is not None:
            raw["record"] = {
                k: getattr(v, "__qualname__", repr(v)) for k, v in self.record_fns.items()
            }
        raw.pop("execution", None)
        raw.pop("output", None)
        raw["execution"] = {k: self.execution[k] for k in ("chunk_size", "batch_size")}
        return _plain(raw)

    def hash(self) -> str:
        """A digest of everything that determines the numbers (not where they go)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
