"""The configuration of a run: `data`, `model`, `flow`, `record`, `output`.

One schema for `ncjax run`, `ncjax sweep` (which adds `grid`, `runs` and `execution`)
and the reproductions (which add a section of their own): the same keys, the same
defaults and one validator, whose errors name the key (`flow.rtol must be a positive
number, got -1`). Values may come as strings (`--set flow.t1=1e3`, or YAML's `1e-3`
without a dot) and are converted to the key's type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import diffrax
import numpy as np
import yaml

from . import datasets, metrics

# The solver registry (names, the default rtol, and how `auto` and `sliding` are
# resolved for a data set and an rtol): `ncjax run` and the sweep plan take it from here.
from ._flow import default_rtol
from ._solvers import SOLVER_NAMES, resolve_solver
from ._solvers import auto_solver as auto_solver
from ._solvers import solver_name as solver_name


GENERATORS = ("orthogonally_separable", "block_orthogonal", "mnist", "iclr_toy")
INITS = ("gaussian", "lecun", "balanced", "semi_local")
LOSSES = ("cross_entropy", "exponential", "logistic", "square")
TOYS = ("mu_large", "mu_small", "orthogonal")
DTYPES = ("float64", "float32")
DEFAULT_RECORD = ("weight_norm", "min_margin", "separated")

# The data keys each generator takes (others are refused, naming the key).
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


# -- checks: `check(key, value) -> value`, raising ValueError("KEY must be ...") --------


def fail(key: str, msg: str):
    raise ValueError(f"{key} {msg}")


def _from_text(v):
    """A number written as text (`--set` values, YAML's `1e-3`) as a number."""
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    return v


def _integer(key, v, low: int, what: str):
    v = _from_text(v)
    if isinstance(v, float) and v.is_integer() and math.isfinite(v):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
        fail(key, f"must be a {what} integer, got {v!r}")
    return int(v)


def positive_int(key, v):
    return _integer(key, v, 1, "positive")


def nonneg_int(key, v):
    return _integer(key, v, 0, "non-negative")


def number(key, v):
    v = _from_text(v)
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        fail(key, f"must be a number, got {v!r}")
    if not math.isfinite(float(v)):
        fail(key, f"must be finite, got {v!r}")
    return float(v)


def positive(key, v):
    v = _from_text(v)
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float | np.number)
        or not (math.isfinite(float(v)) and float(v) > 0)
    ):
        fail(key, f"must be a positive number, got {v!r}")
    return float(v)


def flag(key, v):
    if isinstance(v, str) and v.lower() in ("true", "false"):
        v = v.lower() == "true"
    if not isinstance(v, bool | np.bool_):
        fail(key, f"must be true or false, got {v!r}")
    return bool(v)


def choice(*names):
    def check(key, v):
        if v not in names:
            fail(key, f"must be one of {list(names)}, got {v!r}")
        return v

    return check


def optional(check):
    """`check`, with `None` (unset: the library's default) let through."""

    def check_optional(key, v):
        return None if v is None else check(key, v)

    return check_optional


def sizes(key, v):
    if isinstance(v, Sequence) and not isinstance(v, str):
        return tuple(positive_int(key, s) for s in v)
    return positive_int(key, v)


def digits(key, v):
    if not isinstance(v, Sequence) or isinstance(v, str):
        fail(key, f"must be a list of digits, got {v!r}")
    return tuple(nonneg_int(key, d) for d in v)


def solver(key, v):
    """A name of `gradient_flow`'s solver registry, or (from Python) a Diffrax solver."""
    if isinstance(v, str):
        if v == "default":  # the sweep files' name for "auto"
            return "auto"
        if v not in SOLVER_NAMES:
            fail(key, f"must be one of {list(SOLVER_NAMES)}, got {v!r}")
        v_solver = resolve_solver(v) if v not in ("auto", "sliding") else None
    elif isinstance(v, diffrax.AbstractSolver):
        v_solver = v
    else:
        fail(key, f"must be a solver name or a Diffrax solver, got {v!r}")
    # Runs and sweeps adapt their steps to the tolerance and take no fixed step.
    if v_solver is not None and not isinstance(v_solver, diffrax.AbstractAdaptiveSolver):
        fail(
            key,
            f"{v!r} gives no error estimate, so its steps cannot adapt: choose "
            "an adaptive solver",
        )
    return v


def _key(default, check: Callable, kind: str, doc: str):
    """A key of the schema. `kind` says how a sweep over it executes: `traced` (a per-run
    array in one compiled solve), `data` (host-side data per run; equal shapes share a
    solve) or `static` (part of the compiled program: one block per value)."""
    return dataclasses.field(
        default=default, metadata={"check": check, "kind": kind, "doc": doc}
    )


# -- the sections ------------------------------------------------------------------------


class _Section:
    def __post_init__(self):  # every key checked and converted (strings, lists)
        for f in dataclasses.fields(self):
            value = check_key(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """`data`: the generator (a function of `neuralcollapse_jax.datasets`) and its
    arguments; unset arguments (`None`) take the generator's defaults."""

    generator: str = _key(
        "orthogonally_separable", choice(*GENERATORS), "data", "data generator"
    )
    data_seed: int | None = _key(
        None,
        optional(nonneg_int),
        "data",
        "PRNG seed of the data (unset: `ncjax run` splits `model.seed`; a sweep uses 0)",
    )
    num_classes: int | None = _key(None, optional(positive_int), "data", "classes `K`")
    points_per_class: int | tuple[int, ...] | None = _key(
        None, optional(sizes), "data", "class sizes (one, or one per class)"
    )
    dim: int | None = _key(None, optional(positive_int), "data", "dimension `D`")
    mu_s: float | None = _key(None, optional(number), "data", "within-class cosine bound")
    mu_d: float | None = _key(None, optional(number), "data", "cross-class cosine bound")
    norm_min: float | None = _key(None, optional(positive), "data", "smallest sample norm")
    norm_max: float | None = _key(None, optional(positive), "data", "largest sample norm")
    rotate: bool | None = _key(None, optional(flag), "data", "random rotation")
    block_dim: int | None = _key(None, optional(positive_int), "data", "block size")
    spread: float | None = _key(None, optional(number), "data", "spread within a block")
    digits: tuple[int, ...] | None = _key(None, optional(digits), "data", "MNIST digits")
    per_class: int | None = _key(
        None, optional(positive_int), "data", "MNIST images per digit (unset: all)"
    )
    center: bool | None = _key(None, optional(flag), "data", "MNIST: subtract the mean")
    toy: str | None = _key(None, optional(choice(*TOYS)), "data", "`iclr_toy` set")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """`model`: the two-layer ReLU network and its initialization."""

    width: int = _key(50, positive_int, "static", "hidden width `h`")
    init: str = _key("gaussian", choice(*INITS), "static", "initialization")
    leak: float = _key(0.0, number, "static", "leaky-ReLU slope, in [0, 1)")
    scale: float = _key(1e-3, positive, "traced", "init scale `eps` (a standard deviation)")
    seed: int = _key(0, nonneg_int, "traced", "PRNG seed of the initialization")


@dataclasses.dataclass(frozen=True)
class FlowConfig(_Section):
    """`flow`: the loss and the integration of the gradient flow."""

    t1: float = _key(1000.0, positive, "traced", "horizon")
    rtol: float | None = _key(
        None, optional(positive), "traced", "relative tolerance (unset: the library's)"
    )
    atol: float | None = _key(
        None, optional(positive), "traced", "absolute tolerance (unset: scale-free)"
    )
    atol_per_scale: float | None = _key(
        None, optional(positive), "traced", "absolute tolerance / `model.scale`"
    )
    loss: str = _key("cross_entropy", choice(*LOSSES), "static", "loss")
    reduction: str = _key("sum", choice("sum", "mean"), "static", "sum or mean")
    max_steps: int = _key(100_000, positive_int, "static", "step budget")
    num_saves: int = _key(100, positive_int, "static", "log-spaced save times")
    t_min_ratio: float = _key(1e-4, positive, "static", "first save time / `t1`")
    solver: Any = _key("auto", solver, "static", "solver name (`auto`: by the data)")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "flow": FlowConfig}

# Every key of the sections by its bare name (unique across sections, which is what
# lets a sweep's `grid` and `runs` name them without the section).
KEYS: dict[str, tuple[str, dataclasses.Field]] = {
    f.name: (section, f)
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
}


def check_key(key: str, value: Any, where: str | None = None) -> Any:
    """`value` checked and converted for the bare key `key` (`None`: unset);
    `where` names it in errors (default `section.key`)."""
    section, f = KEYS[key]
    where = f"{section}.{key}" if where is None else where
    if value is None and f.default is None:
        return None
    return f.metadata["check"](where, value)


def check_point(p: Mapping[str, Any], where: Callable[[str], str] | None = None) -> None:
    """The checks that involve several keys of one run (all keys given, bare names)."""
    where = where or (lambda k: f"{KEYS[k][0]}.{k}")
    gen = p["generator"]
    allowed = GENERATOR_ARGS[gen]
    for key, (section, _) in KEYS.items():
        if section == "data" and key != "generator" and key not in allowed:
            if p.get(key) is not None:
                fail(
                    where(key),
                    f"is not an argument of the {gen} generator (it takes "
                    f"{sorted(allowed)})",
                )
    if p["atol"] is not None and p["atol_per_scale"] is not None:
        fail(where("atol"), f"and {where('atol_per_scale')}: give one of them, not both")
    if not 0.0 <= p["leak"] < 1.0:
        fail(where("leak"), f"must be in [0, 1), got {p['leak']!r}")
    if p["t_min_ratio"] > 1.0:
        fail(where("t_min_ratio"), f"must be in (0, 1], got {p['t_min_ratio']!r}")


def parse_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys `config`'s `data`, `model` and `flow` sections set, checked, by bare
    name. Unknown keys and keys in the wrong section raise `ValueError` naming them."""
    fixed: dict[str, Any] = {}
    for section in SECTIONS:
        values = config.get(section) or {}
        if not isinstance(values, Mapping):
            fail(section, "must be a mapping of keys to values")
        for key, value in values.items():
            entry = KEYS.get(key)
            if entry is None or entry[0] != section:
                hint = f" (it belongs in '{entry[0]}')" if entry is not None else ""
                fail(f"{section}.{key}", f"is not a key of the schema{hint}")
            fixed[key] = check_key(key, value)
    return fixed


def parse_record(record: Any) -> tuple[str, ...]:
    """Names of `metrics.RECORDERS` (`"standard"`: `metrics.STANDARD`), checked."""
    if isinstance(record, str):
        record = [record]
    if not isinstance(record, Sequence):
        fail("record", f"must be a list of diagnostic names, got {record!r}")
    names: list[str] = []
    for name in record:
        if name == "standard":
            names.extend(metrics.STANDARD)
        elif name in metrics.RECORDERS:
            names.append(name)
        else:
            fail(
                f"record.{name}",
                f"is not a diagnostic; choose from {sorted(metrics.RECORDERS)} or "
                f"'standard'",
            )
    return tuple(dict.fromkeys(names))


def parse_dtype(dtype: Any) -> str:
    if dtype not in DTYPES:
        fail("dtype", f"must be 'float64' or 'float32', got {dtype!r}")
    return dtype


def parse_output(output: Any) -> str | None:
    if output is not None and not isinstance(output, str | Path):
        fail("output", f"must be a path, got {output!r}")
    return None if output is None else str(output)


def load_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is a bad config
        raise ValueError(f"cannot parse {path}: {' '.join(str(e).split())}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a config must be a mapping of sections")
    return dict(raw)


def add_set_option(parser, example: str) -> None:
    """The repeatable `--set SECTION.KEY=VALUE` option of every `ncjax` command that
    takes a config (`args.assignments`, read by `parse_assignment`)."""
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"set a key, e.g. {example} (value in YAML syntax; repeatable)",
    )


def parse_assignment(item: str) -> tuple[str, Any]:
    """`"section.key=value"` (value in YAML syntax) as `("section.key", value)`."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse the value of {key}: {' '.join(str(e).split())}")
    return key, value


def set_in(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the nested `config` with `section.key` (or a top-level key) set."""
    config = dict(config)
    section, dot, name = key.partition(".")
    if not dot:
        config[key] = value
        return config
    inner = config.get(section) or {}
    if not isinstance(inner, Mapping):
        fail(section, "must be a mapping of keys to values")
    config[section] = {**inner, name: value}
    return config


def load_config_file(path: Path) -> dict[str, Any]:
    """`load_file`, with a relative `output` taken relative to the file (as the
    commands read a `--config`)."""
    raw = load_file(path)
    if raw.get("output") is not None and not Path(raw["output"]).is_absolute():
        raw["output"] = str(Path(path).parent / raw["output"])
    return raw


def apply_flags(raw: dict[str, Any], args, aliases: Mapping[str, str]) -> dict[str, Any]:
    """`raw` with a command's short flags (`aliases`: flag -> `section.key`, where
    given) and then its `--set` assignments applied, in that order."""
    items = [
        (key, getattr(args, flag))
        for flag, key in aliases.items()
        if getattr(args, flag) is not None
    ]
    items += [parse_assignment(item) for item in args.assignments]
    data = raw.get("data")
    inherited = set(data) if isinstance(data, Mapping) else set()
    for key, value in items:
        if key == "data.generator" and isinstance(raw.get("data"), Mapping):
            raw = _switch_generator(raw, value, inherited)
        elif key.startswith("data."):
            inherited.discard(key.partition(".")[2])
        raw = set_in(raw, key, value)
    return raw


def _switch_generator(raw: dict[str, Any], new: Any, inherited: set[str]) -> dict[str, Any]:
    """`raw` with the data arguments that the file or the default problem gave for
    another generator dropped, where the new generator does not take them (a flag
    that switches `data.generator` starts from that generator's defaults). Arguments
    set by flags stay, and are refused by name if the generator does not take them."""
    old = raw["data"].get("generator", "orthogonally_separable")
    if new == old or new not in GENERATOR_ARGS:
        return raw
    taken = GENERATOR_ARGS[new]
    data = {k: v for k, v in raw["data"].items() if k in taken or k not in inherited}
    return {**raw, "data": data}


def plain(v):
    """A JSON/YAML-friendly copy of a value (tuples as lists, numpy as Python)."""
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return repr(v)


# -- a run ---------------------------------------------------------------------------------


RUN_KEYS = ("name", "data", "model", "flow", "record", "dtype", "output")
SWEEP_ONLY = ("grid", "runs", "execution")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The configuration of one gradient flow: a sweep of one point.

    Sections (every key with its default and meaning in the docs page *Command line*):

    - `data`: `generator` (`orthogonally_separable`, `block_orthogonal`, `mnist`,
      `iclr_toy`) and its arguments (`data_seed`, `num_classes`, `points_per_class`,
      `dim`, `mu_s`, `mu_d`, `norm_min`, `norm_max`, `rotate`; `block_dim`, `spread`;
      `digits`, `per_class`, `center`; `toy`). Unset arguments take the generator's
      defaults.
    - `model`: `width`, `init`, `leak`, `scale`, `seed`.
    - `flow`: `t1`, `rtol`, `atol` or `atol_per_scale`, `loss`, `reduction`,
      `max_steps`, `num_saves`, `t_min_ratio` (saves at `log_times(t1, num_saves,
      t_min_ratio * t1)`), `solver`. Unset tolerances are `gradient_flow`'s defaults.
    - `record`: names of `neuralcollapse_jax.metrics.RECORDERS`, or `"standard"`.
    - `dtype`: `float64` or `float32`; `output`: where the results go; `name`.

    Build one with `RunConfig.from_dict`, `RunConfig.load` (YAML/JSON) or directly
    from the section dataclasses. **Raises:** `ValueError` naming the key for an
    unknown key or an impossible value.
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    flow: FlowConfig = FlowConfig()
    record: tuple[str, ...] = DEFAULT_RECORD
    dtype: str = "float64"
    output: str | None = None
    name: str = "run"

    def __post_init__(self):
        for s, cls in SECTIONS.items():
            if not isinstance(getattr(self, s), cls):
                fail(s, f"must be a {cls.__name__}, got {getattr(self, s)!r}")
        object.__setattr__(self, "record", parse_record(self.record))
        parse_dtype(self.dtype)
        object.__setattr__(self, "output", parse_output(self.output))
        check_point(self.flat())

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> RunConfig:
        """From nested plain data (what a YAML/JSON file holds)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"a config must be a mapping, got {type(config).__name__}")
        for key in config:
            if key in SWEEP_ONLY:
                fail(
                    str(key),
                    "describes several runs: give this file to `ncjax sweep` "
                    "(or remove it for a single run)",
                )
            if key not in RUN_KEYS:
                fail(str(key), f"is not a key of the schema; the keys are {list(RUN_KEYS)}")
        fixed = parse_sections(config)
        sections = {
            s: cls_(**{k: v for k, v in fixed.items() if KEYS[k][0] == s})
            for s, cls_ in SECTIONS.items()
        }
        return cls(
            **sections,
            record=config.get("record", DEFAULT_RECORD) or (),
            dtype=config.get("dtype", "float64"),
            output=config.get("output"),
            name=str(config.get("name", "run")),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """From a YAML or JSON file."""
        return cls.from_dict(load_file(path))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `"section.key": value` (or top-level key) changes, checked:
        `config.replace(**{"flow.t1": 100.0})`."""
        raw = self.to_dict()
        for key, value in changes.items():
            section, dot, name = key.partition(".")
            if dot and (section not in SECTIONS or KEYS.get(name, ("",))[0] != section):
                fail(key, "is not a key of the schema")
            raw = set_in(raw, key, value)
        return RunConfig.from_dict(raw)

    def flat(self) -> dict[str, Any]:
        """Every section key by its bare name."""
        return {k: getattr(getattr(self, s), k) for k, (s, _) in KEYS.items()}

    def to_dict(self) -> dict[str, Any]:
        """The configuration as nested plain data (`from_dict` reads it back)."""
        out: dict[str, Any] = {"name": self.name}
        for s in SECTIONS:
            out[s] = plain(dataclasses.asdict(getattr(self, s)))
        taken = GENERATOR_ARGS[self.data.generator]
        out["data"] = {  # the generator and its arguments
            k: v for k, v in out["data"].items() if k == "generator" or k in taken
        }
        out["record"] = list(self.record)
        out["dtype"] = self.dtype
        out["output"] = self.output
        return out


def resolve_rtol(rtol: float | None, dtype: str = "float64") -> float:
    """`flow.rtol`, unset meaning `gradient_flow`'s default for `dtype`."""
    return default_rtol(np.dtype(dtype)) if rtol is None else rtol


def build_data(p: Mapping[str, Any], key, dtype):
    """The `Dataset` that the data keys in `p` (bare names) describe; `key` is the PRNG
    key of the random generators."""
    gen = p["generator"]
    kwargs = {k: p[k] for k in GENERATOR_ARGS[gen] if p[k] is not None and k != "data_seed"}
    if gen == "orthogonally_separable":
        lo = kwargs.pop("norm_min", None)
        hi = kwargs.pop("norm_max", None)
        if lo is not None or hi is not None:
            lo = hi if lo is None else lo
            hi = lo if hi is None else hi
            kwargs["norm_range"] = (lo, hi)
        return datasets.orthogonally_separable(key, dtype=dtype, **kwargs)
    if gen == "block_orthogonal":
        return datasets.block_orthogonal(key, dtype=dtype, **kwargs)
    if gen == "mnist":
        return datasets.mnist(dtype=dtype, **kwargs)
    return datasets.iclr_toy(kwargs.get("toy", "mu_large"), dtype=dtype)


def out_dim(loss: str, num_classes: int) -> int:
    """`K_out`: one output for the binary losses, `K` otherwise."""
    return 1 if loss in ("exponential", "logistic") else num_classes


# -- named configurations with keys of their own (the reproductions) -------------------


def setting(default, key: str, doc: str = ""):
    """A field of a named configuration, addressed as `key` (`section.key`): a key of
    the schema (checked as there) or one of the configuration's own section."""
    return dataclasses.field(default=default, metadata={"key": key, "doc": doc})


def setting_keys(cls) -> dict[str, str]:
    """`section.key -> field name` of a named configuration's dataclass."""
    return {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, hint) -> Any:
    """`value` checked and converted to the annotated type `hint` (strings as numbers
    where a number is wanted, a scalar as a one-element tuple); then, for a key of the
    schema, checked as there."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = (value,)
        return tuple(coerce(key, v, args[0]) for v in value)
    if hint is bool:
        return flag(key, value)
    if hint is int:
        value = _from_text(value)
        if isinstance(value, bool) or not isinstance(value, int):
            fail(key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        return number(key, value)
    if hint is str:
        if not isinstance(value, str):
            fail(key, f"must be a string, got {value!r}")
        return value
    return value


def named_config(cls, name: str, base: Mapping[str, Any], changes: Mapping[str, Any]):
    """An instance of the named configuration `cls` with `base` (field names) and then
    `changes` (by `section.key`, or by field name from Python) applied, checked.

    **Raises:** `ValueError` naming the key for an unknown key or an impossible value.
    """
    keys = setting_keys(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = dict(base)
    for key, value in changes.items():
        field = keys.get(key) or (key if key in fields else None)
        if field is None:
            fail(key, f"is not a setting of {name}; the settings are {sorted(keys)}")
        full = fields[field].metadata.get("key", field)
        value = coerce(full, value, hints[field])
        section, _, bare = full.partition(".")
        if section in SECTIONS and value is not None:
            checked = check_key(bare, value, where=full)
            if not isinstance(value, tuple):
                value = checked
        values[field] = value
    return cls(**values)


def nested(cfg) -> dict[str, Any]:
    """A named configuration as nested plain data, by `section.key`."""
    out: dict[str, Any] = {s: {} for s in SECTIONS}
    for f in dataclasses.fields(cfg):
        key = f.metadata.get("key", f.name)
        out = set_in(out, key, plain(getattr(cfg, f.name)))
    sections = {k: v for k, v in out.items() if isinstance(v, dict) and v}
    return {**sections, **{k: v for k, v in out.items() if not isinstance(v, dict)}}


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line."""


_Dumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def to_yaml(config: Mapping[str, Any]) -> str:
    """A config as YAML, in the order given."""
    return yaml.dump(plain(config), Dumper=_Dumper, sort_keys=False)
