"""Reproductions of the papers' figures: `ncjax reproduce NAME` and `reproduce(NAME)`.

Each reproduction runs the dynamics in the setting of a figure of Min, Mallada and
Vidal (ICLR 2024) or Min, Zhu and Vidal (NeurIPS 2025), writes PNG figures and a
`results.json` of its numbers (ours next to the paper's) to an output folder, and
returns the same numbers as a dict.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .._config import named_config, nested, to_yaml
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
    """The settings of reproduction `name`.

    **Arguments:**

    - `name`: as for `reproduce`.
    - `quick`: the quick run's settings instead of the full run's.
    - `options`: changes, named by key as on the command line (`**{"model.width": 8}`)
      or by attribute name (`width=8`); values may be strings (`"1e-3"`).

    **Returns:**

    The frozen settings that `reproduce(name, quick=quick, **options)` runs with, by
    attribute (`.width`, `.t1`, ...).

    **Raises:** `ValueError` naming the key for an unknown name, key or value.
    """
    if name not in REPRODUCTIONS:
        raise ValueError(
            f"unknown reproduction {name!r}; choose one of {sorted(REPRODUCTIONS)}"
        )
    module = REPRODUCTIONS[name]
    return named_config(module.Config, name, module.QUICK if quick else {}, options)


# The public name (`neuralcollapse_jax.reproduce_config`).
reproduce_config = config


def show_config(cfg) -> str:
    """A reproduction's settings as YAML, by `section.key`."""
    return to_yaml(nested(cfg))


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

    - `name`: `"mnist01"`, `"mnist012"`, `"toy"`, `"theorem1"` or `"normalization"`
      (see the docs page *Reproductions*).
    - `out`: output folder (default `ncjax-out/reproduce/NAME`).
    - `quick`: a small, fast version (fewer samples, shorter horizon) with the same
      figures and numbers; used by the test suite.
    - `quiet`: no progress lines on stderr.
    - `options`: changes of the reproduction's settings, by key (`**{"model.width":
      8}`, the names of `ncjax reproduce NAME --show-config`) or attribute name
      (`width=8`).

    **Returns:**

    The dict written to `results.json` (with `"files"`, the files written, and
    `"wall_time_s"`).

    **Raises:** `ValueError` for an unknown name or option, or an unusable output folder.
    """
    cfg = config(name, quick, **options)
    check = getattr(REPRODUCTIONS[name], "check", None)
    if check is not None:  # settings that only the reproduction can judge
        check(cfg)
    folder = DEFAULT_ROOT / name if out is None else Path(out)
    output = Output(folder, name, quiet=quiet)
    output.log(f"{'quick' if quick else 'full'} run, writing to {folder}/")
    start = time.perf_counter()
    results = REPRODUCTIONS[name].run(cfg, output)
    results["config"] = nested(cfg)
    results["quick"] = bool(quick)
    results["wall_time_s"] = time.perf_counter() - start
    results["files"] = sorted(set(output.files) | {"results.json"})
    output.write_json(results)
    output.log(f"done: {', '.join(results['files'])}")
    return results
