"""Reproductions of the papers' figures: `ncjax reproduce NAME` and `reproduce(NAME)`.

Each reproduction runs the dynamics in the setting of a figure of Min, Mallada and
Vidal (ICLR 2024) or Min, Zhu and Vidal (NeurIPS 2025), writes PNG figures and a
`results.json` of its numbers (ours next to the paper's) to an output folder, and
returns the same numbers as a dict.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from pathlib import Path
from typing import Any

from . import _mnist01, _mnist012, _normalization, _theorem1, _toy
from ._output import Output


REPRODUCTIONS = {
    "mnist01": _mnist01,
    "mnist012": _mnist012,
    "toy": _toy,
    "theorem1": _theorem1,
    "normalization": _normalization,
}

DESCRIPTIONS = {
    "mnist01": "ICLR 2024 Fig. 5: MNIST 0 vs 1, exponential loss, alignment then growth",
    "mnist012": "NeurIPS 2025 Fig. 3: MNIST 0/1/2, cross-entropy, exact flow and SGD",
    "toy": "ICLR 2024 App. A.2/A.3: 2-D examples, effect of mu, orthogonal inputs",
    "theorem1": "NeurIPS 2025 Theorem 1 on synthetic orthogonally separable data",
    "normalization": "NeurIPS 2025 Figs. 4-5: ResNet, normalization, two-layer ReLU head",
}

DEFAULT_ROOT = Path("ncjax-out") / "reproduce"


def config(name: str, quick: bool = False, **options: Any):
    """The settings of reproduction `name`: the full run, or the `quick` one, with
    `options` overriding fields. **Raises:** `ValueError` for an unknown name or field.
    """
    if name not in REPRODUCTIONS:
        raise ValueError(
            f"unknown reproduction {name!r}; choose one of {sorted(REPRODUCTIONS)}"
        )
    module = REPRODUCTIONS[name]
    cls = module.Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for {name}; options are {sorted(fields)}"
        )
    values = dict(module.QUICK) if quick else {}
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        values[key] = _coerce(key, value, hints[key])
    return cls(**values)


def _coerce(key: str, value: Any, hint) -> Any:
    """Check and convert an option value against its annotated type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = (value,)
        return tuple(_coerce(key, v, args[0]) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"option {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"option {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"option {key} must be a string, got {value!r}")
        return value
    return value


def reproduce(
    name: str,
    out: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    quiet: bool = False,
    **options: Any,
) -> dict[str, Any]:
    r"""Run reproduction `name` and write its figures and `results.json` to `out`.

    **Arguments:**

    - `name`: `"mnist01"`, `"mnist012"`, `"toy"` or `"theorem1"` (see the docs page
      *Reproductions*).
    - `out`: output folder (default `ncjax-out/reproduce/NAME`).
    - `quick`: a small, fast version (fewer samples, shorter horizon) with the same
      figures and numbers; used by the test suite.
    - `quiet`: no progress lines on stderr.
    - `options`: overrides of the reproduction's settings (its `Config` fields).

    **Returns:**

    The dict written to `results.json` (with `"files"`, the files written, and
    `"wall_time_s"`).

    **Raises:** `ValueError` for an unknown name or option, or an unusable output folder.
    """
    cfg = config(name, quick, **options)
    folder = DEFAULT_ROOT / name if out is None else Path(out)
    output = Output(folder, name, quiet=quiet)
    output.log(f"{'quick' if quick else 'full'} run, writing to {folder}/")
    start = time.perf_counter()
    results = REPRODUCTIONS[name].run(cfg, output)
    results["config"] = dataclasses.asdict(cfg)
    results["quick"] = bool(quick)
    results["wall_time_s"] = time.perf_counter() - start
    results["files"] = sorted(set(output.files) | {"results.json"})
    output.write_json(results)
    output.log(f"done: {', '.join(results['files'])}")
    return results
