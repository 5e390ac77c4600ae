"""`ncjax reproduce NAME`: the papers' figures, regenerated."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    from . import DESCRIPTIONS

    names = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = sub.add_parser(
        "reproduce",
        help="reproduce a figure of the papers (mnist01, mnist012, toy, theorem1)",
        description=(
            "Run one reproduction and write its PNG figures and results.json (our numbers "
            f"next to the paper's) to an output folder. Reproductions: {names}."
        ),
    )
    p.add_argument("name", choices=sorted(DESCRIPTIONS), help="which reproduction")
    p.add_argument(
        "--out", type=Path, help="output folder (default ncjax-out/reproduce/NAME)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small, fast version (fewer samples, shorter run)",
    )
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set per_class=100 --set scales=[1e-3,1e-5] "
        "(values in YAML syntax; repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict:
    import yaml

    from .._cli import CliError

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise CliError(
                f"cannot parse the value of {key}: {' '.join(str(e).split())}"
            ) from e
        options[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import reproduce

    options = parse_options(args.options)
    results = reproduce(args.name, args.out, quick=args.quick, quiet=args.quiet, **options)
    return 0 if results.get("ok", True) else 1
