"""The flow solver of the MNIST reproductions."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._dataset import Dataset
from .._sliding import CROSSINGS, SlidingReLU
from .._solvers import resolve_solver, solver_name


def check_crossings(crossings: str) -> None:
    """A reproduction's `crossings` setting must name a treatment of `SlidingReLU`."""
    if crossings not in CROSSINGS:
        raise ValueError(f"crossings must be one of {CROSSINGS}, got {crossings!r}")


def flow_kwargs(
    solver: str | None,
    max_sliding: int | None,
    crossings: str,
    data: Dataset,
    rtol: float,
) -> dict[str, Any]:
    """`gradient_flow` keyword arguments for a reproduction's `solver`, `max_sliding`
    and `crossings` settings: `{}` for `solver=None` (the flow's default), else the
    named solver, with `max_sliding` slots per neuron and that treatment of
    transversal crossings if it is a sliding one."""
    check_crossings(crossings)
    if solver is None:
        return {}
    resolved = resolve_solver(solver, data, rtol)
    if isinstance(resolved, SlidingReLU):
        return {
            "solver": dataclasses.replace(
                resolved, max_sliding=max_sliding, crossings=crossings
            )
        }
    return {"solver": solver_name(solver, data, rtol)}
