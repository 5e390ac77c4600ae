"""The `ncjax` command line."""

from __future__ import annotations

import argparse
import sys

from . import _cli_run
from ._reproduce import _cli as _cli_reproduce
from ._sweep import _cli as _cli_sweep


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit code 2
        sys.stderr.write(f"ncjax: error: {message}\n")
        raise SystemExit(2)


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ncjax",
        description="Exact gradient-flow dynamics of shallow ReLU networks.",
    )
    parser.add_argument(
        "--version", action="version", version=f"ncjax (neuralcollapse_jax) {_version()}"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # Each subcommand's module adds a parser whose `func(args) -> int` runs it.
    _cli_run.add_parser(sub)
    _cli_sweep.add_parser(sub)
    _cli_reproduce.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # a bad option, config or input: one line, exit code 2
        msg = " ".join(str(e).split())
        sys.stderr.write(f"ncjax: error: {msg}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
