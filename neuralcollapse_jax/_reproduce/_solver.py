"""The flow solver of the MNIST reproductions."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._dataset import Dataset
from .._flow import SLIDING_TABLEAUS, resolve_solver, solver_name
from .._sliding import CROSSINGS


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
    named solver, with `max_sliding` slots per neuron (`None`: the solver's default,
    `default_slots`) and that treatment of transversal crossings if it is a sliding
    one."""
    check_crossings(crossings)
    if solver is None:
        return {}
    name = solver_name(solver, data, rtol)
    if isinstance(name, str) and name in SLIDING_TABLEAUS:
        # gradient_flow gives a SlidingReLU instance its own loss and reduction.
        sliding = resolve_solver(name, "cross_entropy", "sum")
        return {
            "solver": dataclasses.replace(
                sliding, max_sliding=max_sliding, crossings=crossings
            )
        }
    return {"solver": name}
