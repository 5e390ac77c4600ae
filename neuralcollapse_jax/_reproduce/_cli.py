"""`ncjax reproduce NAME`: the papers' figures, regenerated."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from .._config import add_set_option, parse_assignment
from . import DESCRIPTIONS, config, reproduce, show_config


def add_parser(sub) -> None:
    names = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = sub.add_parser(
        "reproduce",
        help=(
            "reproduce a figure of the papers "
            "(mnist01, mnist012, toy, theorem1, normalization)"
        ),
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
    add_set_option(
        p,
        "--set data.per_class=100 --set theorem1.scales=[1e-3,1e-5] (keys: --show-config)",
    )
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved settings as YAML and run nothing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict:
    """`--set SECTION.KEY=VALUE` items as `{"section.key": value}`."""
    options = {}
    for item in items:
        key, value = parse_assignment(item)
        if "." not in key and key != "dtype":
            raise ValueError(
                f"--set {item}: name the key with its section (see --show-config), "
                f"e.g. model.width=20"
            )
        options[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    options = parse_options(args.assignments)
    if args.show_config:
        sys.stdout.write(show_config(config(args.name, args.quick, **options)))
        return 0
    jax.config.update("jax_enable_x64", True)
    results = reproduce(args.name, args.out, quick=args.quick, quiet=args.quiet, **options)
    return 0 if results.get("ok", True) else 1
