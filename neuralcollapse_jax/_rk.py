"""Explicit Runge-Kutta with its stages unrolled: Diffrax's tableaus, a leaner step.

Diffrax's `AbstractERK.step` runs the stages of a step in an inner loop (an
`eqxi.while_loop` over a buffer holding every stage), which lets one implementation
serve explicit, implicit and stochastic methods. For the small states of this toolkit,
vmapped over thousands of runs on a GPU, that loop is the largest cost of a step: each
stage writes its slot of the buffer and reads the whole buffer back for the next
stage's combination, and each stage is a loop iteration whose condition the host
waits for. Diffrax has no unrolled variant, hence this one: the same tableau, error
estimate, dense output and step-size control, with the stages written out at trace
time and only the nonzero coefficients combined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def weighted_sum(ks, coeffs, like):
    """`sum_j b_j k_j` over the nonzero `b_j`; zeros shaped like `like` if none."""
    terms = [(float(b), k) for b, k in zip(coeffs, ks) if b != 0]
    if not terms:
        return jax.tree.map(jnp.zeros_like, like)

    def leaf(*kl):
        out = jnp.asarray(terms[0][0], kl[0].dtype) * kl[0]
        for (b, _), k in zip(terms[1:], kl[1:]):
            out = out + jnp.asarray(b, k.dtype) * k
        return out

    return jax.tree.map(leaf, *[k for _, k in terms])


def combine(y0, ks, coeffs):
    """`y0 + sum_j a_j k_j` over the nonzero `a_j` (as Python floats: the tableau is
    static), summed from `y0` on (`1.0 * y0` is exact)."""
    return weighted_sum([y0, *ks], [1.0, *coeffs], y0)


Y = TypeVar("Y")


def explicit_stages(
    tableau: diffrax.ButcherTableau,
    y0: Y,
    k0: Y,
    stage: Callable[[int, float, Y], tuple[Y, Y, Any]],
) -> tuple[list[Y], Y, list[Any]]:
    """The stage loop of an explicit Runge-Kutta step, written out at trace time.

    For each row `s` of the tableau's `a`, forms `y_s = y0 + sum_j a_sj k_j` (over the
    nonzero `a_sj`) and calls `stage(s, c_s, y_s)`, which returns the stage point it
    used (`y_s`, or `y_s` corrected), the increment `k_{s+1} = dt f(y_s)` and anything
    else to keep. `k0 = dt f(y0)` is the first increment.

    **Returns:**

    The increments `[k0, k1, ...]`, the last stage point (`y1` for first-same-as-last
    tableaus) and the list of what `stage` kept.
    """
    ks = [k0]
    ys = y0
    kept = []
    for s, (c, a_row) in enumerate(zip(np.asarray(tableau.c), tableau.a_lower)):
        ys = combine(y0, ks, np.asarray(a_row))
        ys, k, extra = stage(s, float(c), ys)
        ks.append(k)
        kept.append(extra)
    return ks, ys, kept


class AbstractTableauSolver(diffrax.AbstractAdaptiveSolver):
    """A solver built on the tableau of a Diffrax explicit Runge-Kutta solver `inner`:
    its order, error order and dense interpolation are `inner`'s."""

    inner: eqx.AbstractVar[diffrax.AbstractERK]

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.inner.interpolation_cls

    def order(self, terms):
        return self.inner.order(terms)

    def error_order(self, terms):
        return self.inner.error_order(terms)


class UnrolledERK(AbstractTableauSolver):
    """An explicit Runge-Kutta method of Diffrax with its stages unrolled.

    Same method as `inner` (its Butcher tableau, embedded error estimate, dense
    interpolation and order), for an `ODETerm`; results agree with `inner` to
    round-off (the stage sums are added in a different order). First-same-as-last
    tableaus keep the last stage's evaluation for the next step, as Diffrax does.

    **Arguments:**

    - `inner`: an explicit Runge-Kutta solver of Diffrax (`Tsit5()` by default,
      `Dopri5()`, `Dopri8()`, `Bosh3()`, ...).
    """

    inner: diffrax.AbstractERK = diffrax.Tsit5()

    term_structure: ClassVar = diffrax.AbstractTerm

    def __check_init__(self):
        tableau = getattr(self.inner, "tableau", None)
        if not isinstance(tableau, diffrax.ButcherTableau) or tableau.implicit:
            raise ValueError(
                "UnrolledERK needs an explicit Runge-Kutta solver of Diffrax "
                f"(Tsit5, Dopri5, Dopri8, Bosh3), got {type(self.inner).__name__}"
            )

    @property
    def _fsal(self) -> bool:
        return bool(self.inner.tableau.fsal)

    def evals_per_step(self) -> tuple[int, int]:
        """`(vector-field evaluations per step, at start)`."""
        stages = len(self.inner.tableau.c) + 1
        return (stages - 1, 1) if self._fsal else (stages, 0)

    def init(self, terms, t0, t1, y0, args) -> Any:
        del t1
        return terms.vf(t0, y0, args) if self._fsal else None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self.inner.tableau
        dt = t1 - t0
        if self._fsal:
            f0 = solver_state
            if made_jump is not False:  # after a jump the stored stage is stale
                f0 = jax.lax.cond(
                    made_jump, lambda: terms.vf(t0, y0, args), lambda: solver_state
                )
        else:
            f0 = terms.vf(t0, y0, args)
        scale = lambda f: jax.tree.map(lambda x: (dt * x).astype(x.dtype), f)  # noqa: E731

        def stage(s, c, ys):
            f = terms.vf(t0 + c * dt, ys, args)
            return ys, scale(f), f

        ks, ys, fs = explicit_stages(tab, y0, scale(f0), stage)
        f_last = fs[-1] if fs else f0
        b_sol = np.asarray(tab.b_sol)
        if self._fsal:
            # The last stage sits at y1 (its row of `a` is `b_sol`): reuse it.
            y1 = ys
            new_state = f_last
        else:
            y1 = combine(y0, ks, b_sol)
            new_state = None
        y_error = weighted_sum(ks, np.asarray(tab.b_error), y0)
        k_stack = jax.tree.map(lambda *k: jnp.stack(k), *ks)
        dense_info = dict(y0=y0, y1=y1, k=k_stack)
        return y1, y_error, dense_info, new_state, diffrax.RESULTS.successful
