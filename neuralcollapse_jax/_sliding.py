r"""`SlidingReLU`: a Diffrax solver for the flow that does not chatter on ReLU kinks.

The flow is the differential inclusion `d theta/dt in -dL(theta)`; the solution
computed here slides on the kinks `<x_i, w_j> = 0` that attract from both sides
(Filippov's convention, the limit of gradient descent as its step shrinks). The
algebra of the sliding sets is in `_sliding_modes.py`; this module is the solver: a
first-same-as-last explicit Runge-Kutta step (the stage loop of `UnrolledERK`) under
the sliding set decided at its start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array

from ._autodiff import with_tangent
from ._batching import rare_cond
from ._crossing import (
    CrossingController,
    EventController,
    earliest,
    jointly_turned_back,
    transversal_approach,
)
from ._dataset import Dataset, transposed
from ._field import term_loss
from ._model import TwoLayerReLU
from ._rk import AbstractTableauSolver, explicit_stages, weighted_sum
from ._sliding_modes import (
    EVENT_PAIRS_IN,
    GAUSS3,
    Located,
    Mode,
    SlidingState,
    _hermite,
    c_rate,
    candidates,
    closest_approach,
    could_enter,
    default_slots,
    empty_mode,
    evaluate,
    event_gap,
    event_roots,
    event_times,
    exit_events,
    exit_sides,
    exits_at_started_crossings,
    held_on_kink,
    hermite_slope,
    inside_crossings,
    kink_correction,
    mode_holds,
    nonzero,
    pairs_of,
    project,
    return_roots,
    shifted_first,
    sliding_violations,
    slope_switch,
    slots_of,
    start_crossings,
    started_second_order,
    unfinished_error,
    update_mode,
    with_derivatives,
    with_velocity_derivatives,
)


CROSSINGS = ("locate", "land", "start", "none")

# `(pcoeff, icoeff)` of the PI step-size controller of `correct_crossings=True`.
PI_GAINS = (0.1, 0.6)

# The estimate of the error a corrected crossing leaves (`inside_crossings`: its
# third-order part, for a remainder of fourth order) is multiplied by this before it
# joins the step's error estimate. With the crossing times moved at second order and
# the crossings of one step acting on each other (`crossing_times`, `interactions`),
# the true local error of every accepted step was 0.01 to 0.18 of the estimate on the
# `ncjax run` problem (146 steps with crossings) and at most 0.07 of it on MNIST-60
# in its alignment phase (docs page *Sliding*). Before those fixes steps were up to
# 13 times their estimate, and the factor was 100.
INSIDE_SAFETY = 1.0

# The same factor in a solve that is differentiated (`SlidingReLU.for_derivatives`).
# A step's derivative through a crossing corrected inside it is within O(dt^3) of the
# exact flow map's, one order below its value (O(dt^4)): the step's error depends on
# where in the step the crossing falls, and a perturbation of the state or the data
# moves that fraction by O(1/dt) of the crossing time's shift. Steps sized by the
# value's error alone left the derivative along the data 1.2e-5 off on the docs
# page's geometry example; shorter steps with crossings bring it down (docs page
# *Differentiating the flow*, section *Steps sized for the derivatives*).
DERIVATIVE_SAFETY = 3.0


def stage_crossings(fields, tab, quiet, jump, dt, scale):
    """`(theta, cost)` of the pairs in `quiet` (not otherwise events) whose `z` is on
    the other side of its kink at an inner stage of the step than at both of its
    ends: `theta` where the first such stage puts the crossing (linear in `z` from
    the start to that stage; `inf` for the other pairs), `cost` the effect of those
    stages' far-side field on `y1`, `|dt| |sum_s b_s| jump`. A stage's `z` within
    rounding of the kink (`64 eps scale`, `scale = |x_i| |w_j|`) does not count: a
    sample repeated in a neuron's sliding set (or dependent on it) is not in the set
    itself but sits on the kink with it, where the sign of its `z` is rounding and
    its term is projected out."""
    Z0, Z1 = fields[0].Z, fields[-1].Z
    side = Z0 > 0
    quiet = quiet & ((Z1 > 0) == side)
    tiny = 64.0 * jnp.finfo(Z0.dtype).eps * scale
    c = np.asarray(tab.c)
    b = np.asarray(tab.b_sol)
    theta = jnp.full(Z0.shape, jnp.inf, Z0.dtype)
    weight = jnp.zeros_like(Z0)
    # Inner stages (the first is at the start, the last at y1), last to first so that
    # the earliest crossing stage sets `theta`.
    for s in range(len(fields) - 2, 0, -1):
        Zs = fields[s].Z
        flipped = quiet & ((Zs > 0) != side) & (jnp.abs(Zs) > tiny)
        at = float(c[s - 1]) * Z0 / nonzero(Z0 - Zs)
        theta = jnp.where(flipped, jnp.clip(at, 0.0, 1.0), theta)
        weight = weight + jnp.where(flipped, float(b[s]), 0.0)
    return theta, jnp.abs(dt) * jump * jnp.abs(weight)


def correction_ramps(s, theta, a0, a1, norm_x):
    """How much of each of the four higher-order parts of a corrected step
    (`inside_crossings`) has grown by the step fraction `s`: each crossing's part
    grown from its time `theta` as a constant jump makes it grow, by `int_theta^s
    (1 - u) (u - theta) du` (the product at the step's start), `int_theta^s u (u -
    theta) du` (at its end), `(s - theta)^3` (the transport) and `int_theta^s u (1 -
    u) du` (the first-order part's cubic rest), summed over the crossings with their
    jumps (`(a0 + theta a1) |x_i|`, `norm_x = |x_i|`) as weights, as a fraction of
    the same sums at `s = 1`. Exact at both ends of the step, and at leading order
    inside it for crossings at one time. (A linear ramp put the save times inside
    crossing steps up to 90 times the tolerance off on the `ncjax run` problem.)"""
    crossed = jnp.isfinite(theta)
    tc = jnp.where(crossed, theta, 0.0)
    a = jnp.where(crossed, jnp.maximum(s - tc, 0.0), 0.0)
    rest = jnp.where(crossed, 1.0 - tc, 0.0)
    weight = jnp.where(crossed, jnp.abs(a0 + tc * a1) * norm_x, 0.0)

    def at_end(a):
        f1 = a**3 / 3.0 + 0.5 * tc * a * a
        cubic = (tc + a) ** 2 / 2.0 - (tc + a) ** 3 / 3.0 - tc**2 / 2.0 + tc**3 / 3.0
        return (0.5 * a * a - f1, f1, a**3, cubic)

    ramps = []
    for now, end in zip(at_end(a), at_end(rest)):
        total = jnp.sum(weight * end)
        ok = total > 0
        ramps.append(jnp.where(ok, jnp.sum(weight * now) / jnp.where(ok, total, 1.0), s))
    return jnp.stack(ramps)


def crossing_time_error(
    crossed, theta, Z0, Z1, m0, m1, C0, C1, jsign, dW2, x, xt, dt, size=EVENT_PAIRS_IN
):
    """An estimate of the error that the crossing times of a corrected step leave in
    `W`: the times are moved by the earlier crossings' jumps (`crossing_times`), but
    not by the field's response to them, which grows as the square of the time since.
    That response is in the correction's higher-order parts (`dW2`, grown inside the
    step as `correction_ramps` says): at its own time a crossing's `z` is
    `rho = <x_i, sum_p ramp_p dW2_p[:, j]>` off its kink, so the crossing is off by
    `delta = -rho / z'` of the step, and its jump was taken for that much too long or
    too short: `x_i +-(1 - leak) c_ij dt delta` on neuron `j`. On the gathered
    crossings (up to `size`; beyond that the others count in the ramps' weights,
    not in the estimate). Found on the orthogonally separable set at init
    scale 1: a crossing 36% of a step after another of its neuron was placed 8e-5 of
    the step early, for an error of 3 times the tolerance against an estimate of 0.6
    (docs page *Sliding*)."""
    size = min(size, crossed.size)
    i, j = jnp.nonzero(crossed, size=size, fill_value=0)
    valid = jnp.arange(size) < jnp.sum(crossed)
    t = jnp.where(valid, theta[i, j], jnp.inf)
    js = jsign[i, j]
    a0 = js * C0[i, j] * dt
    a1 = js * (C1[i, j] - C0[i, j]) * dt
    norm_x = jnp.linalg.norm(x[i], axis=1)
    t_at = jnp.where(valid, t, 0.0)
    ramps = jax.vmap(lambda s: correction_ramps(s, t, a0, a1, norm_x))(t_at)
    grown = jnp.einsum("kd,pdk->kp", x[i], dW2[:, :, j])
    rho = jnp.sum(ramps * grown, axis=1)
    slope = hermite_slope(t_at, Z0[i, j], m0[i, j], Z1[i, j], m1[i, j])
    delta = jnp.clip(-rho / nonzero(slope), -t_at, 1.0 - t_at)
    amount = jnp.where(valid, a0 + a1 * t_at, 0.0) * delta
    coef = jnp.zeros_like(Z0).at[i, j].add(amount)
    return xt @ coef


def beyond_first(mask: Array, theta: Array, count: int) -> Array:
    """The pairs of `mask` later (in `theta`) than its `count`-th earliest (`count >=
    1`); none if it holds `count` or fewer. Pairs tied with the `count`-th are not
    beyond it: a step is never retried to end before a crossing it must hold."""
    if mask.size <= count:
        return jnp.zeros_like(mask)

    def later():
        t = jax.lax.stop_gradient(jnp.where(mask, theta, jnp.inf))
        return mask & (t > earliest(t, count)[count - 1])

    # (Only in the steps that hold more: `top_k` over M300's 15,000 pairs takes 2 ms
    # on a CPU; on every step it made that run 29% slower.)
    return rare_cond(jnp.sum(mask) > count, later, lambda: jnp.zeros_like(mask))


class CorrectedInterpolation(diffrax.AbstractLocalInterpolation):
    """The dense output of a `SlidingReLU(correct_crossings=True)` step: the
    tableau's interpolant of the near-side solution, plus each crossing's switched
    term integrated from its time on (`c_ij` linear over the step, projected like
    the field), plus the rest of the correction ramped linearly (exact at both ends
    of the step)."""

    t0: Any
    t1: Any
    inner: diffrax.AbstractLocalInterpolation
    theta: Array
    a0: Array
    a1: Array
    dW2: Array  # the rest of the correction in W, in four parts (`evaluate`)
    dV2: Array  # ... and in V, in three
    R: Array  # the loss residual at the step's ends (the far side's, `2 x n x K`)
    zc: Array  # the crossed pairs' near-side cubics of z, times their jumps' signs and dt
    x: Array
    xs: Array
    ginv: Array

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return self.evaluate(t1) - self.evaluate(t0)
        y = self.inner.evaluate(t0)
        span = self.t1 - self.t0
        s = (t0 - self.t0) / jnp.where(span == 0, 1.0, span)
        past = s > self.theta
        th = jnp.where(past, self.theta, 0.0)
        coef = jnp.where(past, (s - th) * self.a0 + 0.5 * (s * s - th * th) * self.a1, 0.0)
        dW = project(self.x.T @ coef, self.xs, self.ginv)
        norm_x = jnp.linalg.norm(self.x, axis=1)[:, None]
        ramps = correction_ramps(s, self.theta, self.a0, self.a1, norm_x)
        W = y.W + dW + jnp.tensordot(ramps, self.dW2, axes=1)
        V = y.V + jnp.tensordot(ramps[:3], self.dV2, axes=1)
        crossed = jnp.isfinite(self.theta)
        tc = jnp.where(crossed, self.theta, 0.0)
        a = jnp.where(crossed, jnp.maximum(s - tc, 0.0), 0.0)
        # The activations' part of the `V`-correction, `int R^T Delta H`, pair by
        # pair: `Delta H` on each crossed pair's near-side cubic from its time on,
        # `R` linear over the step (three Gauss-Legendre points on `[theta, s]`,
        # exact for these quartics).
        I0 = I1 = jnp.zeros_like(a)
        for xi, wq in GAUSS3:
            u = tc + 0.5 * a * (1.0 + xi)
            z = _hermite(u, *self.zc)
            I0 = I0 + 0.5 * a * wq * (1.0 - u) * z
            I1 = I1 + 0.5 * a * wq * u * z
        V = V + self.R[0].T @ I0 + self.R[1].T @ I1
        return TwoLayerReLU(W, V, y.leak)


def corrected_interpolation(inner_cls):
    """The interpolation class of a corrected step, over `inner_cls`'s."""

    def make(*, t0, t1, y0, y1, k, theta, a0, a1, dW2, dV2, R, zc, x, xs, ginv):
        inner = inner_cls(t0=t0, t1=t1, y0=y0, y1=y1, k=k)
        return CorrectedInterpolation(
            t0, t1, inner, theta, a0, a1, dW2, dV2, R, zc, x, xs, ginv
        )

    return make


class SlidingReLU(AbstractTableauSolver):
    r"""Explicit Runge-Kutta with Filippov sliding on the ReLU kinks.

    Integrates `d theta/dt in -dL(theta)` for `TwoLayerReLU` models, holding each
    (sample, neuron) pair whose boundary `<x_i, w_j> = 0` attracts from both sides on
    that boundary (see the module docstring and the docs page *Sliding*). The ReLU is
    not smoothed. Between mode changes the step is the one of the wrapped tableau
    (`Tsit5` by default), with its error estimate and dense output; the sliding set is
    decided from the last stage of the previous step (first same as last), so a step
    costs exactly the tableau's `stages - 1` gradient evaluations.

    Used as `diffeqsolve(ODETerm(GradientField(loss)), SlidingReLU(...), y0=model,
    args=data, ...)`: the solver evaluates the field itself, with the loss it reads
    from the term (`vector_field(loss, reduction)` builds the field).
    `gradient_flow(..., solver="sliding")` does this.

    **Arguments:**

    - `inner`: a first-same-as-last explicit Runge-Kutta solver: `diffrax.Tsit5()`
      (default), `diffrax.Bosh3()` (cheaper at loose tolerances, `rtol >= 1e-6`: what
      `gradient_flow(solver="sliding")` picks there), `diffrax.Dopri5()`.
    - `max_sliding`: slots per neuron (`m`). A pair that would slide but finds no free
      slot stays regular (correct, but it may chatter); counted in the `overflow` stat.
      Default `None`: `default_slots(n, D, h)`: the slot samples (`h x m x D`
      numbers, read twice per gradient evaluation) kept within an eighth of the data,
      between 8 and 32 slots (32 when that is small anyway): 8 on MNIST with `h = 50`
      up to 12,799 samples. `sliding_max_per_neuron` in the stats says how many were
      used.
    - `iterations`: active-set iterations of the joint check of a neuron's sliding pairs.
    - `tol`: slack on `s_ij in [leak, 1]`.
    - `kink_correction`: correct the steps that contain a transversal crossing (a pair
      that crosses its kink without sliding) by the exact integral of the indicator
      term, with the crossing time extrapolated from the start of the step; this makes
      such a step's local error `O(dt^2)` instead of `O(dt)`, at no extra gradient
      evaluation. Off by default (see the docs page *Sliding* for measurements).
    - `kink_error`: with `kink_correction`, `"smooth"` applies the same correction to
      the embedded solution (the error estimate then measures the smooth part only),
      `"full"` leaves the error estimate as it is.
    - `crossings`: how transversal crossings (pairs that cross their kink without
      sliding) and entries into sliding are treated. `"locate"`: every sign change of
      a non-sliding `z_ij` inside a step is located on the step's cubic interpolant
      of `z` (values and velocities at both ends, no new gradient evaluation); the
      step-size controller (`EventController`, which `controller()` returns and
      `gradient_flow` uses) retries a step that contains events costing more than
      its budget so that it ends just before the first of them, and predicts the
      next events from the exact velocity at the end of each step; a pair that then
      lies within `window` of its kink is started at the beginning of the next step:
      a transversal crossing on its far side, a pair whose kink attracts from both
      sides as an entry into sliding, with the part before its kink integrated
      exactly (see the docs page *Sliding*). The step's error estimate is then a
      `Located`, which only `EventController` reads. `"land"`: steps end just
      before the crossings that matter (`CrossingController`, which `controller()`
      returns), and a crossing that close is started at the beginning of
      the next step; the error at `T` then falls steadily with the tolerance (see the
      docs page *Sliding*). `"start"`: only the latter (with any step-size
      controller). `"none"`: left to the error control, as in a plain solver.
    - `crossing_window`: with `"land"` or `"start"`, crossings predicted within this
      fraction of a step are started at its beginning.
    - `crossing_budget`: with `"land"` or `"locate"`, the summed estimated error of the
      crossings (and, with `"locate"`, entries and exits) a step may contain, as a
      fraction of its tolerance (`CrossingController(budget=...)`,
      `EventController(budget=...)`). Default `None`: `BUDGET` (0.5) with `"land"`,
      `EVENT_BUDGET` (0.01) with `"locate"`; larger values take fewer steps at a larger
      error (see the docs pages *Sliding* and *Benchmarks*).
    - `correct_crossings`: with `"locate"`, transversal crossings stay inside the steps
      instead of ending them: every stage takes the activation pattern of the step's
      start (the near-side field, smooth in the state), and the crossings located on
      the step's interpolant of `z` are added after it, to third order in the step
      (`inside_crossings`: the switched terms integrated from their times on, and
      three Jacobian-vector products for the response to them), so that a step
      across a crossing has a fourth-order local error; the field is evaluated again
      at the corrected end. Entries, exits and crossings that the correction itself
      brings about still end the steps. Off by default in this class; the default
      solver of `gradient_flow` (`solver="events"`) sets it (docs page *Sliding*).
      Its controller is a PI controller that also ends steps at given times (the
      save times). Differentiable: the crossing times carry their derivatives
      through the correction (docs page *Differentiating the flow*).
    - `crossing_limit`: with `correct_crossings`, the most crossings one step
      corrects (their times moved by one another, `crossing_times`); a step that
      holds more is retried to end before the next one, and the controller ends a
      step before the crossings it predicts beyond it. Default `EVENT_PAIRS_IN`
      (256). The work of a step with many crossings grows as its square.
    - `crossing_safety`: with `correct_crossings`, the factor on the corrected
      crossings' error estimate in the step's error (default `INSIDE_SAFETY`, 1).
    - `derivative_safety`: the same factor in a solve that is differentiated
      (`for_derivatives`, which the default adjoint applies to the solve whose
      derivative it takes; default `DERIVATIVE_SAFETY`, 3): a step's derivative
      through a crossing inside it is one order less accurate than its value, so
      steps that carry crossings are shortened where derivatives are taken. The
      value returned with a derivative then comes from that solve, within the
      tolerance of the undifferentiated one.
    - `differentiated`: set by `for_derivatives` (default `False`): with
      `crossings="locate"` every entry into sliding then ends a step, whatever
      `crossing_budget`, so that the next step starts it with its jump term, and
      the controller it builds is `EventController.for_derivatives()`: a step
      failed by its corrected crossings is retried to end just before the first
      of them rather than just past it (a crossing at the end of a long step has a
      less accurate derivative), and the budget is at most `EVENT_BUDGET`; with
      `correct_crossings`, crossings within `crossing_window` of a step's start
      are then started there (the one such a retry ends before, above all).
    """

    inner: diffrax.AbstractERK = diffrax.Tsit5()
    max_sliding: int | None = eqx.field(static=True, default=None)
    iterations: int = eqx.field(static=True, default=3)
    tol: float = eqx.field(static=True, default=1e-6)
    kink_correction: bool = eqx.field(static=True, default=False)
    kink_error: str = eqx.field(static=True, default="smooth")
    crossings: str = eqx.field(static=True, default="land")
    crossing_window: float = eqx.field(static=True, default=0.05)
    crossing_budget: float | None = eqx.field(static=True, default=None)
    correct_crossings: bool = eqx.field(static=True, default=False)
    crossing_limit: int = eqx.field(static=True, default=EVENT_PAIRS_IN)
    crossing_safety: float = eqx.field(static=True, default=INSIDE_SAFETY)
    derivative_safety: float = eqx.field(static=True, default=DERIVATIVE_SAFETY)
    # Set by `for_derivatives` (not an argument to pass).
    differentiated: bool = eqx.field(static=True, default=False)

    term_structure: ClassVar = diffrax.AbstractTerm

    def __check_init__(self):
        tableau = getattr(self.inner, "tableau", None)
        if tableau is None or not tableau.fsal or tableau.implicit:
            raise ValueError(
                "SlidingReLU needs a first-same-as-last explicit Runge-Kutta solver "
                f"(Tsit5, Dopri5, Bosh3), got {type(self.inner).__name__}"
            )
        if self.max_sliding is not None and (
            int(self.max_sliding) != self.max_sliding or self.max_sliding < 1
        ):
            raise ValueError(
                f"max_sliding must be a positive integer, got {self.max_sliding}"
            )
        if self.kink_error not in ("smooth", "full"):
            raise ValueError(
                f"kink_error must be 'smooth' or 'full', got {self.kink_error!r}"
            )
        if self.crossings not in CROSSINGS:
            raise ValueError(
                f"crossings must be one of {CROSSINGS}, got {self.crossings!r}"
            )
        if not 0.0 < self.crossing_window < 1.0:
            raise ValueError(
                f"crossing_window must lie in (0, 1), got {self.crossing_window}"
            )
        if self.crossing_budget is not None and not self.crossing_budget > 0:
            raise ValueError(
                f"crossing_budget must be positive, got {self.crossing_budget}"
            )
        if self.correct_crossings and self.crossings != "locate":
            raise ValueError(
                "correct_crossings needs crossings='locate', got "
                f"crossings={self.crossings!r}"
            )
        if int(self.crossing_limit) != self.crossing_limit or self.crossing_limit < 1:
            raise ValueError(
                f"crossing_limit must be a positive integer, got {self.crossing_limit}"
            )
        for name in ("crossing_safety", "derivative_safety"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < np.inf):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if int(self.iterations) != self.iterations or self.iterations < 1:
            raise ValueError(
                f"iterations must be a positive integer, got {self.iterations}"
            )

    def for_derivatives(self) -> SlidingReLU:
        """This solver for a solve that is differentiated: the corrected crossings'
        error estimate weighs `max(crossing_safety, derivative_safety)`, its
        controller is `EventController.for_derivatives()`, every entry into
        sliding ends a step (an entry left inside a step has no jump term in its
        derivative), and crossings within `crossing_window` of a step's start are
        started there.

        With `crossings="land"`, `"start"` or `"none"` it is this solver with
        `crossings="locate"` (steps that end at every event that costs more than
        the budget, each started with its jump term; `kink_correction` off): those
        modes leave the crossings within their budget to the stages, whose value
        is within the tolerance but whose derivative has no jump term. A call of
        `gradient_flow` that sees the transform switches to it (and builds its
        controller); behind an outer `jax.jit` or `jax.vmap` it cannot switch the
        solve's state, and the derivative raises (`guard_derivatives`)."""
        safety = max(self.crossing_safety, self.derivative_safety)
        if self.crossings != "locate":
            # On the geometry example of the docs page *Differentiating the flow*
            # (`T = 0.75`), `solver="sliding"` gave gradients 14% (along `W0, V0`)
            # and 89% (along the data) from the central differences of SciPy's
            # flow, still 3% and 64% at `rtol 1e-10`: the crossings that its
            # controller leaves inside steps carry no jump term.
            return dataclasses.replace(
                self,
                crossings="locate",
                kink_correction=False,
                crossing_safety=safety,
                differentiated=True,
            )
        return dataclasses.replace(self, crossing_safety=safety, differentiated=True)

    @property
    def interpolation_cls(self):  # pyright: ignore
        if self.correct_crossings:
            return corrected_interpolation(self.inner.interpolation_cls)
        return self.inner.interpolation_cls

    def slots(self, n: int, D: int, h: int) -> int:
        """Slots per neuron for `n` samples in `D` dimensions and `h` neurons."""
        m = default_slots(n, D, h) if self.max_sliding is None else self.max_sliding
        return min(m, n)

    def controller(
        self, rtol, atol, norm: Callable = optx.rms_norm, step_ts=None
    ) -> diffrax.AbstractAdaptiveStepSizeController:
        """The step-size controller for this solver: `diffrax.PIDController(rtol, atol,
        norm)`, wrapped in a `CrossingController` with the same window when
        `crossings="land"` and in an `EventController` when `crossings="locate"`.

        With `correct_crossings=True`, the PID controller is a PI controller
        (`pcoeff, icoeff = PI_GAINS`), and steps also end at the times `step_ts` (if
        given; `gradient_flow` passes its save times), so that saved values are
        steps' ends: inside a step with many corrected crossings the dense output is
        only third order in the step."""
        # With `correct_crossings` (which needs `"locate"`), a PI controller: with the
        # crossings inside the steps, steps grow for long stretches and the plain I
        # controller (Diffrax's default) overshoots every few steps. On the `ncjax
        # run` problem 67 of 460 steps were rejected with it, 38 of 503 with these
        # gains, for 6% more evaluations (the same on MNIST-60; docs page *Sliding*).
        gains = dict(zip(("pcoeff", "icoeff"), PI_GAINS)) if self.correct_crossings else {}
        pid = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm, **gains)
        # Unset: each controller's own default budget.
        options = {} if self.crossing_budget is None else {"budget": self.crossing_budget}
        if self.crossings == "locate":
            if self.correct_crossings:
                # Transversal crossings are integrated inside the steps: they do not
                # shorten steps.
                options = dict(
                    options,
                    transversal=0.0,
                    limit=self.crossing_limit,
                    past=True,
                )
                if step_ts is not None:
                    options = dict(options, step_ts=jnp.sort(jnp.asarray(step_ts)))
            controller = EventController(pid, window=self.crossing_window, **options)
            return controller.for_derivatives() if self.differentiated else controller
        if self.crossings == "land":
            return CrossingController(pid, window=self.crossing_window, **options)
        return pid

    def evals_per_step(self) -> tuple[int, int]:
        """`(gradient evaluations per step, at start)`: the tableau's stages minus one
        per step (the first stage is the last one of the previous step, re-projected),
        plus one evaluation at the start."""
        return len(self.inner.tableau.c), 1

    def init(self, terms, t0, t1, y0: TwoLayerReLU, args: Dataset) -> SlidingState:
        del t0, t1
        n = args.x.shape[0]
        D, h = y0.W.shape
        m = self.slots(n, D, h)
        mode = empty_mode(n, h, m, D, y0.W.dtype)
        field = evaluate(y0.W, y0.V, args, mode, term_loss(terms), y0.leak)
        zero = jnp.zeros((), jnp.int32)
        # what the event statistics start from (`"locate"` only)
        unset = jnp.full((), jnp.inf if self.crossings == "locate" else jnp.nan, y0.W.dtype)
        if self.crossings == "locate":
            zdot = args.x @ field.dW
        else:
            zdot = jnp.zeros((0, h), y0.W.dtype)
        return SlidingState(
            idx=jnp.full((h, m), -1, jnp.int32),
            ginv=jnp.zeros((h, m, m), y0.W.dtype),
            lines=jnp.zeros((h, m, m), y0.W.dtype),
            field=field,
            positive=field.Z > 0,
            entries=zero,
            exits=zero,
            overflow=zero,
            max_pairs=zero,
            max_per_neuron=zero,
            dependent=zero,
            mode_changes=zero,
            started=zero,
            zdot=zdot,
            located=zero,
            started_entries=zero,
            transversality=unset,
            last_event=jnp.full((h,), -jnp.inf, y0.W.dtype),
            event_gap=unset,
            touch=unset,
            fresh=jnp.ones((), bool),
            switch_time=jnp.full((h,), jnp.inf, y0.W.dtype),
        )

    def func(self, terms, t0, y0: TwoLayerReLU, args: Dataset):
        # The regular field (no sliding set): used by Diffrax for the first step size.
        n = args.x.shape[0]
        D, h = y0.W.shape
        mode = empty_mode(n, h, 1, D, y0.W.dtype)
        f = evaluate(y0.W, y0.V, args, mode, term_loss(terms), y0.leak)
        return TwoLayerReLU(f.dW, f.dV, y0.leak)

    def step(self, terms, t0, t1, y0: TwoLayerReLU, args: Dataset, solver_state, made_jump):
        del made_jump  # the first stage is always recomputed from the state
        loss = term_loss(terms)
        state: SlidingState = solver_state
        data = args
        leak = y0.leak
        locate = self.crossings == "locate"
        correct = locate and self.correct_crossings

        def restored():
            field = with_derivatives(state.field, y0.W, y0.V, data, loss, leak)
            zdot = state.zdot
            if locate:
                zdot = with_velocity_derivatives(zdot, field, data.x)
            return field, zdot

        # The first step's stored stage comes from `init`, whose derivatives Diffrax
        # stops: given back here (free unless something is differentiated).
        field, zdot = rare_cond(state.fresh, restored, lambda: (state.field, state.zdot))
        state = eqx.tree_at(lambda s: (s.field, s.zdot), state, (field, zdot))
        # Gathered in each step rather than carried in the solver state, which Diffrax
        # selects between old and new in every step: carrying them was no faster.
        xs_old = slots_of(state.idx, data.x)
        old, cand = candidates(state)
        dt = t1 - t0
        approach = together = None
        if locate:
            # Entries started at the beginning of the step: pairs that reach their kink
            # within `window` of it (at the exact velocity `zdot`, kept from the last
            # step) and whose kink attracts from the far side too (not a transversal
            # crossing): candidates to slide from the start.
            f = state.field
            near, toward = transversal_approach(f.Z, state.zdot, f.C, data.x, leak)
            reach = jnp.where(near, state.zdot < 0, state.zdot > 0)
            tau_in = -f.Z / (jnp.where(reach, state.zdot, 1.0) * nonzero(dt))
            # Crossings that would start together but turn each other back are
            # candidates to slide together, not crossings.
            together = jointly_turned_back(
                toward & (tau_in < self.crossing_window) & ~old,
                near,
                state.zdot,
                f.C,
                data.x,
                leak,
            )
            toward = toward & ~together
            approach = reach & ~toward & (tau_in < self.crossing_window) & ~old & (f.C < 0)
            tau_in = jnp.where(approach, tau_in, 0.0)
            cand = cand | approach
        zdot_old = state.zdot if locate else None
        if locate:
            # Which sliding pairs are past their upper bound (they leave to the
            # active side), under the set they slid in.
            old_mode = Mode(mask=old, xs=xs_old, ginv=state.ginv, lines=state.lines)
            lo_old, hi_old = sliding_violations(
                old_mode, state.idx, state.field, leak, self.tol
            )
            above_start = pairs_of(state.idx, hi_old > 0, data.x.shape[0])
            out_start = pairs_of(state.idx, (lo_old > 0) | (hi_old > 0), data.x.shape[0])

        # Only candidates that pass a necessary condition go on to the active-set
        # check (one matrix product, and only in steps with candidates).
        # (The condition is for a pair entering alone: pairs that turn each other
        # back enter together, and the active-set check decides them.)
        def filtered():
            ok = could_enter(state.field, data.x, leak, self.tol, zdot_old)
            return cand & (ok if together is None else ok | together)

        cand = rare_cond(jnp.any(cand), filtered, lambda: cand)

        def update(_):
            idx, mode, first, counters, above = update_mode(
                state, old, cand, data.x, leak, self.iterations, self.tol
            )
            counters = {k: v.astype(jnp.int32) for k, v in counters.items()}
            return idx, mode, first, counters, above

        def keep(_):
            mode = Mode(mask=old, xs=xs_old, ginv=state.ginv, lines=state.lines)
            zero = jnp.zeros((), jnp.int32)
            counters = dict(entries=zero, exits=zero, overflow=zero)
            return state.idx, mode, state.field, counters, jnp.zeros_like(old)

        # A real branch (the update is skipped in most steps), also under `vmap`
        # while no run of the batch needs the update (`rare_cond`).
        idx, mode, first, counters, above_update = rare_cond(
            ~mode_holds(state, cand, xs_old, leak, self.tol), update, keep, None
        )
        if locate:
            # The side of each exit at the start: for a pair out of its box under the
            # set it slid in, the bound it passed (an exit located in the last step);
            # for one that an entry puts out of its box, the side the check gave it
            # (on MNIST, an entry pushed a neighbour's weight past 1: counted on the
            # inactive side, it crossed back at once, and the steps after it took the
            # wrong field).
            above_start = jnp.where(out_start, above_start, above_update)
        tab = self.inner.tableau
        dtype = y0.W.dtype
        started = None
        entry_correction = None
        switch_time = None
        switch_correction = None
        zdot0 = None
        if locate:
            # Pairs that left sliding at the step's start, on the side of their exit
            # before anything uses the new field (the velocities, the entries'
            # near-side part): the update counted them by the rounding of their z.
            exiting_start = old & ~mode.mask
            first = exit_sides(first, mode, exiting_start, above_start, data.x, leak)
            # Velocities of z under the step's sliding set: the stored ones when the
            # set did not change.
            zdot0 = rare_cond(
                jnp.any(mode.mask != old), lambda: data.x @ first.dW, lambda: state.zdot
            )
            wdot0 = jnp.linalg.norm(first.dW, axis=0)
            # Started entries: the pair spends `tau dt` on its near side before it
            # reaches the kink. Its neuron then moves with the field without the new
            # sliding pair(s) for that time: integrated exactly (with the field
            # frozen) and added to y1, which puts the pair on its kink to second order
            # in `tau dt` (a neuron with several started entries takes the largest
            # `tau`).
            began = approach & mode.mask
            tau_j = jnp.max(jnp.where(began, tau_in, 0.0), axis=0)
            entry_correction = (tau_j * dt)[None, :] * (state.field.dW - first.dW)
            entry_error = tau_j[None, :] * entry_correction
            if correct:
                # Exits at the last step's corrected crossings: a crossing makes the
                # sliding weights of its neuron jump, and a pair pushed out of its
                # box leaves at the crossing; the last step ended just past it and
                # the pair leaves here. The field jumps at such an exit, so its time
                # (the crossing's) carries a jump term: `(f_before - f_after) dt_c`,
                # zero in value. (A neuron with an entry started here is left out:
                # its field's change is the entry's too.)
                at_switch = (
                    jnp.any(exiting_start, axis=0)
                    & jnp.isfinite(state.switch_time)
                    & ~jnp.any(began, axis=0)
                )
                t_c = jnp.where(at_switch, state.switch_time, 0.0)
                switch_correction = (t_c - jax.lax.stop_gradient(t_c))[None, :] * (
                    state.field.dW - first.dW
                )
        exit_correction = None
        force = None
        if self.crossings != "none":
            before = first
            # (With `correct_crossings` the crossings are corrected where they
            # lie in the step, near its start too: none is started. Except in a
            # solve that is differentiated, whose controller retries a step failed
            # by its corrected crossings to end just before the first of them
            # (`EventController(before=True)`): started there, with its jump term
            # exact, that crossing costs the next step nothing, where corrected
            # at the step's start it would cost it the cube of the whole step.)
            first, started = start_crossings(
                first,
                mode,
                data.x,
                dt,
                leak,
                0.0 if correct and not self.differentiated else self.crossing_window,
                zdot0,
            )
            if locate:
                idx, mode, first, started, switched, neurons, above_at = (
                    exits_at_started_crossings(
                        state,
                        idx,
                        mode,
                        before,
                        first,
                        started,
                        data.x,
                        dt,
                        leak,
                        self.iterations,
                        self.tol,
                        self.crossing_window,
                        zdot0,
                    )
                )
                counters = dict(counters, exits=counters["exits"] + switched)
                # Pairs that left sliding (at the step's start or at a started
                # crossing) go to the side of their exit.
                exiting = old & ~mode.mask
                force = (exiting, above_start | above_at)
                # (Those that left at the start are on their side already.)
                first = exit_sides(
                    first, mode, exiting & ~exiting_start, force[1], data.x, leak
                )
                # An exit at a started crossing: the step's start is shifted by
                # `tau dt (f_before - f_after)` in all (the crossing's part is in
                # `started.correction`), whose derivative in the state is the jump
                # term of the crossing and the exit together.
                tau_j = jnp.max(started.tau, axis=0)
                exit_correction = jnp.where(
                    neurons[None, :],
                    (tau_j * dt)[None, :] * (before.dW - first.dW) - started.correction,
                    0.0,
                )
        # Started crossings and entries spent `tau dt` on the near side of their kink,
        # integrated exactly (with `c_ij` frozen) and added to y1 before its stage is
        # evaluated. Their derivatives (the jump terms of the events, through the
        # dependence of `tau` on the state) belong at the start of the step, where the
        # flow carries them from the event: they enter there, with no value
        # (`shift - stop_gradient(shift)`), and go through the stages. The first stage
        # gets the derivative it has at the shifted start (`shifted_first`).
        shift = None if started is None else started.correction
        if entry_correction is not None:
            shift = entry_correction if shift is None else shift + entry_correction
        if exit_correction is not None:
            shift = shift + exit_correction
        if switch_correction is not None:
            shift = shift + switch_correction
        W_start, V_start = y0.W, y0.V
        restarted = jnp.zeros((), bool)
        if locate:
            # The stages start from the shifted state: the far-side flow taken back to
            # the step's start, which meets the exact state at the events. Every
            # stage's `w`, and through `z` the `v`-field and the outputs, then see
            # the state after the events; adding the shift to y1 alone left the
            # `v`-field a step long at `z` offset by the shift (a local error of
            # order `dt tau dt`, unseen by the error estimate: the balance
            # `|w_j|^2 - |v_j|^2` drifted by 3e-7 in one such step). The first stage
            # is evaluated again there (one gradient evaluation, only in steps that
            # start an event; counted in `grad_evals`).
            restarted = jnp.any(started.mask) | jnp.any(began) | jnp.any(neurons)
            if correct:
                # (So that the first stage has the derivative of the exits at the
                # last step's crossings too.)
                restarted = restarted | jnp.any(at_switch)
            # The derivative of the started crossings' shift to first order in `tau
            # dt` (zero in value).
            dW2, dV2 = started_second_order(
                started, before, y0.W, y0.V, data, mode, loss, leak, zdot0, dt
            )
            shift = shift + dW2
            V_start = y0.V + dV2
            W_start = y0.W + shift

            def restart():
                f = evaluate(
                    W_start,
                    V_start,
                    data,
                    mode,
                    loss,
                    leak,
                    # started crossings on their far side, exits on theirs
                    force=(
                        force[0] | started.mask,
                        jnp.where(started.mask, ~started.near, force[1]),
                    ),
                )
                return f, data.x @ f.dW

            # The velocities of z after the started events (the slopes of the step's
            # interpolant of z at its start): in the step, every pair of a neuron
            # with a started event moves with them from `tau dt` on.
            first, zdot_start = rare_cond(restarted, restart, lambda: (first, zdot0))
        elif shift is not None:
            # (Entries and exits are started only with `"locate"`.)
            W_start = y0.W + (shift - jax.lax.stop_gradient(shift))
            first = rare_cond(
                jnp.any(started.mask),
                lambda: shifted_first(
                    first, shift, y0.W, y0.V, data, mode, started, loss, leak
                ),
                lambda: first,
            )
        stage_force = force
        if correct:
            # Inside the step every stage takes the activation pattern of its start
            # (the near-side field, smooth in the state); the transversal crossings
            # located inside the step are added after it (`inside_crossings`).
            pattern = jnp.where(
                force[0] | started.mask,
                jnp.where(started.mask, ~started.near, force[1]),
                first.Z > 0,
            )
            stage_force = (jnp.ones_like(pattern), pattern)
        # Stage increments k_s = dt f_s as (W, V) pairs; explicit RK (Diffrax's tableau).
        fields = [first]
        n_rows = len(tab.a_lower)
        eW_kink = None

        def stage(s, c, ys):
            nonlocal eW_kink
            Ws, Vs = ys
            if s == n_rows - 1 and not locate and started is not None:
                Ws = Ws + jax.lax.stop_gradient(started.correction)
            if self.kink_correction and s == n_rows - 1:
                # The last stage is y1 (first same as last): correct it before it is
                # evaluated, so that the stored field is the one at the corrected y1.
                dW_kink, eW_kink = kink_correction(
                    fields,
                    mode,
                    data.x,
                    dt,
                    leak,
                    tab,
                    self.kink_error,
                    None if started is None else started.mask,
                )
                Ws = Ws + dW_kink
            f = evaluate(Ws, Vs, data, mode, loss, leak, force=stage_force)
            fields.append(f)
            return (Ws, Vs), (dt * f.dW, dt * f.dV), f

        ks, (W1, V1), _ = explicit_stages(
            tab, (W_start, V_start), (dt * first.dW, dt * first.dV), stage
        )
        # First same as last: the last stage is at y1 = y0 + sum_s b_s k_s.
        last = fields[-1]
        b_err = np.asarray(tab.b_error)
        eW, eV = weighted_sum(ks, b_err, (y0.W, y0.V))
        if eW_kink is not None:
            eW = eW + eW_kink
        if started is not None:
            eW = eW + started.error + unfinished_error(started, last.Z, mode, data.x, dt)
        y1 = TwoLayerReLU(W1, V1, leak)
        y_error = TwoLayerReLU(eW, eV, leak)
        zdot1 = None
        located = jnp.zeros((), jnp.int32)
        step_transversality = None
        step_gap = step_touch = None
        last_event = state.last_event
        if locate:
            y_error = TwoLayerReLU(eW + entry_error, eV, leak)
            # Events inside the step: non-sliding pairs (not started) whose z changed
            # sign, located on the cubic interpolant of z over the step. Diffrax can
            # locate one event and stop the solve there; thousands of kinks need the
            # events located in every step, hence this by hand.
            zdot1 = data.x @ last.dW
            Z0, Z1 = state.field.Z, last.Z
            if correct:
                # The stages start from the shifted start (`W_start`, after the
                # started events) with its activation pattern: a pair that the
                # shift put across its kink is on its far side in every stage, not
                # an event of the step. Counted from `y0` it was corrected again on
                # top of the stages (on MNIST-60 at rtol 1e-6, a pair crossing 1e-4
                # of a step after a started entry on its neuron moved with twice its
                # jump for the whole step: 5e-4 relative error on that neuron).
                Z0 = first.Z
            # Pairs that slid at the step's start and left (at its start or at a
            # started crossing) leave their kink from it at zero speed: the sign of
            # their z there is rounding, not an event. `free`: the pairs that can
            # have an event inside the step (not sliding, not just left, not started).
            free = ~mode.mask & ~old & ~started.mask
            event = free & ((Z0 > 0) != (Z1 > 0))
            # Slopes of the cubic interpolant of z over the step, on the event pairs.
            m0 = dt * jnp.where(event, zdot_start, 0.0)
            m1 = dt * jnp.where(event, zdot1, 0.0)
            theta = event_roots(event, Z0, Z1, m0, m1)
            theta = jnp.clip(theta, 0.0, 1.0)
            # An entry (the far side pushes the pair back) left inside the step costs
            # the wrong field for the rest of the step; a transversal crossing about a
            # quarter of the step (as `CrossingController` estimates it).
            if correct:
                # The stages kept the near side: whether the pair's own jump turns
                # its velocity at y1 back (`transversal_approach` from its starting
                # side, without a projection).
                _, through = transversal_approach(Z0, zdot1, last.C, data.x, leak)
                back = ~through
            else:
                back = jnp.where(Z1 > 0, zdot1 < 0, zdot1 > 0)
            # The jump term of each transversal crossing left inside the step (the
            # saltation term of its derivative): the stages took the field on each
            # side without the crossing time's dependence on the state. It adds
            # `(f_before - f_after) d t_c` to the derivative of y1 and nothing to y1
            # (`t_c - stop_gradient(t_c)` is zero).
            crossed = event & ~(back & (last.C < 0))
            if correct:
                # (The corrected crossings' times carry their derivatives, and
                # through the correction the jump terms, carried to the end of the
                # step: see `crossing_times`.)
                salt = jnp.zeros_like(W1)
            else:
                times = event_times(Z0, Z1, m0, m1, theta)
                moved = jnp.where(crossed, dt * (times - jax.lax.stop_gradient(times)), 0.0)
                coef = jnp.where(Z0 > 0, 1.0 - leak, leak - 1.0) * last.C
                # (Zero in value: the product with the data is formed only when something
                # is differentiated.)
                salt = with_tangent(
                    jnp.zeros_like(W1),
                    lambda moved, coef, x, xs, ginv: project(
                        x.T @ (moved * coef), xs, ginv
                    ),
                    (moved, coef, data.x, mode.xs, mode.ginv),
                    add=False,
                )
            y1 = TwoLayerReLU(W1 + salt, V1, leak)
            zddot = (6.0 * (Z0 - Z1) + 2.0 * dt * zdot_start + 4.0 * dt * zdot1) / nonzero(
                dt * dt
            )
            again = jnp.zeros((), bool)
            if correct:
                # The transversal crossings located inside the step, integrated after
                # it (`inside_crossings`: three Jacobian-vector products), and the
                # field at the corrected y1 with the pattern there (one more
                # evaluation, in steps with such crossings).
                # (Steps with an entry left inside, uncorrected, evaluate the field
                # at y1 again too: the stages' last field has the entering pair on
                # its near side.)
                again = jnp.any(event)

                # `z` and `c` at the step's ends, with the slopes of `z` in the step.
                ends = (Z0, Z1, m0, m1, fields[0].C, last.C)

                def inside():
                    dW1, dW2, dV, dV_direct, R, eW_in, eV_in, th_in, across, turned = (
                        inside_crossings(
                            crossed,
                            theta,
                            *ends,
                            pattern,
                            W1,
                            V1,
                            data,
                            mode,
                            loss,
                            leak,
                            dt,
                            c_rate(
                                Z0,
                                zdot_start,
                                V_start,
                                fields[0].dV,
                                pattern,
                                data,
                                loss,
                                leak,
                            ),
                            c_rate(Z1, zdot1, V1, last.dV, pattern, data, loss, leak),
                            W_start,
                            V_start,
                            idx,
                            size=self.crossing_limit,
                        )
                    )
                    W1c = W1 + salt + dW1 + jnp.sum(dW2, axis=0)
                    eW_in = eW_in + jax.lax.stop_gradient(
                        crossing_time_error(
                            across,
                            th_in,
                            *ends,
                            slope_switch(Z0, leak),
                            dW2,
                            data.x,
                            transposed(data),
                            dt,
                            size=self.crossing_limit,
                        )
                    )
                    V1c = V1 + jnp.sum(dV, axis=0) + dV_direct
                    f = evaluate(W1c, V1c, data, mode, loss, leak, force=force)
                    zdot_c = data.x @ f.dW
                    return (
                        W1c,
                        V1c,
                        f,
                        zdot_c,
                        eW_in,
                        eV_in,
                        dW2,
                        dV,
                        R,
                        th_in,
                        across,
                        turned,
                    )

                def plain():
                    zW, zV = jnp.zeros_like(W1), jnp.zeros_like(V1)
                    return (
                        W1 + salt,
                        V1,
                        last,
                        zdot1,
                        zW,
                        zV,
                        jnp.zeros((4, *W1.shape), W1.dtype),
                        jnp.zeros((3, *V1.shape), V1.dtype),
                        jnp.zeros((2, Z0.shape[0], V1.shape[0]), V1.dtype),
                        theta,
                        crossed,
                        jnp.zeros_like(crossed),
                    )

                # (The near-side velocity at the stages' y1, for `after_switch`.)
                zdot1_near = zdot1
                # (`crossed_in`: the crossings that the correction took, less those
                # that the crossings before them in the step held back.)
                (
                    W1c,
                    V1c,
                    last_c,
                    zdot1,
                    eW_in,
                    eV_in,
                    dW2_in,
                    dV2_in,
                    R_in,
                    th_in,
                    crossed_in,
                    entering,
                ) = rare_cond(again, inside, plain)
                # The dense output: the near-side interpolant plus the crossings'
                # first-order part from their times on (`CorrectedInterpolation`).
                jsign_c = jnp.where(crossed_in, slope_switch(Z0, leak), 0.0)
                inside_dense = dict(
                    theta=jnp.where(crossed_in, th_in, jnp.inf),
                    a0=jsign_c * fields[0].C * dt,
                    a1=jsign_c * (last.C - fields[0].C) * dt,
                    dW2=dW2_in,
                    dV2=dV2_in,
                    R=R_in,
                    zc=jnp.stack([Z0, m0, Z1, m1]) * (jsign_c * dt)[None],
                    x=data.x,
                    xs=mode.xs,
                    ginv=mode.ginv,
                )
                last = last_c
                y1 = TwoLayerReLU(W1c, V1c, leak)
                y_error = TwoLayerReLU(
                    y_error.W + self.crossing_safety * eW_in,
                    y_error.V + self.crossing_safety * eV_in,
                    leak,
                )
                # Entries among them: pairs that the velocity at the corrected y1
                # (all of the step's crossings included: copies of a sample turn
                # each other back) pushes back, or that the correction put back on
                # their starting side. Charged as entries: the step is retried to
                # end before them.
                # An event that the pair's own jump called an entry but the
                # velocity at y1 does not push back (the projection on its
                # neuron's sliding set changes the far side) was left inside the
                # step uncorrected: charged as an uncorrected crossing.
                back = jnp.where(Z1 > 0, zdot1 < 0, zdot1 > 0)
                back = back | ((last.Z > 0) == (Z0 > 0))
                entry = event & ((back & (last.C < 0)) | entering)
                weight = jnp.where(entry, 1.0 - theta, jnp.where(crossed, 0.0, 0.25))
                # Crossings that the correction itself brings about: a pair that the
                # near-side stages left on its side but that the corrected y1 puts
                # across (another crossing of its neuron inside the step turned it).
                # Not located among the step's events, it would cross at the step's
                # end, late by up to the step (on MNIST-60, a pair crossing 1.2e-5
                # late cost a relative error of 4e-7). Located on the cubic from the
                # step's start to the corrected y1, and charged as an uncorrected
                # crossing for the rest of the step: the step is retried to end
                # before it, and the next step corrects it.
                induced = free & ~event & ((last.Z > 0) != (Z0 > 0))
                # The first crossing corrected inside the step, per neuron.
                theta_switch = jnp.min(jnp.where(crossed_in, th_in, jnp.inf), axis=0)

                def after_switch(pairs, theta_cubic, side):
                    # A pair turned across its kink by a corrected crossing of its
                    # neuron is on its side (`side`) until the first of them: its
                    # field is continuous until then. The cubic from the step's
                    # start to the corrected y1 has no kink there and put such a
                    # crossing early (rank-4 data: 26 steps in a row, each retried
                    # to end a tenth of the way to it). Located on the line from
                    # the near-side interpolant at the switch to the corrected y1.
                    th_s = jnp.broadcast_to(theta_switch[None, :], Z0.shape)
                    has = pairs & jnp.isfinite(th_s)
                    th_s = jnp.where(has, th_s, 0.0)
                    z_s = _hermite(th_s, Z0, dt * zdot_start, Z1, dt * zdot1_near)
                    still = (z_s > 0) == side
                    frac = jnp.clip(z_s / nonzero(z_s - last.Z), 0.0, 1.0)
                    th = jnp.where(still, th_s + (1.0 - th_s) * frac, th_s)
                    return jax.lax.stop_gradient(jnp.where(has, th, theta_cubic))

                theta_induced = rare_cond(
                    jnp.any(induced),
                    lambda: after_switch(
                        induced,
                        jnp.clip(
                            event_roots(
                                induced,
                                Z0,
                                last.Z,
                                dt * jnp.where(induced, zdot_start, 0.0),
                                dt * jnp.where(induced, zdot1, 0.0),
                            ),
                            0.0,
                            1.0,
                        ),
                        Z0 > 0,
                    ),
                    lambda: jnp.zeros_like(theta),
                )
                # The first corrected crossing's time, for the next step (an exit
                # there is placed at it).
                switched = jnp.isfinite(theta_switch)
                t_switch = t0 + jnp.where(switched, theta_switch, 0.0) * dt
                switch_time = jnp.where(switched, t_switch, jnp.inf)
                theta = jnp.where(induced, theta_induced, theta)
                weight = jnp.where(induced, 1.0 - theta_induced, weight)
                charged = event | induced
                # Crossings after the first `crossing_limit` of the step (in time
                # order): `crossing_times` moves the times of that many jointly,
                # and beyond that leaves all of them as located, and their
                # interactions uncorrected. Charged at an infinite cost: the step is
                # retried to end before the first of them. (On M300 at `rtol 1e-5`
                # one step corrected 265 crossings that way. Its error stayed within
                # the tolerance, but it sat on a few neurons that the alignment
                # amplifies: 1.3e-3 at `T = 1`. Docs page *Sliding*, item 14.)
                unmoved = beyond_first(crossed, th_in, self.crossing_limit)
                theta = jnp.where(unmoved, th_in, theta)
                charged = charged | unmoved
                # The corrected crossings, for the exits between them.
                c_at = fields[0].C + (last.C - fields[0].C) * jnp.where(
                    crossed_in, th_in, 0.0
                )
                crossings = (crossed_in, th_in, jsign_c * c_at)
                inside_error = TwoLayerReLU(
                    self.crossing_safety * eW_in, self.crossing_safety * eV_in, leak
                )
                # (Stopped: the controller's decisions carry no derivative.)
                theta_in = jax.lax.stop_gradient(
                    jnp.stack(
                        [
                            jnp.min(jnp.where(crossed_in, th_in, jnp.inf)),
                            jnp.max(jnp.where(crossed_in, th_in, -jnp.inf)),
                        ]
                    )
                )
            x_norm = jnp.linalg.norm(data.x, axis=1)[:, None]
            jump = (1.0 - leak) * jnp.abs(last.C) * x_norm
            z_scale_start = x_norm * jnp.linalg.norm(y0.W, axis=0)[None, :]
            if not correct:
                # (With `correct_crossings` the weights were set after the correction.)
                entry = event & back & (last.C < 0)
                weight = jnp.where(entry, 1.0 - theta, 0.25)
                charged = event
                crossings = None
                unmoved = None
                inside_error = TwoLayerReLU(jnp.zeros_like(W1), jnp.zeros_like(V1), leak)
                theta_in = jnp.asarray([jnp.inf, -jnp.inf], dtype)
            # Pairs that left sliding at the step's start, to the side of their exit,
            # and are across their kink again at its end: not free (their z at the
            # start is rounding), so neither events nor induced crossings above. A
            # crossing inside the step can turn such a pair back at once (rank-4
            # data: a pair left, another pair of its neuron crossed at 80% of the
            # step and the first came back into sliding; held on its exit side, it
            # left 7e-4 of its neuron behind in one step). Located on the cubic
            # from its kink and charged as an entry: the step is retried to end
            # before it. (Rounding of a pair still on its kink is not a return.)
            left = exiting_start & ~started.mask
            returned = (
                left
                & ((last.Z > 0) != above_start)
                & (jnp.abs(last.Z) > 64.0 * jnp.finfo(dtype).eps * z_scale_start)
            )

            def returns():
                th = return_roots(
                    last.Z,
                    dt * jnp.where(returned, zdot_start, 0.0),
                    dt * jnp.where(returned, zdot1, 0.0),
                    above_start,
                )
                return after_switch(returned, th, above_start) if correct else th

            theta_ret = rare_cond(jnp.any(returned), returns, lambda: jnp.zeros_like(theta))
            theta = jnp.where(returned, theta_ret, theta)
            weight = jnp.where(returned, 1.0 - theta_ret, weight)
            charged = charged | returned
            cost = jnp.where(charged, jnp.abs(dt) * jump * weight, 0.0)
            if unmoved is not None:
                cost = jnp.where(unmoved, jnp.inf, cost)
            if self.differentiated:
                # In a solve that is differentiated, an entry into sliding (or a
                # pair back on its kink) that a step would keep inside it within
                # the budget ends the step instead, and the next step starts it
                # with its jump term. Kept inside, its value is within the budget
                # but its derivative has no jump term, and that term does not
                # shrink with the entry's cost: the cost is small where the entry
                # lies near the step's end, the jump term `delta d t_e` is not.
                cost = jnp.where((entry | returned) & (cost > 0), jnp.inf, cost)
            # Exits from sliding inside the step (sliding pairs only, so they do not
            # collide with the events above): the controller ends the step just past
            # them, and the next step decides them at its start.
            theta_exit, cost_exit = exit_events(
                idx,
                mode,
                fields[0],
                last,
                data.x,
                leak,
                self.tol,
                dt,
                jnp.max(started.tau, axis=0),
                crossings,
            )
            # Crossings of the stages alone: a pair on the same side at both ends of
            # the step whose z is on the other side at an inner stage. That stage took
            # the far-side field, which moves y1 by its weight `b_s` times the jump
            # (on MNIST a step ended just past a crossing, predicted a little late:
            # its stage at `c = 1` crossed, y1 did not, and y1 was off by `2.3 dt`
            # times the jump, unseen by the error estimate and by the events). An
            # event like the others, at the time the first such stage puts it.
            # |x_i| |w_j|: the scale of z_ij (rounding, touches).
            z_scale = x_norm * jnp.linalg.norm(y0.W, axis=0)[None, :]
            if correct:
                # (The stages hold the pattern of the step's start: none crosses.)
                flip_theta = jnp.full_like(theta, jnp.inf)
                flip_cost = jnp.zeros_like(cost)
            else:
                flip_theta, flip_cost = stage_crossings(
                    fields, tab, free & ~event, jump, dt, z_scale
                )
            y_error = Located(
                model=y_error,
                theta=jnp.where(charged, theta, jnp.minimum(theta_exit, flip_theta)),
                cost=cost + cost_exit + flip_cost,
                Z=last.Z,
                zdot=zdot1,
                # Second derivative at the end of the cubic interpolant, for the
                # controller's prediction of the next events.
                zddot=zddot,
                C=last.C,
                sliding=mode.mask.astype(dtype),
                # (A step with corrected crossings: three Jacobian-vector products
                # and the field at the corrected y1, each product counted as one
                # evaluation.)
                restarted=restarted.astype(dtype) + 4.0 * again.astype(dtype),
                inside=inside_error,
                theta_in=theta_in,
            )
            located = jnp.sum(event, dtype=jnp.int32)
            # How transversal this step's events are: the near-side speed of z_ij
            # towards its kink at the step's start relative to ||x_i|| ||dw_j/dt||
            # there, the cosine of the angle between x_i and dw_j/dt (1: head on, 0: a
            # tangential touch, where the flow has no derivative). Entries are
            # measured with the sliding set the step started from (an entry does not
            # move its own z); pairs that just left sliding are not events (the
            # field is continuous at an exit).
            towards = ((event | started.mask) & ~old) | began
            speed = jnp.where(began, jnp.abs(state.zdot), jnp.abs(zdot0))
            speed = jnp.where(towards, speed, jnp.inf)
            wdot = jnp.where(
                began, jnp.linalg.norm(state.field.dW, axis=0)[None, :], wdot0[None, :]
            )
            scale = x_norm * wdot
            step_transversality = jax.lax.stop_gradient(
                jnp.min(speed / jnp.where(scale > 0, scale, 1.0))
            )
            # Degenerate points where the flow has no derivative, reported: two events
            # of one neuron at the same instant, and pairs that touch their kink and
            # turn back without crossing (closest approach on the step's interpolant).
            at = jnp.where(
                event,
                t0 + theta * dt,
                jnp.where(
                    started.mask,
                    t0 + started.tau * dt,
                    jnp.where(began, t0 + tau_in * dt, jnp.inf),
                ),
            )
            step_gap, last_event = event_gap(jax.lax.stop_gradient(at), state.last_event)
            quiet = free & ~event & ~began
            step_touch = jax.lax.stop_gradient(
                closest_approach(
                    Z0,
                    Z1,
                    dt * zdot_start,
                    dt * zdot1,
                    quiet,
                    z_scale,
                )
            )
        k_stack = TwoLayerReLU(
            jnp.stack([k[0] for k in ks]).astype(dtype),
            jnp.stack([k[1] for k in ks]).astype(dtype),
            leak,
        )
        # The near-side parts of started crossings and entries are added to y1 alone;
        # they happen at the very start of the step (within `tau dt`), so the dense
        # output gets them from its start: shifting y0 keeps it exact at both ends.
        y0_dense = y0 if shift is None else TwoLayerReLU(y0.W + shift, V_start, leak)
        dense_info = dict(y0=y0_dense, y1=y1, k=k_stack)
        if correct:
            dense_info.update(inside_dense)
        changed = (counters["entries"] + counters["exits"]) > 0
        # Pairs held in this step, in all and per neuron: from the slots either branch
        # returned.
        per_neuron = jnp.sum(idx >= 0, axis=1).astype(jnp.int32)
        held = held_on_kink(state.field.Z, y0.W, data.x, mode, idx, old, state.idx)
        # The side of each pair at the step's start, for the next step's candidates
        # (pairs whose side changed within a step): started crossings count on their
        # far side. Counted on the near side, a started crossing whose far-side flow
        # turned back towards the kink within the step read as a sign change in the
        # next step, and the pair entered sliding there, off its kink, and was held
        # at that `z` (a relative error of 8.9e-6 at the default tolerance on an
        # orthogonally separable set with its negatives added).
        positive = first.Z > 0
        if started is not None:
            positive = positive != started.mask
        new_state = SlidingState(
            idx=idx,
            ginv=mode.ginv,
            lines=mode.lines,
            field=last,
            positive=positive,
            entries=state.entries + counters["entries"].astype(jnp.int32),
            exits=state.exits + counters["exits"].astype(jnp.int32),
            overflow=state.overflow + counters["overflow"].astype(jnp.int32),
            max_pairs=jnp.maximum(state.max_pairs, jnp.sum(per_neuron, dtype=jnp.int32)),
            max_per_neuron=jnp.maximum(state.max_per_neuron, jnp.max(per_neuron)),
            dependent=jnp.maximum(state.dependent, held),
            mode_changes=state.mode_changes + changed.astype(jnp.int32),
            started=state.started
            + (0 if started is None else jnp.sum(started.mask, dtype=jnp.int32)),
            zdot=state.zdot if zdot1 is None else zdot1,
            located=state.located + located,
            started_entries=state.started_entries
            + (0 if approach is None else jnp.sum(approach & mode.mask, dtype=jnp.int32)),
            transversality=state.transversality
            if step_transversality is None
            else jnp.minimum(state.transversality, step_transversality),
            last_event=last_event,
            event_gap=state.event_gap
            if step_gap is None
            else jnp.minimum(state.event_gap, step_gap),
            touch=state.touch
            if step_touch is None
            else jnp.minimum(state.touch, step_touch),
            fresh=jnp.zeros((), bool),
            switch_time=state.switch_time if switch_time is None else switch_time,
        )
        return y1, y_error, dense_info, new_state, diffrax.RESULTS.successful

    @staticmethod
    def stats(state: SlidingState) -> dict[str, Any]:
        """What the solver did, from its final state: `sliding_entries`,
        `sliding_exits` (cumulative), `sliding_pairs` (sliding at the end),
        `sliding_max_pairs`, `sliding_max_per_neuron` (the most slots one neuron used:
        compare with `max_sliding`), `sliding_dependent` (the most pairs in one
        accepted step held on their kink by the samples sliding there, on which
        their sample depends linearly without being on one line with one of them:
        0 on generic data; see `held_on_kink`), `sliding_overflow` (pairs
        refused for lack of a slot, summed over steps), `mode_changes` (accepted
        steps that changed the set), `crossings_started` (transversal crossings
        started at the beginning of a step, see `crossings`), `crossings_located`
        (sign changes of non-sliding pairs located inside accepted steps,
        `crossings="locate"`) and `entries_started` (entries into sliding started
        at the beginning of a step, `crossings="locate"`) and `min_transversality`
        (over all located events, the smallest speed of `z_ij` through its kink relative to
        `||x_i|| ||dw_j/dt||`: near 0 a touch is tangential, where the flow has no
        derivative and the jump terms grow like its inverse; `inf` when no event was
        located, NaN unless `crossings="locate"`), `min_event_gap` (the smallest time
        between two events, crossings or entries, of one neuron: 0 to rounding when two
        happen at the same instant, where the derivative depends on their order and
        does not exist; `inf` when no neuron had two; NaN unless `"locate"`) and
        `min_touch` (over the pairs that came toward their kink and turned back inside
        a step without crossing, the closest approach `|z_ij| / (||x_i|| ||w_j||)` on
        the step's interpolant: near 0 a tangential touch, where the flow has no
        derivative; negative when a pair crossed and came back inside one step, two
        crossings not located; `inf` when none turned back; NaN unless
        `"locate"`)."""
        return {
            "sliding_entries": state.entries,
            "sliding_exits": state.exits,
            "sliding_pairs": jnp.sum(state.idx >= 0).astype(jnp.int32),
            "sliding_max_pairs": state.max_pairs,
            "sliding_max_per_neuron": state.max_per_neuron,
            "sliding_dependent": state.dependent,
            "sliding_overflow": state.overflow,
            "mode_changes": state.mode_changes,
            "crossings_started": state.started,
            "crossings_located": state.located,
            "entries_started": state.started_entries,
            "min_transversality": state.transversality,
            "min_event_gap": state.event_gap,
            "min_touch": state.touch,
        }
