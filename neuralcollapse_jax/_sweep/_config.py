"""The configuration of a sweep: fixed settings, a grid, explicit runs, execution."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._config import (
    DEFAULT_RECORD,
    KEYS,
    RUN_KEYS,
    check_point,
    choice,
    fail,
    flag,
    load_file,
    number,
    parse_dtype,
    parse_output,
    parse_record,
    parse_sections,
    plain,
    positive_int,
    resolve_rtol,
)


# Every key of a run's sections by its bare name (`grid` and `runs` name them so):
# its section, default, how a sweep over it executes (`kind`), check and meaning.
@dataclass(frozen=True)
class _Param:
    section: str
    default: Any
    kind: str
    check: Callable[[str, Any], Any]
    doc: str


PARAMS: dict[str, _Param] = {
    key: _Param(
        section, f.default, f.metadata["kind"], f.metadata["check"], f.metadata["doc"]
    )
    for key, (section, f) in KEYS.items()
}

TOP_KEYS = (*RUN_KEYS, "grid", "runs", "execution")
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


def _grid_values(key: str, spec) -> list:
    """A grid entry: a list, or `{geomspace|linspace: [start, stop, num]}`,
    or `{range: [start, stop]}` / `{range: [start, stop, step]}`."""
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            fail(
                key,
                f"a generated grid has exactly one of geomspace, linspace, range; "
                f"got {sorted(spec)}",
            )
        ((how, args),) = spec.items()
        if how not in ("geomspace", "linspace", "range"):
            fail(key, f"unknown grid generator {how!r}; use geomspace, linspace or range")
        if not isinstance(args, Sequence) or isinstance(args, str):
            fail(key, f"{how} takes a list of numbers, got {args!r}")
        if how == "range":
            if len(args) not in (2, 3) or not all(isinstance(a, int) for a in args):
                fail(
                    key,
                    f"range takes [start, stop] or [start, stop, step] integers, "
                    f"got {args!r}",
                )
            values = list(range(*args))
        else:
            if len(args) != 3 or not isinstance(args[2], int):
                fail(key, f"{how} takes [start, stop, num], got {args!r}")
            start, stop, num = args
            if how == "geomspace" and not (float(start) > 0 and float(stop) > 0):
                fail(key, f"geomspace needs positive start and stop, got {args!r}")
            fn = np.geomspace if how == "geomspace" else np.linspace
            values = [float(v) for v in fn(float(start), float(stop), num)]
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        values = list(spec)
    else:
        fail(
            key,
            f"must be a list of values or a geomspace/linspace/range spec, got {spec!r}",
        )
    if len(values) == 0:
        fail(key, "is empty: give at least one value")
    return values


def _hashable(v):
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    return v


class SweepConfig:
    """A validated sweep configuration.

    Built from a mapping (or a YAML/JSON file with `SweepConfig.load`) with the
    sections of a `RunConfig` (the same keys, defaults and checks; `data_seed` unset
    is 0: one data set across model seeds) and what a sweep adds, `grid`, `runs`
    and `execution`:

    - `data`: `generator` (`orthogonally_separable`, `block_orthogonal`, `mnist`,
      `iclr_toy`) and its arguments (`data_seed`, `num_classes`, `points_per_class`,
      `dim`, `mu_s`, `mu_d`, `norm_min`, `norm_max`, `rotate`; `block_dim`, `spread`;
      `digits`, `per_class`, `center`; `toy`). Unset arguments take the generator's
      defaults.
    - `model`: `width`, `init`, `leak`, `scale`, `seed`.
    - `flow`: `t1`, `rtol`, `atol` (or `atol_per_scale`: `atol = atol_per_scale *
      scale`; neither: `gradient_flow`'s scale-free default), `loss`, `reduction`,
      `max_steps`, `num_saves`, `t_min_ratio` (saves at `log_times(t1, num_saves,
      t_min_ratio * t1)`), `solver` (`auto`, also spelled `default`: `events` on any
      data, as `gradient_flow`'s default; `sliding`'s tableau is chosen per run from
      its rtol, before anything runs; or a name of `gradient_flow`'s solvers with an
      error estimate). Unset `rtol`: `gradient_flow`'s default.
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
            fail(unknown[0], f"is not a key of the schema; the keys are {list(TOP_KEYS)}")
        self.name = str(config.get("name", "sweep"))
        self.fixed = parse_sections(config)

        grid = config.get("grid") or {}
        if not isinstance(grid, Mapping):
            fail("grid", "must be a mapping of parameter names to value lists")
        self.grid: dict[str, list] = {}
        for key, spec in grid.items():
            if key not in PARAMS:
                fail(f"grid.{key}", "is not a key of the schema")
            if key in ("solver",) and not isinstance(spec, Sequence):
                fail(f"grid.{key}", "must be a list")
            values = _grid_values(f"grid.{key}", spec)
            values = [PARAMS[key].check(f"grid.{key}", v) for v in values]
            if len({_hashable(v) for v in values}) != len(values):
                fail(f"grid.{key}", f"has repeated values {values}")
            self.grid[key] = values

        runs = config.get("runs")
        self.runs: list[dict[str, Any]] | None = None
        if runs is not None:
            if not isinstance(runs, Sequence) or isinstance(runs, str):
                fail("runs", "must be a list of {parameter: value} mappings")
            if len(runs) == 0:
                fail("runs", "is empty: give at least one run")
            keys = None
            self.runs = []
            for i, run in enumerate(runs):
                if not isinstance(run, Mapping) or not run:
                    fail(f"runs[{i}]", "must be a non-empty mapping")
                if keys is None:
                    keys = tuple(run)
                if set(run) != set(keys):
                    fail(
                        f"runs[{i}]",
                        f"has keys {sorted(run)}; every run must set "
                        f"the same keys {sorted(keys)}",
                    )
                checked = {}
                for key, value in run.items():
                    if key not in PARAMS:
                        fail(f"runs[{i}].{key}", "is not a key of the schema")
                    if key in self.grid:
                        fail(f"runs[{i}].{key}", "is also a grid parameter")
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
                    fail(f"record.{name}", "must be a function fn(model, data)")
            self.record_fns = dict(record)
            self.record = tuple(sorted(record))
        else:
            self.record = parse_record(record or [])

        self.dtype = parse_dtype(config.get("dtype", "float64"))

        execution = dict(EXECUTION)
        given = config.get("execution") or {}
        if not isinstance(given, Mapping):
            fail("execution", "must be a mapping")
        for key, value in given.items():
            if key not in EXECUTION:
                fail(
                    f"execution.{key}",
                    f"is not an option; the options are {sorted(EXECUTION)}",
                )
            execution[key] = value
        choice("local", "ray")("execution.backend", execution["backend"])
        for key in ("chunk_size", "batch_size", "workers"):
            if execution[key] != "auto":
                execution[key] = positive_int(f"execution.{key}", execution[key])
        execution["progress"] = flag("execution.progress", execution["progress"])
        number("execution.ray_num_cpus", execution["ray_num_cpus"])
        number("execution.ray_num_gpus", execution["ray_num_gpus"])
        self.execution = execution

        self.output = parse_output(config.get("output"))
        self._raw = config
        self._validate_combinations()

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        """Read a YAML (or JSON) file; a relative `output` is taken relative to it."""
        path = Path(path)
        raw = load_file(path)
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
                p["rtol"] = resolve_rtol(p["rtol"], self.dtype)
                out.append(p)
        return out

    def swept(self) -> tuple[str, ...]:
        return tuple(self.grid) + tuple(self.run_keys)

    def where(self, key: str) -> str:
        """Where the config sets `key`: `grid.key`, `runs.key` or `section.key`."""
        if key in self.grid:
            return f"grid.{key}"
        if key in self.run_keys:
            return f"runs.{key}"
        return f"{PARAMS[key].section}.{key}"

    def _validate_combinations(self) -> None:
        for p in self.run_params():
            check_point(p, where=self.where)

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
        return plain(raw)

    def hash(self) -> str:
        """A digest of everything that determines the numbers (not where they go)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
