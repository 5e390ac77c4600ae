r"""Step-size control that ends steps just before ReLU kink crossings.

A pair `(i, j)` that crosses its kink `z_ij = <x_i, w_j> = 0` *transversally* (without
sliding) switches the indicator `1[z_ij > 0]` in the `w`-equation: the vector field
jumps. A Runge-Kutta step that contains the jump has a first-order local error that
its embedded error estimate under-rates, and on ill-conditioned problems (MNIST, where
a few neurons decide their direction through a close competition of crossings) these
errors decide the solution: with error control alone the error at `T` does not fall
with the tolerance.

`CrossingController` wraps Diffrax's `PIDController`. After each step it extrapolates
every pair's `z_ij` linearly (the secant over the step just taken) and, when the
crossings predicted inside the step the PID proposes would cost more than a budget of
its tolerance, shortens that step to end a fraction `margin` before the crossing that
exhausts the budget. The next step then starts just before the crossing, and
`SlidingReLU` evaluates it on the far side for the pairs whose crossing is that close
(within `window` of the step, from the exact start velocity), integrating the short
near-side part exactly: the crossing then costs a local error of second order in the
distance to it instead of `O(dt |jump|)`. Diffrax locates events by root finding but
stops the solve at one; thousands of crossings need a controller, hence this by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._batching import rare_cond
from ._dataset import Dataset
from ._field import term_loss
from ._loss import AbstractLoss


# Default `budget`: the crossings left inside a step may cost half its tolerance in
# all (a threshold per crossing either lets many small crossings add up inside one
# step or lands on each of them; docs page *Sliding*).
BUDGET = 0.5
# Default `budget` of `EventController`: its costs are those of events located in the
# step just taken, and at half the tolerance the ones left inside steps decided the
# error at the default `rtol` on MNIST; at a tenth they still decided it on M300 at
# loose tolerances, at a hundredth the error follows `rtol` there for 2% more work
# (measurements on the docs page *Benchmarks*).
EVENT_BUDGET = 0.01
EXIT_OVERSHOOT = (
    1e-2  # retried steps end this fraction of the rest of the step past an exit
)
BINS = 64  # crossing times are summed in this many bins of the proposed step


def transversal_approach(
    Z: Array, zdot: Array, C: Array, x: Array, leak: float
) -> tuple[Array, Array]:
    """`(near, toward)`: the side of each pair (`z_ij > 0`), and the pairs that move
    toward their kink at velocity `zdot` and keep going on the far side, where the
    `w`-velocity loses (or gains) `(1 - leak) c_ij x_i`, i.e. `zdot_ij` changes by
    `-+(1 - leak) c_ij |x_i|^2` (without a projection): transversal crossings, as
    opposed to pairs whose boundary attracts from both sides (sliding candidates)."""
    near = Z > 0
    toward = jnp.where(near, zdot < 0, zdot > 0)
    jump = (1.0 - leak) * C * jnp.sum(x * x, axis=1)[:, None]
    return near, toward & jnp.where(near, zdot - jump < 0, zdot + jump > 0)


JOINT_PAIRS = 64  # crossings starting together whose joint far side is checked


def jointly_turned_back(
    starting: Array,
    near: Array,
    zdot: Array,
    C: Array,
    x: Array,
    leak: float,
    size: int = JOINT_PAIRS,
) -> Array:
    """The pairs among `starting` (transversal crossings one at a time, which would
    start together) that their neuron's other starting pairs turn back: with every
    starting pair of the neuron switched to its far side, the pair's velocity
    `zdot_ij - sum_k (1 -+ leak) c_kj <x_i, x_k>` (without a projection, like
    `transversal_approach`) points back to its kink. Pairs on one ray (duplicate
    samples) cross together, and one at a time each can be transversal while
    together they slide: started as crossings, they came back at once, in every
    step, and the solve made no progress. Checked for up to `size` starting pairs
    (gathered, `O(size^2 D)`; nothing in steps with fewer than two); with more, the
    one-at-a-time check stands. The solver then makes them candidates to enter
    sliding together.
    """
    n, h = starting.shape
    size = min(size, starting.size)
    count = jnp.sum(starting, dtype=jnp.int32)
    coef = jnp.where(starting, jnp.where(near, 1.0 - leak, leak - 1.0) * C, 0.0)

    def check():
        i, j = jnp.nonzero(starting, size=size, fill_value=0)
        valid = jnp.arange(size) < count
        xi = x[i]
        same = (j[:, None] == j[None, :]) & valid[:, None] & valid[None, :]
        gram = jnp.where(same, xi @ xi.T, 0.0)
        far = zdot[i, j] - gram @ coef[i, j]
        back = valid & jnp.where(near[i, j], far >= 0, far <= 0)
        return jnp.zeros((n, h), bool).at[jnp.where(valid, i, n), j].set(back, mode="drop")

    def none():
        return jnp.zeros((n, h), bool)

    return jax.lax.stop_gradient(rare_cond((count >= 2) & (count <= size), check, none))


class CrossingState(eqx.Module):
    """State of `CrossingController`: the PID's, `Z = X W` at the current state (so
    that each step costs one product with the data), the steps shortened, and the
    loss, read from the term at `init`."""

    pid: Any
    Z: Array
    landings: Array
    loss: AbstractLoss


class _WrappedPID(diffrax.AbstractAdaptiveStepSizeController):
    """What `CrossingController` and `EventController` share: a wrapped
    `diffrax.PIDController` (`pid`), whose tolerances they expose, the checks of
    `margin`, `window` and `budget`, and the error scale of an event."""

    def __check_init__(self):
        if not isinstance(self.pid, diffrax.PIDController):
            raise ValueError(
                f"pid must be a diffrax.PIDController, got {type(self.pid).__name__}"
            )
        for name in ("margin", "window"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {v}")
        if not self.budget > 0:
            raise ValueError(f"budget must be positive, got {self.budget}")

    # Diffrax's adaptive controllers expose their tolerances: those of the PID.
    @property
    def rtol(self):
        return self.pid.rtol

    @property
    def atol(self):
        return self.pid.atol

    @property
    def norm(self):
        return self.pid.norm

    def wrap(self, direction):
        return eqx.tree_at(lambda c: c.pid, self, self.pid.wrap(direction))

    def _scaled(self, cost: Array, W: Array, size: int) -> Array:
        """`cost` (per pair) in units of the tolerance: over `atol + rtol rms(w_j)`
        per neuron, spread over all `size` parameters."""
        scale = self.atol + self.rtol * jnp.sqrt(jnp.mean(W * W, axis=0))
        return cost / (scale[None, :] * jnp.sqrt(size))


class CrossingController(_WrappedPID):
    r"""Wraps a `diffrax.PIDController` to end a step just before the first predicted
    transversal crossing of a ReLU kink that matters.

    For `SlidingReLU` on `TwoLayerReLU` models: the state must have `W`, `V`, `args`
    is the `Dataset`, and the term is `ODETerm(GradientField(loss))`, whose loss gives
    `c_ij`.

    A crossing of pair `(i, j)` left inside a step costs an error: with
    `c_ij = <r_i, v_j>` the jump of `dw_j/dt` is `(1 - leak) |c_ij| |x_i|`, and its
    error over a proposed step `dt` is estimated as `dt / 4` times that, in the
    controller's scale (`atol + rtol rms(w_j)`, per neuron, spread over all parameters
    like Diffrax's RMS norm). These errors are summed in time order (in `BINS` bins of
    the step); where the sum first exceeds `budget`, the step ends `margin` before the
    first crossing of that bin. Summing matters: on MNIST many crossings happen at
    once, each small, and a threshold per crossing either lets them add up or lands on
    every one of them. Crossings nearer than `window` times the proposed step are left
    to the solver, which starts them at the beginning of the step
    (`SlidingReLU(crossing_window=...)`); the same `window` must be used by both
    (`SlidingReLU.controller` builds a matching one).

    **Arguments:**

    - `pid`: the `diffrax.PIDController` this wraps, with all its settings (its `rtol`
      and `atol` also scale the crossings' errors).
    - `margin`: the step ends this fraction of the predicted crossing time before it.
    - `window`: crossings predicted within this fraction of the proposed step are not
      landed on (the solver starts them at the step's start).
    - `budget`: the summed estimated error (in units of the tolerance) of the
      crossings a step may contain.

    Its `landings` (steps shortened) are reported as `crossing_landings` in
    `Trajectory.stats`.
    """

    pid: diffrax.PIDController
    margin: float = eqx.field(static=True, default=0.02)
    window: float = eqx.field(static=True, default=0.05)
    budget: float = eqx.field(static=True, default=BUDGET)

    def init(self, terms, t0, t1, y0, dt0, args: Dataset, func, error_order):
        loss = term_loss(terms)
        t1, pid_state = self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)
        Z = args.x @ y0.W
        landings = jnp.zeros((), jnp.int32)
        return t1, CrossingState(pid=pid_state, Z=Z, landings=landings, loss=loss)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args: Dataset, y_error, error_order, state
    ):
        keep, next_t0, next_t1, made_jump, pid_state, result = self.pid.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state.pid
        )
        x = args.x
        Z0 = state.Z
        Z1 = x @ y1_candidate.W
        velocity = (Z1 - Z0) / (t1 - t0)
        # The next step starts at y1 if this one is accepted, at y0 again if not.
        Z = jnp.where(keep, Z1, Z0)
        W = jnp.where(keep, y1_candidate.W, y0.W)
        V = jnp.where(keep, y1_candidate.V, y0.V)
        leak = y0.leak

        H = jnp.where(Z > 0, Z, leak * Z)
        C = state.loss.residual(H @ V.T, args) @ V
        # Only transversal crossings (the solver's test for its started crossings): a
        # pair whose boundary attracts from both sides slides instead, and landing
        # before it would only repeat.
        _, toward = transversal_approach(Z, velocity, C, x, leak)
        s = jnp.where(toward, -Z / jnp.where(toward, velocity, 1.0), jnp.inf)
        dt = next_t1 - next_t0
        size = y0.W.size + y0.V.size
        jump = (1.0 - leak) * jnp.abs(C) * jnp.linalg.norm(x, axis=1)[:, None]
        error = self._scaled(0.25 * dt * jump, W, size)
        inside = toward & (s > self.window * dt) & (s < dt)
        # Summed in time order by bins (one scatter-add) rather than sorted: a sort of
        # the `n h` crossing times in every step costs more than the step on large data.
        frac = jnp.where(inside, s / dt, 0.0)
        bins = jnp.clip(jnp.floor(frac * BINS), 0, BINS - 1).astype(jnp.int32)
        spent = jnp.zeros(BINS, error.dtype).at[bins].add(jnp.where(inside, error, 0.0))
        over = jnp.cumsum(spent) > self.budget
        last = jnp.argmax(over)
        first = jnp.min(jnp.where(inside & (bins == last), s, jnp.inf))
        first = jnp.where(jnp.any(over), first, jnp.inf)
        shorten = jnp.isfinite(first)
        dt = jnp.where(shorten, jnp.minimum(dt, first * (1.0 - self.margin)), dt)
        new_state = CrossingState(
            pid=pid_state,
            Z=Z,
            landings=state.landings + shorten.astype(jnp.int32),
            loss=state.loss,
        )
        # (As in `EventController`.)
        next_t1 = jax.lax.stop_gradient(_after(next_t0, next_t0 + dt))
        return keep, next_t0, next_t1, made_jump, new_state, result

    @staticmethod
    def stats(state: CrossingState) -> dict[str, Array]:
        """`crossing_landings`: steps shortened to end just before a crossing."""
        return {"crossing_landings": state.landings}


class EventState(eqx.Module):
    """State of `EventController`: the PID's and the counters."""

    pid: Any
    landings: Array  # steps shortened to end before a predicted event
    retries: Array  # steps rejected because they contained a located event
    cap: Array  # the step the PID proposed before it was shortened (inf if it was not)
    restarts: Array  # steps (accepted or not) that evaluated their first stage again
    past: Array  # steps retried to end just past the crossings that failed them
    past_t0: Array  # the start of the last such retry
    past_n: Array  # how many such retries from that start
    past_dt: Array  # the step that the first of them retried


def _first_over_budget(theta: Array, cost: Array, budget: float) -> Array:
    """The earliest `theta` (a fraction of the step) at which the costs of the events
    up to it, summed in time order (in `BINS` bins), exceed `budget`; `inf` if none.
    Within the bin where they do, the earliest event that costs something: a free
    event there (a crossing corrected inside the step) does not end the step (rank-4
    data at `rtol 1e-11`: a corrected crossing at 2e-13 of a step shared the first bin
    with an entry at 0.045, and the step was retried to end before the crossing at
    the time's rounding, 3,000 times)."""
    inside = jnp.isfinite(theta) & (theta >= 0.0) & (theta <= 1.0)
    frac = jnp.where(inside, theta, 0.0)
    bins = jnp.clip(jnp.floor(frac * BINS), 0, BINS - 1).astype(jnp.int32)
    spent = jnp.zeros(BINS, cost.dtype).at[bins].add(jnp.where(inside, cost, 0.0))
    over = jnp.cumsum(spent) > budget
    last = jnp.argmax(over)
    first = jnp.min(jnp.where(inside & (bins == last) & (cost > 0), theta, jnp.inf))
    return jnp.where(jnp.any(over), first, jnp.inf)


# How many entries `gather_present` keeps: the pairs with an event in one step are a
# few hundred on M3147 (at most `crossing_limit` corrected ones, 256 by default).
GATHERED = 4096


def gathering_pays(size: int) -> bool:
    """Whether `n x h` pairs (`size` of them) are worth `gather_present` before a
    `top_k` or `sort`: above twice `GATHERED`. Below, the operation on all pairs is
    cheap, and the program stays the one without the gather."""
    return size > 2 * GATHERED


def gather_present(values: Array, size: int = GATHERED) -> tuple[Array, Array, Array]:
    """`(kept, index, count)`: the entries of `values` (flattened) other than `+inf`,
    in their order, padded with `+inf` to `size` (`kept`, exact when `count <= size`);
    the flat index of each entry kept (`values.size` in the padding); and how many
    there are (`count`).

    Selecting or sorting the few events of a step among all `n x h` pairs costs XLA's
    `top_k` or `sort` of the whole array, about 13 ms for M3147's 157,350 pairs on a
    CPU (2 cores), against 1 ms for this gather and the same operation on `size`
    entries. JAX has no compaction primitive (`jnp.nonzero` with a `size` builds
    on a `cumsum`, which XLA lowers to a slower reduce-window on a CPU), hence this
    one: a running count by `associative_scan` places each entry kept."""
    flat = values.reshape(-1)
    present = flat != jnp.inf
    slot = jax.lax.associative_scan(jnp.add, present.astype(jnp.int32)) - 1
    to = jnp.where(present, slot, size)  # (`size` and beyond: dropped)
    kept = jnp.full(size, jnp.inf, flat.dtype).at[to].set(flat, mode="drop")
    index = (
        jnp.full(size, flat.size, jnp.int32)
        .at[to]
        .set(jnp.arange(flat.size, dtype=jnp.int32), mode="drop")
    )
    return kept, index, slot[-1] + 1


def earliest(values: Array, count: int) -> Array:
    """The `count` smallest of `values` (over all axes, derivatives stopped), in
    increasing order: `inf` where fewer are finite. (`top_k` of the negated values,
    of those `gather_present` keeps where that is all of them.)"""
    flat = jax.lax.stop_gradient(values).reshape(-1)
    if not gathering_pays(flat.size) or count > GATHERED:
        return -jax.lax.top_k(-flat, count)[0]
    kept, _, present = gather_present(flat)
    return rare_cond(
        present > GATHERED,
        lambda: -jax.lax.top_k(-flat, count)[0],
        lambda: -jax.lax.top_k(-kept, count)[0],
    )


def _after(t0: Array, t: Array) -> Array:
    """`t`, or the first time representable after `t0` where `t` rounds to `t0` or
    before it. A step of length 0 is a fixed point of the controller (the PID scales
    the last step, and 0 stays 0): an event located closer to a step's start than the
    rounding of the time (float32 at a tight `rtol`) would otherwise hold the solve
    there until `max_steps`. (`jnp.nextafter`: the time's own resolution, which no
    relative constant gives at every `t`.)"""
    # (`nextafter` has no derivative rule; step times carry none anyway.)
    t0 = jax.lax.stop_gradient(t0)
    return jnp.maximum(t, jnp.nextafter(t0, jnp.asarray(jnp.inf, t0.dtype)))


# A step rejected for the error of the crossings corrected inside it is retried to end
# just past the first of them (`EventController(past=True)`). That error grows as the
# cube of the part of the step after the crossing, whatever the part before: on the
# one-neuron problem of the tests (one crossing, `rtol 1e-8`) nine steps with parts
# after it from 0.0022 to 0.14 had errors from 0.34 to 6.2e4 times the tolerance,
# each within 20% of one constant times the cube. The retry keeps `PAST_SAFETY *
# error^(-1/3)` of that part (clipped to `PAST_CLIP`), at most `PAST_TRIES` times from
# one start, and only where the step's corrected crossings lie within `PAST_SPAN` of
# the step of each other (spread-out crossings are left to the PID, which shortens
# the step as a whole: on the `ncjax run` problem a span of 2 cost 3% more
# evaluations, a span of 0.5 saved 1%).
PAST_SAFETY = 0.9
PAST_CLIP = (0.02, 0.5)
PAST_TRIES = 2
PAST_SPAN = 0.5


class EventController(_WrappedPID):
    r"""Wraps a `diffrax.PIDController` to end steps at the ReLU kink events that
    `SlidingReLU(crossings="locate")` locates.

    The solver's error estimate is a `Located`: the parameters' error estimate (which
    the PID controls as usual), and for each pair `(i, j)` the time of its kink event
    inside the step (a fraction `theta` of it, located on the interpolant of `z_ij`)
    with the estimated error of leaving it there, and `z`, `dz/dt`, `c` at the end of
    the step. In the controller's scale (`atol + rtol rms(w_j)`, spread over all
    parameters like Diffrax's RMS norm), event costs are summed in time order; where
    the sum first exceeds `budget`:

    - in the step just taken, the step is rejected and retried to end a fraction
      `margin` (of the time to the event) before that event;
    - in the step the PID proposes next (events predicted from the exact velocity at
      the end of the accepted step: transversal crossings at a quarter of the jump
      times the step, entries into sliding at the jump times the rest of the step), the
      step ends `margin` before it.

    A pair that is then within `window` of its kink is started by the solver at the
    beginning of the next step (with the same `window`; `SlidingReLU.controller`
    builds a matching one).

    **Arguments:**

    - `pid`: the `diffrax.PIDController` this wraps.
    - `margin`: steps end this fraction of the time to an event before it.
    - `window`: events nearer than this fraction of the proposed step are left to the
      solver.
    - `budget`: the summed estimated error (in units of the tolerance) of the events a
      step may contain (default `EVENT_BUDGET`, 0.01).
    - `transversal`: the predicted cost of a transversal crossing, as a fraction of
      its jump times the step (default 0.25); 0 when the solver corrects crossings
      inside its steps (`SlidingReLU(correct_crossings=True)`).
    - `step_ts`: times that steps end at (sorted), or `None`.
    - `limit`: the most transversal crossings a step may hold, or `None`: the
      proposed step ends before the crossing after the first `limit` predicted in it
      (`SlidingReLU(correct_crossings=True)` passes its `crossing_limit`, and
      retries a step that holds more).
    - `past`: a step that failed the error test for the error of the crossings
      corrected inside it (more than half of its error) is retried to end just past
      the first of them rather than where the PID proposes, which is before them
      (then the next step takes them in a long step again); the next step after the
      retry is again as long as the step it retried. Default `False`;
      `SlidingReLU(correct_crossings=True)` turns it on, except in a solve that is
      differentiated (`for_derivatives`), which takes `before` instead.
    - `before`: as `past`, but the step is retried to end `margin` before the first
      of those crossings, which the solver then starts at the next step's
      beginning (`SlidingReLU` does so in a solve that is differentiated; with a
      solver that does not, the retries repeat up to `max_steps`). Default
      `False`.

    Its `landings` (steps shortened before a predicted event) and `retries` (steps
    rejected and retried to end before a located event) are reported as
    `event_landings` and `event_retries` in `Trajectory.stats`, and its retries
    just past corrected crossings (`past`) as `event_retries_past`.
    """

    pid: diffrax.PIDController
    margin: float = eqx.field(static=True, default=1e-3)
    window: float = eqx.field(static=True, default=0.05)
    budget: float = eqx.field(static=True, default=EVENT_BUDGET)
    transversal: float = eqx.field(static=True, default=0.25)
    step_ts: Array | None = None
    limit: int | None = eqx.field(static=True, default=None)
    past: bool = eqx.field(static=True, default=False)
    before: bool = eqx.field(static=True, default=False)

    def _clip(self, t0: Array, t1: Array) -> Array:
        """`t1`, or the first time of `step_ts` after `t0` where it lies before `t1`."""
        if self.step_ts is None:
            return t1
        # (Diffrax's `ClipStepSizeController` does this too, but its state hides
        # this controller's counters from the solve's statistics.)
        ts = self.step_ts.astype(jnp.result_type(t1))
        k = jnp.searchsorted(ts, t0, side="right")
        t_next = ts[jnp.minimum(k, ts.size - 1)]
        return jnp.where((k < ts.size) & (t_next < t1), t_next, t1)

    def for_derivatives(self) -> EventController:
        """This controller for a solve that is differentiated: `before` in place of
        `past`, and a budget of at most `EVENT_BUDGET`.

        A crossing at the end of a long step has a value within the tolerance, but
        the derivative through it is one order less accurate and grows with the
        whole step, not only with its part after the crossing: on the one-neuron
        problem the gradient was 1.4e-5 off SciPy's with `past`, 5.7e-8 without.
        Without either, the PID retries such a step to end well before the
        crossings and takes them in a long step again: on the orthogonally
        separable set of `benchmarks/bench_grad.py` the differentiated solve took
        205 steps that way and takes 139 with `before` (132 for the solve that is
        not differentiated), MNIST-60 128 and 78 (docs page *Differentiating the
        flow*, *Cost*). The
        events a larger budget leaves inside steps (exits, crossings) are
        likewise within it in value, not in derivative: on a sliding problem with
        `budget=1e6` the gradient was 1.6e-6 off with the corrected crossings and
        2e-2 without (docs page *Differentiating the flow*)."""
        return dataclasses.replace(
            self,
            past=False,
            before=self.past or self.before,
            budget=min(self.budget, EVENT_BUDGET),
        )

    def init(self, terms, t0, t1, y0, dt0, args: Dataset, func, error_order):
        t1, pid_state = self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)
        zero = jnp.zeros((), jnp.int32)
        cap = jnp.asarray(jnp.inf, jnp.result_type(t0, float))
        return self._clip(t0, t1), EventState(
            pid=pid_state,
            landings=zero,
            retries=zero,
            cap=cap,
            restarts=zero,
            past=zero,
            past_t0=jnp.asarray(-jnp.inf, jnp.result_type(t0, float)),
            past_n=zero,
            past_dt=jnp.asarray(0.0, jnp.result_type(t0, float)),
        )

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args: Dataset, y_error, error_order, state
    ):
        located = y_error
        keep, next_t0, next_t1, made_jump, pid_state, result = self.pid.adapt_step_size(
            t0, t1, y0, y1_candidate, args, located.model, error_order, state.pid
        )
        size = y0.W.size + y0.V.size
        x = args.x
        leak = y0.leak
        dt_taken = t1 - t0
        # After a step shortened to end before an event, the PID sees the small error
        # of a short step and would grow the next one by its largest factor, past the
        # step it had proposed: it gets at most the step it proposed before.
        next_t1 = jnp.where(keep, jnp.minimum(next_t1, next_t0 + state.cap), next_t1)
        pid_dt = next_t1 - next_t0
        if self.past or self.before:
            # A step rejected for its corrected crossings' error, which the PID would
            # retry to end before them (and then take them in a long step again,
            # rejected again: on the one-neuron problem seven rejections and ten
            # short steps for one crossing), is retried to end just past the first
            # of them, with that error's part after it shrunk as its cube says.
            def scaled(error):
                """`error` in units of the PID's tolerance, in the PID's norm."""

                def unit(e, a, b):
                    return e / (self.atol + self.rtol * jnp.maximum(abs(a), abs(b)))

                return self.norm(
                    jax.tree.map(
                        unit,
                        (error.W, error.V),
                        (y0.W, y0.V),
                        (y1_candidate.W, y1_candidate.V),
                    )
                )

            # (Diffrax's PID keeps its scaled error to itself: the step's whole error
            # is scaled again here, one pass over the parameters.)
            e_in = scaled(located.inside)
            th_first, th_last = located.theta_in[0], located.theta_in[1]
            if self.before:
                # (Ended `margin` before the first crossing: the solver starts it.)
                t_past = _after(t0, t0 + dt_taken * th_first * (1.0 - self.margin))
            else:
                keep_part = jnp.clip(
                    PAST_SAFETY * jnp.maximum(e_in, 1e-30) ** (-1.0 / 3.0), *PAST_CLIP
                )
                t_past = t0 + dt_taken * (th_first + (1.0 - th_first) * keep_part)
            same = t0 == state.past_t0
            past = (
                ~keep
                & (e_in > 0.5 * scaled(located.model))
                & jnp.isfinite(th_first)
                & (th_last - th_first <= PAST_SPAN)
                & (~same | (state.past_n < PAST_TRIES))
            )
            next_t1 = jnp.where(past, t_past, next_t1)
            # The retry accepted: the next step as long as the step it retried (its
            # error was the crossings'; the PID would start again from the retry).
            resumed = keep & same
            next_t1 = jnp.where(
                resumed, jnp.maximum(next_t1, next_t0 + state.past_dt), next_t1
            )
            past_dt = jnp.where(past & ~same, dt_taken, state.past_dt)
            past_t0 = jnp.where(past, t0, jnp.where(resumed, -jnp.inf, state.past_t0))
            past_n = jnp.where(past, jnp.where(same, state.past_n + 1, 1), state.past_n)
            pasts = state.past + past.astype(jnp.int32)
        else:
            past_t0, past_n, past_dt = state.past_t0, state.past_n, state.past_dt
            pasts = state.past
        # Events located inside the step just taken.
        theta = _first_over_budget(
            located.theta, self._scaled(located.cost, y0.W, size), self.budget
        )
        # An exit from sliding (an event of a sliding pair) is decided at the start
        # of a step, so the retried step ends just past it (by `EXIT_OVERSHOOT` of the
        # rest of the step: the pair is then held past its exit for a second-order
        # time); crossings and entries just before them.
        exit_first = jnp.any(
            (located.sliding > 0) & jnp.isfinite(located.theta) & (located.theta == theta)
        )
        target = _after(
            t0,
            t0
            + dt_taken
            * jnp.where(
                exit_first,
                theta + EXIT_OVERSHOOT * (1.0 - theta),
                theta * (1.0 - self.margin),
            ),
        )
        # Retried only to a shorter step: an event within the time's rounding of the
        # start of a step as short as the time allows is left inside it.
        retry = jnp.isfinite(theta) & ((theta > 0) | exit_first) & (target < t1)
        retry_now = retry & keep
        # Retried: the step starts again at t0 and ends just before the event (or
        # earlier if the PID rejected the step for its own error and proposes less).
        next_t0 = jnp.where(retry_now, t0, next_t0)
        next_t1 = jnp.where(
            retry_now,
            target,
            jnp.where(retry & ~keep, jnp.minimum(next_t1, target), next_t1),
        )
        keep = keep & ~retry_now

        # Events predicted in the next step from the exact velocity at its start.
        # Sliding pairs are on their kink, where `z` and its velocity are rounding
        # (their exits are decided at the start of a step), and not predicted.
        Z, zdot, C = located.Z, located.zdot, located.C
        near = Z > 0
        toward = jnp.where(near, zdot < 0, zdot > 0) & (located.sliding == 0)
        # The root of the quadratic Taylor model of z nearest the linear one (none if
        # the pair turns back first): second order in the time to the event, so that
        # steps end close enough before it for the solver to start it.
        b = 0.5 * located.zddot
        disc = zdot * zdot - 4.0 * b * Z
        root = jnp.sqrt(jnp.maximum(disc, 0.0))
        den = zdot + jnp.where(zdot >= 0, root, -root)
        s = -2.0 * Z / jnp.where(toward & (den != 0), den, 1.0)
        s = jnp.where(toward & (disc >= 0) & (s > 0), s, jnp.inf)
        dt = next_t1 - next_t0
        _, transversal = transversal_approach(Z, zdot, C, x, leak)
        entry = toward & ~transversal & (C < 0)
        frac = s / dt
        weight = jnp.where(entry, 1.0 - frac, self.transversal)
        jump = (1.0 - leak) * jnp.abs(C) * jnp.linalg.norm(x, axis=1)[:, None]
        cost = jnp.where(toward, dt * jump * weight, 0.0)
        ahead = jnp.where(toward & (frac > self.window) & (frac < 1.0), frac, jnp.inf)
        first = _first_over_budget(
            ahead, self._scaled(cost, y1_candidate.W, size), self.budget
        )
        if self.limit is not None and frac.size > self.limit:
            # The step ends before the crossing after the first `limit` predicted in
            # it, where that one is later than the first (a step that ends before
            # crossings all at one instant would end before them again and again):
            # the solver retries a step that holds more than `limit` (on M3147 to `t
            # = 0.002`, with this 5,568 evaluations against 7,384 without).
            ahead_all = jnp.where(toward & (frac > 0) & (frac < 1.0), frac, jnp.inf)

            def cut():
                first_ones = earliest(ahead_all, self.limit + 1)
                after = first_ones[self.limit]
                return jnp.where(after > first_ones[0], after, jnp.inf)

            def none():
                return jnp.asarray(jnp.inf, frac.dtype)

            enough = jnp.sum(jnp.isfinite(ahead_all)) > self.limit
            first = jnp.minimum(first, rare_cond(enough, cut, none))
        # Crossings and entries within `window` of the proposed step are left to the
        # solver, which starts them; a step shortened before a later event would
        # leave some of them inside it, unstarted (further than `window` of the
        # shorter step): it ends before the first of those instead.
        stranded = (
            (transversal | entry)
            & (located.sliding == 0)
            & (frac <= self.window)
            & (frac > self.window * first)
            & (cost > 0)
        )  # (with no event over budget, `first` is inf and nothing is stranded)
        first = jnp.minimum(first, jnp.min(jnp.where(stranded, frac, jnp.inf)))
        shorten = keep & jnp.isfinite(first)
        next_t1 = jnp.where(shorten, next_t0 + first * (1.0 - self.margin) * dt, next_t1)
        shortened = shorten | retry_now
        cap = jnp.where(
            shortened,
            jnp.where(retry_now, jnp.maximum(dt_taken, pid_dt), pid_dt),
            jnp.where(keep, jnp.inf, state.cap),
        )
        new_state = EventState(
            pid=pid_state,
            landings=state.landings + shorten.astype(jnp.int32),
            retries=state.retries + retry_now.astype(jnp.int32),
            cap=cap,
            restarts=state.restarts + jnp.round(located.restarted).astype(jnp.int32),
            past=pasts,
            past_t0=past_t0,
            past_n=past_n,
            past_dt=past_dt,
        )
        # The step times are choices of the method, not functions of the flow: their
        # derivatives are stopped (as Diffrax's PID stops those of its step factor).
        # The derivatives of the events' times enter where the solver resolves them
        # (started crossings and entries, `SlidingReLU`), from the state itself.
        next_t1 = jax.lax.stop_gradient(_after(next_t0, self._clip(next_t0, next_t1)))
        return keep, next_t0, next_t1, made_jump, new_state, result

    @staticmethod
    def stats(state: EventState) -> dict[str, Array]:
        """`event_landings` (steps shortened to end before a predicted kink event) and
        `event_retries` (steps rejected and retried to end before a located one) and
        `event_restarts` (steps that started an event and evaluated their first stage
        again at the shifted start, counted in `grad_evals`), `event_retries_past`
        (steps rejected for their corrected crossings' error and retried to end just
        past the first of them)."""
        return {
            "event_landings": state.landings,
            "event_retries": state.retries,
            "event_restarts": state.restarts,
            "event_retries_past": state.past,
        }
