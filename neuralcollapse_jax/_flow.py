"""The exact gradient flow `d theta/dt = -grad L(theta)`, integrated with Diffrax."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike

from ._adjoint import ForwardOrReverse, guard_derivatives, solver_for_derivatives
from ._dataset import Dataset, WithTranspose
from ._field import GradientField
from ._loss import AbstractLoss, as_loss
from ._loss import loss as loss_value
from ._model import TwoLayerReLU
from ._progress import LogTimeProgressMeter
from ._rk import UnrolledERK
from ._row_space import RowSpace, basis_of, reduce_to_row_space
from ._sliding_modes import ON_KINK
from ._solvers import evals_per_step, resolve_solver
from ._times import log_times
from ._trajectory import Status, Trajectory
from ._validation import check_flow_args, check_problem


Recorder = Callable[[TwoLayerReLU, Dataset], Any]

DEFAULT_RTOL = 1e-8
DEFAULT_MAX_STEPS = 100_000
# The default in float32, whose resolution (`eps` 1.2e-7) the float64 default is below:
# a float32 call at `rtol 1e-8` stalls at `max_steps` on MNIST data.
DEFAULT_RTOL_FLOAT32 = 1e-5


def default_rtol(dtype) -> float:
    """`gradient_flow`'s relative tolerance for parameters of `dtype`: `DEFAULT_RTOL`
    (1e-8), or `DEFAULT_RTOL_FLOAT32` (1e-5) in float32 and narrower types."""
    return DEFAULT_RTOL_FLOAT32 if jnp.finfo(dtype).bits <= 32 else DEFAULT_RTOL


def default_atol(model: TwoLayerReLU, rtol: ArrayLike) -> Array:
    """Scale-free absolute tolerance `rtol * rms(theta(0))` (`rtol` where `theta(0)` is
    zero, a fixed point of the flow).

    The state starts at size `eps` (down to 1e-12) and grows by orders of magnitude, so
    a fixed absolute tolerance is either meaningless at the start or wasteful later.
    Tying it to the initial RMS entry keeps the error control relative at every scale.
    """
    return _atol(model.W, model.V, jnp.asarray(rtol))


# The start-up quantities are small programs of their own (compiled once per shape):
# run operation by operation, each of their operations would compile separately on a
# first call (docs page *Benchmarks*, *Start-up*).
@jax.jit
def _atol(W: Array, V: Array, rtol: Array) -> Array:
    """`rtol` times the root mean square entry of `(W, V)`; `rtol` itself (scale 1)
    where every entry is zero."""
    mean_square = (jnp.sum(W**2) + jnp.sum(V**2)) / (W.size + V.size)
    # The zero network is a fixed point of the flow (every `z_ij` is zero and so is
    # every output, so the gradient vanishes): its steps' error estimates are exactly
    # zero, and any positive scale accepts them, while a zero `atol` made each error
    # ratio 0/0 and rejected every step. (The `where` before the root keeps the
    # derivative finite there.)
    nonzero = mean_square > 0
    return rtol * jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, mean_square, 1.0)), 1.0)


@jax.jit
def _pairs_on_kink(x: Array, W: Array) -> Array:
    """How many pairs have `z_ij = <x_i, w_j>` zero to rounding."""
    x, W = jax.lax.stop_gradient((x, W))
    bound = (
        ON_KINK
        * jnp.finfo(W.dtype).eps
        * jnp.linalg.norm(x, axis=1)[:, None]
        * jnp.linalg.norm(W, axis=0)[None, :]
    )
    return jnp.sum(jnp.abs(x @ W) <= bound, dtype=jnp.int32)


def _status(result, final_ok: Array, ts_ok: Array) -> Array:
    """Map a Diffrax result, the finiteness of the final state and the validity of
    the save times to a `Status` code."""
    code = jnp.where(
        result == diffrax.RESULTS.successful,
        Status.SUCCESS,
        jnp.where(
            result == diffrax.RESULTS.max_steps_reached, Status.MAX_STEPS, Status.FAILED
        ),
    )
    code = jnp.where(final_ok, code, Status.NONFINITE)
    return jnp.where(ts_ok, code, Status.FAILED).astype(jnp.int32)


def all_finite(tree) -> Array:
    """Whether every entry of every leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def save_function(
    loss: AbstractLoss,
    save_params: bool,
    record: Mapping[str, Recorder] | None,
    lift: RowSpace | None = None,
) -> Callable:
    """What is stored at each save time: the loss, optionally the parameters, and the
    recorded diagnostics (so that long runs on large data stay small in memory).
    With `lift`, the solver's state is reduced to the data's row space (`RowSpace`);
    everything is saved for the full model and the full data."""
    record = dict(record or {})

    def fn(t, y: TwoLayerReLU, data: Dataset):
        del t
        if lift is not None:
            y, data = lift.lift(y), lift.data
        out = {
            "loss": loss_value(y, data, loss),
            "records": {name: f(y, data) for name, f in record.items()},
        }
        if save_params:
            out["params"] = (y.W, y.V)
        return out

    return fn


def gradient_flow(
    model: TwoLayerReLU,
    data: Dataset,
    *,
    t1: float | ArrayLike,
    saveat: ArrayLike | None = None,
    loss: str | AbstractLoss = "cross_entropy",
    reduction: str | None = None,
    rtol: float | ArrayLike | None = None,
    atol: float | ArrayLike | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    solver: diffrax.AbstractSolver | str | None = None,
    record: Mapping[str, Recorder] | None = None,
    save_params: bool = True,
    progress: bool = False,
    dt0: float | None = None,
    row_space: bool | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
) -> Trajectory:
    r"""Integrate the exact gradient flow `d theta/dt = -grad L(theta)` from `model`.

    The ReLU is not smoothed. The default solver computes the Filippov solution (pairs
    on an attracting kink slide on it; elsewhere the papers' field, `relu'(0) = 0`),
    the limit of gradient descent as its step shrinks; `solver="regular"` integrates
    the regular field itself. Integration uses Diffrax with an adaptive step and never
    raises on solver failure: the outcome is in `Trajectory.status`, and a call outside
    `jax.jit` and `jax.vmap` also warns (`RuntimeWarning`) when the horizon was not
    reached, and when samples lay on a kink held there by dependent samples sliding
    on it (`stats["sliding_dependent"] > 0`: exactly degenerate data, where the flow
    need not be unique; docs page *Sliding*).

    Works under `jax.jit` and `jax.vmap` (batch over models, init scales, seeds, data of
    equal shape, `t1`, tolerances and save times: all are traced, nothing recompiles
    per value).

    **Arguments:**

    - `model`: the initial network `theta(0)`.
    - `data`: the training `Dataset`.
    - `t1`: the horizon (time starts at 0).
    - `saveat`: increasing save times in `[0, t1]` (default `log_times(t1)`; for a
      traced `t1`, the same fractions of `t1`, so that `jax.grad` in `t1` needs no
      `saveat`).
    - `loss`, `reduction`: a name in `LOSS_NAMES` and `"sum"` (default) or `"mean"`,
      or an `AbstractLoss` (see `as_loss`). Default: sum cross-entropy.
    - `rtol`: relative tolerance of the step-size controller (default `1e-8`; `1e-5`
      when the model is float32, see `default_rtol`).
    - `atol`: absolute tolerance; default `rtol * rms(theta(0))` (see `default_atol`),
      which keeps the error control meaningful for any init scale.
    - `max_steps`: step budget; running out gives `Status.MAX_STEPS`, not an exception.
    - `solver`: `"auto"` (default, also `None`): `"events"` on any data
      (`auto_solver`): `SlidingReLU` with the `Tsit5` tableau, which holds the pairs
      that slide on their kink `<x_i, w_j> = 0` there instead of chattering across it
      and locates the kink events (crossings, entries into sliding) inside its steps
      (`crossings="locate"`; its controller, an `EventController` over a PI
      controller, replaces the `PIDController`; see the docs page *Sliding*), with
      the transversal crossings integrated inside the steps
      (`correct_crossings=True`; steps end at the save times). Steps that end at
      every event instead: `solver=SlidingReLU(crossings="locate")`. `"regular"`:
      the `Tsit5` tableau on the regular field `relu'(0) = 0`, run by `UnrolledERK`.
      `"sliding"`: the sliding solver with the previous crossing control
      (`crossings="land"`), with the `Bosh3` tableau when `rtol >= 1e-6` and `Tsit5`
      below (`sliding_tableau`). Or
      another name in `SOLVER_NAMES`, or a Diffrax solver instance.
    - `record`: diagnostics to record at the save times, `{name: fn(model, data)}`.
    - `save_params`: keep the parameters at every save time (default). Turn off for
      long runs on large data and rely on `record` and `Trajectory.final`.
    - `progress`: show a progress bar (log-scaled in time).
    - `dt0`: initial step (default: chosen automatically). For a solver without an
      error estimate (`"euler"`), which cannot adapt its steps, the fixed step, and
      required: `solver="euler", dt0=lr` is gradient descent with learning rate `lr`
      at the times `k lr`.
    - `row_space`: integrate in the row space of `data.x` (`RowSpace`): exact, and
      cheaper when `rank(X) < D`, as for MNIST (784 pixels; 554 is the rank of the
      3147 centered test digits {0, 1, 2}, and `n - 1` for fewer centered samples). The
      trajectory is returned for the full model. The error control then works in the
      reduced coordinates, so step sizes differ slightly from a full-space run.
      Default `None`: when the data are concrete and their rank is at most half the
      dimension (`row_space_default`: 300 centered MNIST digits, rank 299 of 784);
      with data traced under `jit`/`vmap` (the rank decides array shapes) the flow
      is integrated in the full space, and `True` raises there. `False`: the full
      space. Full-rank data change nothing.
    - `adjoint`: how Diffrax differentiates the solve (default `default_adjoint`:
      `ForwardOrReverse()`, under which `jax.grad`/`jax.vjp` and `jax.jvp`/`jax.jacfwd`
      both work, also under an outer `jax.jit` or `jax.vmap`, or
      `diffrax.ForwardMode()` when `jax.jvp`/`jax.jacfwd` is applied directly around
      the call). Pass `ForwardOrReverse(checkpoints=...)` to bound the memory of
      reverse mode.
      Derivatives carry the jump terms of the kink events with the default solver
      (docs page *Differentiating the flow*). A solve that is differentiated (by the
      default adjoint, or by a transform directly around the call) runs the solver's
      `for_derivatives()`, whose steps with crossings are sized for the derivative's
      error too: the value returned with a derivative comes from it, within the
      tolerance of the undifferentiated call.

    **Returns:**

    A `Trajectory`.
    """
    if saveat is None:
        if isinstance(t1, jax.core.Tracer):
            # `log_times(t1)` is `t1` times fixed fractions, so a traced `t1` (under
            # `jax.grad`, `jax.jit` or `jax.vmap`) keeps the default: the same times,
            # to rounding, as a function of `t1` (the last is `1.0 * t1 = t1`).
            saveat = log_times(1.0) * t1
        else:
            saveat = log_times(float(np.asarray(t1)))
    loss = as_loss(loss, reduction)
    check_problem(model, data, loss)
    if rtol is None:
        rtol = default_rtol(model.W.dtype)
    check_flow_args(t1, saveat, rtol, atol, max_steps)
    solver = resolve_solver(solver, data, rtol)
    if not isinstance(solver, diffrax.AbstractAdaptiveSolver) and dt0 is None:
        raise ValueError(
            f"solver {type(solver).__name__} gives no error estimate, so its steps "
            "cannot adapt to a tolerance: pass dt0 for fixed steps of that size "
            "(max_steps at least t1 / dt0), or choose an adaptive solver"
        )
    dtype = model.W.dtype
    t1 = jnp.asarray(t1, dtype=dtype)
    ts = jnp.asarray(saveat, dtype=dtype)
    rtol = jnp.asarray(rtol, dtype=dtype)
    atol = default_atol(model, rtol) if atol is None else jnp.asarray(atol, dtype=dtype)
    # Pairs on their kink at t = 0 (z_ij = 0 to rounding): there the flow's derivative
    # along perturbations that move z_ij off the kink need not exist (a pair that
    # slides from the start, a dead neuron).
    on_kink = _pairs_on_kink(data.x, model.W)
    lift = None
    basis = row_space_default(data) if row_space is None else None
    if row_space or basis is not None:
        model, data, lift = reduce_to_row_space(model, data, basis)
    if adjoint is None:
        adjoint = default_adjoint(model, data, t1, ts)
    if differentiated(model, data, t1, ts):
        # A transform directly around the call differentiates this solve (whatever
        # the adjoint; `ForwardOrReverse` also sees the transforms behind an outer
        # `jit`).
        solver = solver_for_derivatives(solver)
    else:
        # A transform behind an outer `jit` or `vmap` that this call cannot see: a
        # derivative through a solver whose derivative misses jump terms is
        # reported where JAX takes it (a warning, or an error where the solver
        # would have to switch).
        model, data, t1, ts = guard_derivatives(solver, (model, data, t1, ts))
    traj = _solve(
        model,
        data,
        t1,
        ts,
        rtol,
        atol,
        lift,
        on_kink,
        solver=solver,
        loss=loss,
        max_steps=int(max_steps),
        record=tuple(sorted((record or {}).items())),
        save_params=save_params,
        progress=progress,
        dt0=dt0,
        adjoint=adjoint,
    )
    _warn_unless_reached(traj.status)
    _warn_if_held(traj.stats)
    return traj


# Set (per thread: the sweep solves runs in worker threads) by callers that report
# the status themselves.
_STATUS_REPORTED = contextvars.ContextVar("gradient_flow_status_reported", default=False)


@contextlib.contextmanager
def status_reported() -> Iterator[None]:
    """Within this context `gradient_flow` does not warn about a failed run: for
    callers that record or print `Trajectory.status` themselves (`sweep`, `ncjax
    run`). A context variable, not a warnings filter, which is global to the process
    and which the sweep's worker threads would restore under each other."""
    token = _STATUS_REPORTED.set(True)
    try:
        yield
    finally:
        _STATUS_REPORTED.reset(token)


def _warn_unless_reached(status) -> None:
    """A `RuntimeWarning` when a concrete (not traced) status is not a success: the
    save times past the failure hold `inf`, which a caller who does not read the
    status would otherwise take for numbers."""
    if _STATUS_REPORTED.get() or isinstance(status, jax.core.Tracer) or np.ndim(status):
        return
    code = int(status)
    if code != Status.SUCCESS:
        warnings.warn(
            f"gradient_flow: {Status.message(code)} (Trajectory.status = {code}); "
            "save times past the failure hold inf",
            RuntimeWarning,
            stacklevel=3,
        )


def _warn_if_held(stats) -> None:
    """A `RuntimeWarning` when a concrete (not traced) run met samples held on a
    neuron's kink by the samples sliding there (`sliding_dependent`, see
    `held_on_kink`): exactly degenerate data, where the flow need not be unique."""
    held = stats.get("sliding_dependent")
    if held is None or isinstance(held, jax.core.Tracer) or np.ndim(held):
        return
    if int(held) > 0:
        warnings.warn(
            f"gradient_flow: up to {int(held)} pairs lay on their kink only because "
            "their sample depends linearly on the samples sliding there "
            "(stats['sliding_dependent']): exactly degenerate data, such as lattice "
            "points with a constant feature. Through such points the Filippov flow "
            "need not be unique, the result can depend on the tolerance, and the "
            "solver may take many steps; data in general position has none (docs "
            "page Sliding)",
            RuntimeWarning,
            stacklevel=3,
        )


# `row_space=None` reduces when the rank is at most this fraction of the dimension.
# A gradient evaluation costs about `r / D` of the full one, the rest of a step does
# not shrink, and the reduced error norm takes slightly different steps: on 300
# centered MNIST digits (rank 299 of 784) the default call ran 1.7x faster in the row
# space; on 3147 (rank 554, 0.71) it gained nothing (docs page *Benchmarks*); on
# small orthogonally separable sets (rank 9 of 12) it only changes the rounding.
ROW_SPACE_RATIO = 0.5


def row_space_default(data: Dataset) -> np.ndarray | None:
    """The row space basis `gradient_flow(..., row_space=None)` integrates in: that of
    `data.x` (`row_space_basis`, as a NumPy array) when its rank is at most
    `ROW_SPACE_RATIO` times the dimension, else `None` (the full space), and `None` for
    data traced under `jit`/`vmap` (the rank decides array shapes)."""
    if isinstance(data.x, jax.core.Tracer):
        return None
    Q = basis_of(data)
    return Q if Q.shape[1] <= ROW_SPACE_RATIO * data.dim else None


# From how many samples the solve's `args` hold the data's transpose on CPU
# (`WithTranspose`). XLA's CPU product `X^T G` (`n x D` data, 50 columns, float64)
# is faster with `X` stored by rows below about 450 samples (1.2x at `n = 300`) and
# with the transpose stored above (0.74x at 1000 and at 3147): docs page *Benchmarks*,
# `bench_args.py`. On other devices (not measured) the data go in as they are.
TRANSPOSE_FROM = 512
# `None`: by `TRANSPOSE_FROM`; `True`/`False` force it (for `benchmarks/bench_args.py`;
# read when `_solve` is traced: clear JAX's caches after changing it).
TRANSPOSE_ONCE: bool | None = None


def solve_args(data: Dataset) -> Dataset:
    """The `args` of the solve: `data`, with its transpose formed once where that
    makes the products faster (`TRANSPOSE_FROM`)."""
    once = TRANSPOSE_ONCE
    if once is None:
        once = jax.default_backend() == "cpu" and data.x.shape[-2] >= TRANSPOSE_FROM
    return WithTranspose(data) if once else data


@eqx.filter_jit
def _solve(
    model,
    data,
    t1,
    ts,
    rtol,
    atol,
    lift,
    on_kink,
    *,
    solver,
    loss,
    max_steps,
    record,
    save_params,
    progress,
    dt0,
    adjoint,
) -> Trajectory:
    fn = save_function(loss, save_params, dict(record), lift)
    # With the parameters saved anyway, the loop saves the solver's state only, and the
    # loss, the records and the lift to the full space are computed after the solve.
    # Inside the loop XLA turns a save loop of one time (`saveat=[t1]`) into selects,
    # which evaluate the save function at every step (13% of a step on 300 MNIST
    # digits, and replayed and transposed again by reverse mode).
    # (Diffrax's default `SubSaveAt.fn` saves the state.)
    in_loop = diffrax.SubSaveAt(ts=ts) if save_params else diffrax.SubSaveAt(ts=ts, fn=fn)
    norm = optx.rms_norm
    if lift is not None:
        # Diffrax's RMS norm, over the full parameter count: the part outside the row
        # space has no error, so this is the full-space RMS of the same error.
        shrink = float(
            np.sqrt((model.W.size + model.V.size) / (lift.W_perp.size + model.V.size))
        )
        norm = lambda e: optx.rms_norm(e) * shrink  # noqa: E731
    # The sliding solver brings its own controller (steps that end before crossings).
    make_controller = getattr(solver, "controller", None)
    if not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        # No error estimate (`"euler"`): fixed steps of `dt0`, checked by the caller.
        controller = diffrax.ConstantStepSize()
    elif make_controller is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm)
    else:
        controller = make_controller(rtol, atol, norm, step_ts=ts)
    solver_stats = getattr(solver, "stats", None)
    controller_stats = getattr(controller, "stats", None)
    saveat = diffrax.SaveAt(
        subs=[in_loop, diffrax.SubSaveAt(t1=True)],
        solver_state=solver_stats is not None,
        controller_state=controller_stats is not None,
    )
    meter = LogTimeProgressMeter(t1=t1) if progress else diffrax.NoProgressMeter()
    field = GradientField(loss)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=jnp.zeros((), t1.dtype),
        t1=t1,
        dt0=dt0,
        y0=model,
        args=solve_args(data),
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        progress_meter=meter,
        adjoint=adjoint,
    )
    saved, final = sol.ys
    final = jax.tree.map(lambda x: x[-1], final)
    if save_params:
        saved = _after_solve(fn, saved, sol.ts[0], data)
    if lift is not None:
        final, data = lift.lift(final), lift.data
    per_step, at_start = evals_per_step(solver)
    if dt0 is None and not isinstance(solver, UnrolledERK):
        # Diffrax's automatic initial step evaluates the field at y0 and at one trial
        # point; the evaluation at y0 is the first stage's, which XLA computes once.
        # (With `UnrolledERK` both coincide with evaluations of its first step: counted
        # by a host callback in the tests.)
        at_start += 1
    num_steps = sol.stats["num_steps"]
    stats = {
        "num_steps": num_steps,
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "grad_evals": at_start + per_step * num_steps,
        "kinks_at_start": on_kink,
    }
    if solver_stats is not None:  # e.g. the sliding solver's mode switches
        stats.update(solver_stats(sol.solver_state))
    if controller_stats is not None:
        stats.update(controller_stats(sol.controller_state))
    if "event_restarts" in stats:  # first stages evaluated again (`EventController`)
        stats["grad_evals"] = stats["grad_evals"] + stats["event_restarts"]
    # A NaN/inf state is never accepted by the controller (Diffrax turns a NaN error
    # estimate into a rejection), so a blow-up shows as a failed run whose last state
    # has a non-finite gradient or loss: check both there.
    ok = (
        all_finite(final)
        & all_finite(field(None, final, data))
        & jnp.isfinite(loss_value(final, data, loss))
    )
    # Diffrax checks the save times with `eqx.error_if`, a host callback that raises,
    # or, under `EQX_ON_ERROR=nan` (which lets JAX cache the compiled program on
    # disk), passes and leaves `inf` at every save time. Save times traced under an
    # outer `jax.jit` (concrete ones are checked before the solve) that fail its
    # check fail the run here instead of reporting success.
    ts_ok = jnp.all(ts[1:] >= ts[:-1]) & jnp.all((ts >= 0) & (ts <= t1))
    models = None
    if save_params:
        W, V = saved["params"]
        models = TwoLayerReLU(W, V, model.leak)
    return Trajectory(
        ts=ts,
        models=models,
        loss=saved["loss"],
        records=saved["records"],
        final=final,
        stats=stats,
        status=_status(sol.result, ok, ts_ok),
    )


def _after_solve(fn, states, ts, data):
    """`fn` at each saved state, one save time after another (`lax.map`: the memory of
    one evaluation, whatever the number of save times). Save times the solve did not
    reach keep Diffrax's `inf`."""
    out = jax.lax.map(lambda y: fn(None, y, data), states)
    reached = jnp.isfinite(ts)

    def unreached_inf(x):
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return x
        return jnp.where(reached.reshape(reached.shape + (1,) * (x.ndim - 1)), x, jnp.inf)

    return jax.tree.map(unreached_inf, out)


# The tracers of `jax.jvp` and of `jax.linearize` (which `jax.grad` and `jax.vjp`
# use). JAX exports the first only; the second is looked up where it is defined and
# left out if a version lacks it (then reverse mode directly around the call is seen
# by `ForwardOrReverse` alone).
_DIFFERENTIATING = tuple(
    t
    for t in (
        jax.interpreters.ad.JVPTracer,
        getattr(jax._src.interpreters.ad, "LinearizeTracer", None),
    )
    if isinstance(t, type)
)


def _traced_by(inputs, tracers) -> bool:
    """Whether a leaf of `inputs` is a tracer of one of the types `tracers`."""
    return any(isinstance(leaf, tracers) for leaf in jax.tree.leaves(inputs))


def differentiated(*inputs) -> bool:
    """Whether a leaf of `inputs` is being differentiated by a transform directly
    around the call (`jax.jvp`, `jax.jacfwd`, `jax.grad`, `jax.vjp`; not one hidden
    behind an outer `jax.jit`)."""
    return _traced_by(inputs, _DIFFERENTIATING)


def default_adjoint(*inputs) -> diffrax.AbstractAdjoint:
    """The adjoint `gradient_flow` uses by default: `diffrax.ForwardMode()` when a
    leaf of `inputs` is being differentiated in forward mode directly around the call
    (a JVP tracer: `jax.jvp`, `jax.jacfwd`), else `ForwardOrReverse()`, under which
    reverse mode (`jax.grad`, `jax.vjp`) costs what Diffrax's
    `RecursiveCheckpointAdjoint` costs and forward mode works too, for transforms
    that an outer `jax.jit` or `jax.vmap` hides from the call."""
    if _traced_by(inputs, jax.interpreters.ad.JVPTracer):
        return diffrax.ForwardMode()
    return ForwardOrReverse()
