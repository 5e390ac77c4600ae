"""From a config to blocks of runs: host-side data, compile groups, run order, chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from .._config import GENERATOR_ARGS, auto_solver, build_data, out_dim, solver_name
from .._flow import log_times
from .._loss import check_loss
from ._config import PARAMS, SweepConfig, _hashable


TRACED = tuple(k for k, p in PARAMS.items() if p.kind == "traced")
STATIC = tuple(k for k, p in PARAMS.items() if p.kind == "static")
DATA = tuple(k for k, p in PARAMS.items() if p.kind == "data")


def data_key(p: dict[str, Any]) -> tuple:
    """The parameters that determine a run's data set."""
    gen = p["generator"]
    return (gen,) + tuple((k, _hashable(p[k])) for k in GENERATOR_ARGS[gen])


def make_data(p: dict[str, Any], dtype: str):
    """The `Dataset` of a run (on the host; raises `ValueError` for impossible ones)."""
    return build_data(p, jax.random.key(p["data_seed"] or 0), dtype)


@dataclass
class Block:
    """Runs that share one compiled solve: equal shapes and static settings."""

    index: int
    static: dict[str, Any]  # STATIC parameters
    n: int
    D: int
    K: int
    runs: list[int] = field(default_factory=list)  # global run indices, in run order
    shared_data: bool = True

    @property
    def key(self) -> tuple:
        """What runs of one block share: the shapes and every static setting, by value
        (a setting that cannot be hashed, such as a solver object holding arrays, by
        identity: the plan holds it for as long as the key is used)."""
        return (self.n, self.D, self.K) + tuple(
            (k, _static_key(self.static[k])) for k in STATIC
        )


def _static_key(value: Any) -> Any:
    if isinstance(value, list | tuple | str | int | float | None):
        return _hashable(value)
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value


@dataclass
class Plan:
    config: SweepConfig
    params: list[dict[str, Any]]
    data: dict[tuple, Any]  # data_key -> Dataset
    run_data: list[tuple]  # run index -> data_key
    blocks: list[Block]


def _describe(p: dict[str, Any], keys) -> str:
    return ", ".join(f"{k}={p[k]!r}" for k in keys)


def make_plan(config: SweepConfig) -> Plan:
    """Generate every distinct data set, check every run, and group the runs.

    Fails with a `ValueError` naming the swept keys before anything runs: an
    impossible geometry, a loss that does not fit the data, a model that cannot be
    built.
    """
    params = config.run_params()
    swept = config.swept()
    data: dict[tuple, Any] = {}
    run_data: list[tuple] = []
    for p in params:
        key = data_key(p)
        if key not in data:
            try:
                data[key] = make_data(p, config.dtype)
            except ValueError as e:
                keys = [k for k in GENERATOR_ARGS[p["generator"]] if k in swept]
                keys = keys or [
                    k
                    for k in GENERATOR_ARGS[p["generator"]]
                    if config.fixed.get(k) is not None
                ]
                named = ", ".join(f"{config.where(k)}={p[k]!r}" for k in keys) or (
                    f"data.generator={p['generator']!r}"
                )
                raise ValueError(f"{named}: impossible data set: {e}") from None
        run_data.append(key)

    blocks: dict[tuple, Block] = {}
    # `solver: default` is resolved per data set and `sliding`'s tableau per rtol, on
    # the host, as `gradient_flow` resolves them for a single run (where the data and
    # the rtol would be traced inside the compiled solve).
    auto: dict[tuple, str] = {}  # auto_solver once per data set
    for i, p in enumerate(params):
        ds = data[run_data[i]]
        static = {k: p[k] for k in STATIC}
        if isinstance(static["solver"], str) and static["solver"] == "auto":
            if run_data[i] not in auto:
                auto[run_data[i]] = auto_solver(ds)
            static["solver"] = auto[run_data[i]]
        static["solver"] = solver_name(static["solver"], ds, float(p["rtol"]))
        try:
            check_loss(
                p["loss"],
                p["reduction"],
                out_dim(p["loss"], ds.num_classes),
                ds.num_classes,
            )
        except ValueError as e:
            raise ValueError(f"{config.where('loss')}={p['loss']!r}: {e}") from None
        if (
            p["init"] == "semi_local"
            and p["loss"] in ("exponential", "logistic")
            and (ds.num_classes != 2)
        ):
            raise ValueError(
                f"{config.where('init')}='semi_local' with a binary loss needs K = 2 "
                "classes"
            )
        b = Block(0, static, ds.num_samples, ds.dim, ds.num_classes)
        blocks.setdefault(b.key, b).runs.append(i)
    ordered = list(blocks.values())
    for j, b in enumerate(ordered):
        b.index = j
        b.runs = order_runs(b.runs, params, run_data)
        b.shared_data = len({run_data[i] for i in b.runs}) == 1
    return Plan(config, params, data, run_data, ordered)


def order_runs(runs: list[int], params, run_data) -> list[int]:
    """Order a block's runs so that neighbours finish together.

    Runs that differ only in their init scale start from the same direction and share
    their dynamics up to a time shift of `log(1/eps)`: with the adaptive error
    control relative to the scale, their step counts are close, closer than across
    seeds. So the scale varies fastest, the seed next, and chunks hold runs of similar cost.
    """

    def key(i):
        p = params[i]
        return (
            str(run_data[i]),
            p["t1"],
            p["rtol"],
            -1.0 if p["atol"] is None else p["atol"],
            -1.0 if p["atol_per_scale"] is None else p["atol_per_scale"],
            p["seed"],
            p["scale"],
            i,
        )

    return sorted(runs, key=key)


def traced_arrays(plan: Plan, runs: list[int], dtype) -> dict[str, np.ndarray]:
    """The per-run arrays of a chunk: init scale, seed, horizon, save times, tolerances."""
    ps = [plan.params[i] for i in runs]
    scale = np.array([p["scale"] for p in ps], dtype=dtype)
    atol = np.array(
        [
            p["atol"]
            if p["atol"] is not None
            else (
                p["atol_per_scale"] * p["scale"] if p["atol_per_scale"] is not None else 0.0
            )
            for p in ps
        ],
        dtype=dtype,
    )
    ts = np.stack(
        [log_times(p["t1"], p["num_saves"], t_min=p["t_min_ratio"] * p["t1"]) for p in ps]
    ).astype(dtype)
    return {
        "scale": scale,
        "seed": np.array([p["seed"] for p in ps], dtype=np.int64),
        "t1": np.array([p["t1"] for p in ps], dtype=dtype),
        "ts": ts,
        "rtol": np.array([p["rtol"] for p in ps], dtype=dtype),
        "atol": atol,
    }


def chunk_runs(block: Block, done: set[int], chunk_size: int) -> list[list[int]]:
    """The block's runs not yet done, in run order, cut into chunks."""
    todo = [i for i in block.runs if i not in done]
    return [todo[k : k + chunk_size] for k in range(0, len(todo), chunk_size)]
