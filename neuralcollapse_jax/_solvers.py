"""The solvers of the flow by name: the one place where a name becomes a solver."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import numpy as np
from jaxtyping import ArrayLike

from ._dataset import Dataset
from ._rk import UnrolledERK
from ._sliding import SlidingReLU


def _unrolled(inner: type[diffrax.AbstractERK]) -> Callable[[], diffrax.AbstractSolver]:
    return lambda: UnrolledERK(inner())


# By name, Diffrax's explicit Runge-Kutta tableaus with the stages unrolled
# (`UnrolledERK`: the same method, a leaner step; see `_rk.py`).
REGULAR_SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "regular": _unrolled(diffrax.Tsit5),
    "tsit5": _unrolled(diffrax.Tsit5),
    "dopri5": _unrolled(diffrax.Dopri5),
    "dopri8": _unrolled(diffrax.Dopri8),
    "bosh3": _unrolled(diffrax.Bosh3),
}
# Low-order Diffrax solvers as Diffrax has them (for comparisons with descent).
PLAIN_SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "heun": diffrax.Heun,
    "euler": diffrax.Euler,
}
SLIDING_TABLEAUS: dict[str, type[diffrax.AbstractERK]] = {
    "sliding_bosh3": diffrax.Bosh3,
    "sliding_tsit5": diffrax.Tsit5,
}
# Sliding with the kink events located inside steps (`crossings="locate"`) and the
# transversal crossings corrected inside them (`correct_crossings=True`), Tsit5.
EVENTS = "events"

SOLVER_NAMES: tuple[str, ...] = (
    "auto",
    EVENTS,
    "sliding",
    *SLIDING_TABLEAUS,
    *REGULAR_SOLVERS,
    *PLAIN_SOLVERS,
)


def _classes_orthogonal(data: Dataset, block: int = 1024) -> bool:
    """Whether `<x_i, x_k> >= 0` within every class and `<= 0` across classes.

    Orthogonal separability (`mu_s > 0`, `mu_d > 0`,
    `datasets.separability`) with its boundary cases included (orthogonal pairs, as in
    block-orthogonal classes: such a pair does not act on the other's kink). Rows are
    compared a block at a time, with an early exit, so that memory stays
    `O(block n)` and data that fail (such as centered MNIST) fail in the first block.
    """
    x = np.asarray(data.x, dtype=np.float64)
    y = np.asarray(data.y)
    n = x.shape[0]
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        G = x[rows] @ x.T
        same = y[rows, None] == y[None, :]
        self_pair = np.arange(start, rows.stop)[:, None] == np.arange(n)[None, :]
        if np.any(G[same & ~self_pair] < 0) or np.any(G[~same] > 0):
            return False
    return True


def auto_solver(data: Dataset) -> str:
    """The solver name that `solver="auto"` (the default) picks for `data`: `"events"`
    (`SlidingReLU` with its kink events located inside steps) on any data, concrete or
    traced.

    The regular field chatters wherever a pair slides, and pairs slide on orthogonally
    separable data too (a few, early in the alignment phase), where the regular solver
    was the default before and ran out of steps at tight tolerances; with the events
    located the sliding solver is as accurate there at no more gradient evaluations
    (docs page *Sliding*). `classes_orthogonal(data)` still tells whether the classes
    are orthogonally separable.
    """
    del data
    return EVENTS


classes_orthogonal = _classes_orthogonal


# `solver="sliding"` uses the Bosh3 tableau from this rtol up and Tsit5 below it: with
# the transversal kink crossings of ReLU data a third-order step is as accurate per
# gradient evaluation as a fifth-order one at loose tolerances, while at tight
# tolerances the higher order wins (docs page *Sliding*).
SLIDING_BOSH3_RTOL = 1e-6


def sliding_tableau(rtol: float | ArrayLike | None) -> str:
    """`"bosh3"` or `"tsit5"`: the tableau of `solver="sliding"` at this `rtol`
    (`"tsit5"` when `rtol` is traced or not given)."""
    if rtol is None or isinstance(rtol, jax.core.Tracer) or np.ndim(rtol) != 0:
        return "tsit5"
    return "bosh3" if float(np.asarray(rtol)) >= SLIDING_BOSH3_RTOL else "tsit5"


def solver_name(
    solver: diffrax.AbstractSolver | str | None,
    data: Dataset | None = None,
    rtol: float | ArrayLike | None = None,
) -> diffrax.AbstractSolver | str:
    """`solver` with the choices that depend on the run made: `None`/`"auto"` becomes
    `auto_solver(data)` (`"events"`), and `"sliding"` becomes
    `"sliding_bosh3"` or `"sliding_tsit5"` (`sliding_tableau(rtol)`). Anything else is
    returned as given."""
    if solver is None or (isinstance(solver, str) and solver == "auto"):
        solver = auto_solver(data)
    if isinstance(solver, str) and solver == "sliding":
        solver = "sliding_" + sliding_tableau(rtol)
    return solver


def resolve_solver(
    solver: diffrax.AbstractSolver | str | None,
    data: Dataset | None = None,
    rtol: float | ArrayLike | None = None,
) -> diffrax.AbstractSolver:
    """The Diffrax solver for a name in `SOLVER_NAMES` (or `None`), or a solver
    instance as given.

    **Arguments:**

    - `solver`: `None` or `"auto"` (`auto_solver(data)`), `"events"` (`SlidingReLU`
      with the `Tsit5` tableau, its kink events located inside steps,
      `crossings="locate"`, and its transversal crossings corrected inside them,
      `correct_crossings=True`), `"sliding"` (`SlidingReLU`
      with the tableau `sliding_tableau(rtol)`), `"sliding_bosh3"`, `"sliding_tsit5"`,
      `"regular"` (`Tsit5`), `"tsit5"`, `"dopri5"`, `"dopri8"`, `"bosh3"` (Diffrax's
      tableaus on the regular field `relu'(0) = 0`, run by `UnrolledERK`), `"heun"`,
      `"euler"` (Diffrax's own), or a `diffrax.AbstractSolver`.
    - `data`: the training data, for `"auto"`.
    - `rtol`: the relative tolerance, for `"sliding"`.

    **Returns:**

    A `diffrax.AbstractSolver`. Raises `ValueError` for an unknown name.
    """
    solver = solver_name(solver, data, rtol)
    if isinstance(solver, str):
        if solver == EVENTS:
            return SlidingReLU(
                inner=diffrax.Tsit5(), crossings="locate", correct_crossings=True
            )
        if solver in SLIDING_TABLEAUS:
            return SlidingReLU(inner=SLIDING_TABLEAUS[solver]())
        if solver in REGULAR_SOLVERS:
            return REGULAR_SOLVERS[solver]()
        if solver in PLAIN_SOLVERS:
            return PLAIN_SOLVERS[solver]()
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVER_NAMES}")
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"solver must be a name in {SOLVER_NAMES} or a Diffrax solver, got {solver!r}"
        )
    return solver


def evals_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """`(evaluations per step, evaluations at start)` of a solver.

    Diffrax does not count vector-field evaluations; for explicit Runge-Kutta methods
    they follow from the tableau: `s` stages per step, one fewer with FSAL, plus one at
    the start for FSAL. (A solver may define `evals_per_step` itself.)
    """
    if hasattr(solver, "evals_per_step"):
        return solver.evals_per_step()
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        raise ValueError(f"cannot count gradient evaluations of {type(solver).__name__}")
    stages = len(tableau.c) + 1
    if tableau.fsal:
        return stages - 1, 1
    return stages, 0
