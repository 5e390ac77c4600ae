"""The exact gradient flow `d theta/dt = -grad L(theta)`, integrated with Diffrax."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._dataset import Dataset
from ._loss import check_loss
from ._loss import loss as loss_value
from ._model import TwoLayerReLU
from ._progress import LogTimeProgressMeter
from ._rk import UnrolledERK
from ._trajectory import Status, Trajectory


Recorder = Callable[[TwoLayerReLU, Dataset], Any]

DEFAULT_RTOL = 1e-9
DEFAULT_MAX_STEPS = 100_000


def log_times(
    t1: float, num: int = 100, t_min: float | None = None, include_zero: bool = True
) -> np.ndarray:
    """Save times `0, t_min, ..., t1`, log-spaced (`num` points after 0).

    `t_min` defaults to `t1 * 1e-4`. Suited to the flow's phases, which span many
    decades of time.
    """
    if not (np.isfinite(t1) and t1 > 0):
        raise ValueError(f"t1 must be positive and finite, got {t1}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    t_min = t1 * 1e-4 if t_min is None else t_min
    if not 0 < t_min <= t1:
        raise ValueError(f"t_min must be in (0, t1], got {t_min}")
    ts = np.geomspace(t_min, t1, num) if num > 1 else np.array([t1])
    ts[-1] = t1
    return np.concatenate([[0.0], ts]) if include_zero else ts


def gradient(
    model: TwoLayerReLU, data: Dataset, loss: str = "cross_entropy", reduction: str = "sum"
) -> TwoLayerReLU:
    """`grad L(theta)` as a `TwoLayerReLU`-shaped PyTree (`relu'(0) = 0`)."""
    return jax.grad(loss_value)(model, data, loss, reduction)


def vector_field(loss: str, reduction: str) -> Callable:
    """The Diffrax vector field `(t, theta, data) -> -grad L(theta)` of the flow.

    With `relu'(0) = 0` this is the papers' regular vector field (ICLR 2024, App. E;
    NeurIPS 2025 App. C.1 with `xi_ij = 0` on the boundary).
    """

    def vf(t, y: TwoLayerReLU, data: Dataset) -> TwoLayerReLU:
        del t
        g = gradient(y, data, loss, reduction)
        return jax.tree.map(jnp.negative, g)

    return vf


def default_atol(model: TwoLayerReLU, rtol: ArrayLike) -> Array:
    """Scale-free absolute tolerance `rtol * rms(theta(0))`.

    The state starts at size `eps` (down to 1e-12) and grows by orders of magnitude, so
    a fixed absolute tolerance is either meaningless at the start or wasteful later.
    Tying it to the initial RMS entry keeps the error control relative at every scale.
    """
    leaves = [model.W, model.V]
    sq = sum(jnp.sum(x**2) for x in leaves)
    count = sum(x.size for x in leaves)
    rms = jnp.sqrt(sq / count)
    return jnp.asarray(rtol) * rms


def evals_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """`(evaluations per step, evaluations at start)` of a Runge-Kutta solver.

    Diffrax does not count vector-field evaluations; for explicit Runge-Kutta methods
    they follow from the tableau: `s` stages per step, one fewer with FSAL, plus one at
    the start for FSAL. (A solver may define `evals_per_step` itself.)
    """
    if hasattr(solver, "evals_per_step"):
        return solver.evals_per_step()
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        raise ValueError(f"cannot count gradient evaluations of {type(solver).__name__}")
    stages = len(tableau.c) + 1
    if tableau.fsal:
        return stages - 1, 1
    return stages, 0


def _unrolled(inner: type[diffrax.AbstractERK]) -> Callable[[], diffrax.AbstractSolver]:
    return lambda: UnrolledERK(inner())


# By name, Diffrax's explicit Runge-Kutta tableaus with the stages unrolled
# (`UnrolledERK`: the same method, a leaner step; see `_rk.py`).
REGULAR_SOLVERS = {
    "regular": _unrolled(diffrax.Tsit5),
    "tsit5": _unrolled(diffrax.Tsit5),
    "dopri5": _unrolled(diffrax.Dopri5),
    "dopri8": _unrolled(diffrax.Dopri8),
    "bosh3": _unrolled(diffrax.Bosh3),
}
SLIDING_TABLEAUS = {"sliding_bosh3": diffrax.Bosh3, "sliding_tsit5": diffrax.Tsit5}
SOLVER_NAMES: tuple[str, ...] = ("auto", "sliding", *SLIDING_TABLEAUS, *REGULAR_SOLVERS)


def _classes_orthogonal(data: Dataset, block: int = 1024) -> bool:
    """Whether `<x_i, x_k> >= 0` within every class and `<= 0` across classes.

    The test behind `solver="auto"`: orthogonal separability (`mu_s > 0`, `mu_d > 0`,
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
    """The solver name that `solver="auto"` (the default) picks for `data`.

    `"regular"` when the classes are orthogonally separable (`<x_i, x_k> >= 0` within a
    class, `<= 0` across classes: the setting of the papers' theorems with its
    boundary cases, such as block-orthogonal classes), where no pair was seen to slide
    and the regular solver is cheaper per step; `"sliding"` otherwise (MNIST,
    overlapping classes), where pairs slide and the regular field chatters across
    them. The docs page *Sliding* has the measurements behind the rule. Traced data
    (under `jit`/`vmap`) cannot be inspected and get `"regular"`, which is correct on
    any data (where pairs slide it chatters, at a higher cost); pass `solver=`
    explicitly there.
    """
    if isinstance(data.x, jax.core.Tracer) or isinstance(data.y, jax.core.Tracer):
        return "regular"
    return "regular" if _classes_orthogonal(data) else "sliding"


# `solver="sliding"` uses the Bosh3 tableau from this rtol up and Tsit5 below it. With
# the transversal kink crossings of ReLU data, a third-order step is as accurate per
# gradient evaluation as a fifth-order one at loose tolerances (MNIST, docs page
# *Sliding*: 30-45% fewer evaluations at rtol 1e-5 for the same error), while at tight
# tolerances the higher order wins by far.
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
    `auto_solver(data)` (`"regular"` without data), and `"sliding"` becomes
    `"sliding_bosh3"` or `"sliding_tsit5"` (`sliding_tableau(rtol)`). Anything else is
    returned as given. What `gradient_flow`, the sweep plan and the CLI all use."""
    if solver is None or (isinstance(solver, str) and solver == "auto"):
        solver = "regular" if data is None else auto_solver(data)
    if isinstance(solver, str) and solver == "sliding":
        solver = "sliding_" + sliding_tableau(rtol)
    return solver


def resolve_solver(
    solver: diffrax.AbstractSolver | str | None,
    loss: str,
    reduction: str,
    data: Dataset | None = None,
    rtol: float | ArrayLike | None = None,
) -> diffrax.AbstractSolver:
    """The Diffrax solver that `gradient_flow` uses for `solver=`.

    `None` or `"auto"` (default): `auto_solver(data)` picks `"regular"` or `"sliding"`
    (`"regular"` without data). `"sliding"`: `SlidingReLU` (Filippov sliding on the
    ReLU kinks) with the Bosh3 tableau when `rtol >= 1e-6` and Tsit5 otherwise
    (`sliding_tableau`); `"sliding_bosh3"`, `"sliding_tsit5"` fix the tableau.
    `"regular"` (= `"tsit5"`), `"dopri5"`, `"dopri8"`,
    `"bosh3"`: that Diffrax tableau on the regular field (`relu'(0) = 0`), run by
    `UnrolledERK` (the same method as the Diffrax solver, with a step that is cheaper
    on accelerators). A solver instance is used as given; a `SlidingReLU` gets the
    flow's `loss` and `reduction`.
    """
    from ._sliding import SlidingReLU

    solver = solver_name(solver, data, rtol)
    if isinstance(solver, str):
        if solver in SLIDING_TABLEAUS:
            inner = SLIDING_TABLEAUS[solver]()
            return SlidingReLU(inner=inner, loss=loss, reduction=reduction)
        if solver not in REGULAR_SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVER_NAMES}")
        return REGULAR_SOLVERS[solver]()
    if isinstance(solver, SlidingReLU):
        return dataclasses.replace(solver, loss=loss, reduction=reduction)
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"solver must be a name in {SOLVER_NAMES} or a Diffrax solver, got {solver!r}"
        )
    return solver


def _status(result, final_ok: Array) -> Array:
    """Map a Diffrax result and the finiteness of the final state to a `Status` code."""
    code = jnp.where(
        result == diffrax.RESULTS.successful,
        Status.SUCCESS,
        jnp.where(
            result == diffrax.RESULTS.max_steps_reached, Status.MAX_STEPS, Status.FAILED
        ),
    )
    return jnp.where(final_ok, code, Status.NONFINITE).astype(jnp.int32)


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _validate(model, data, t1, ts, loss, reduction, rtol, atol, max_steps) -> None:
    if not isinstance(model, TwoLayerReLU):
        raise ValueError(f"model must be a TwoLayerReLU, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    if model.W.ndim != 2 or data.x.ndim != 2:
        raise ValueError(
            "gradient_flow takes a single model and data set; use jax.vmap for batches"
        )
    if model.in_dim != data.dim:
        raise ValueError(
            f"model input dimension {model.in_dim} does not match data dimension {data.dim}"
        )
    check_loss(loss, reduction, model.out_dim, data.num_classes)
    if max_steps is not None and (int(max_steps) != max_steps or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    concrete = lambda x: not isinstance(x, jax.core.Tracer)  # noqa: E731
    if concrete(t1):
        t1v = float(np.asarray(t1))
        if not (np.isfinite(t1v) and t1v > 0):
            raise ValueError(f"t1 must be positive and finite, got {t1v}")
    if concrete(ts):
        tsv = np.asarray(ts)
        if tsv.ndim != 1 or tsv.size == 0:
            raise ValueError(
                f"saveat must be a non-empty 1-D array of times, got {tsv.shape}"
            )
        if not np.all(np.isfinite(tsv)) or np.any(np.diff(tsv) < 0) or tsv[0] < 0:
            raise ValueError("saveat times must be finite, non-negative and increasing")
        if concrete(t1) and tsv[-1] > float(np.asarray(t1)) * (1 + 1e-12):
            raise ValueError(f"saveat times must lie in [0, t1]; last is {tsv[-1]} > t1")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and concrete(tol):
            v = np.asarray(tol)
            if v.ndim != 0 or not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {tol}")
    if (
        concrete(model.W)
        and concrete(model.V)
        and not (
            np.all(np.isfinite(np.asarray(model.W)))
            and np.all(np.isfinite(np.asarray(model.V)))
        )
    ):
        raise ValueError("the initial model has non-finite weights")


class RowSpace(eqx.Module):
    """The data's row space `Q` (`D x r`, orthonormal columns), the part `W_perp` of the
    initial `W` outside it, and the full data set.

    `X W = (X Q)(Q^T W)` because `X W_perp = 0`, and `grad_W L = X^T G` lies in the row
    space, so `W_perp` never moves: the flow of `(Q^T W, V)` on the data `X Q` is the
    flow of `(W, V)` on `X`, exactly (to the rank threshold of `X`'s singular values).
    """

    Q: Float[Array, "D r"]
    W_perp: Float[Array, "D h"]
    data: Dataset

    def lift(self, y: TwoLayerReLU) -> TwoLayerReLU:
        """The full model `W = Q W_r + W_perp` of a reduced one."""
        return TwoLayerReLU(self.Q @ y.W + self.W_perp, y.V, y.leak)


def row_space_basis(data: Dataset) -> Array:
    """An orthonormal basis (`D x r`) of the row space of `data.x`, from its SVD.

    The rank `r` counts singular values above `max(n, D) * eps * s_max` (NumPy's
    `matrix_rank` threshold, with the data's floating-point `eps`). The data must be
    concrete (not traced under `jit`/`vmap`): `r` decides array shapes.
    """
    if isinstance(data.x, jax.core.Tracer):
        raise ValueError(
            "row_space=True needs concrete data: the rank decides array shapes, so it "
            "cannot be used with data traced under jit/vmap"
        )
    _, s, vt = np.linalg.svd(np.asarray(data.x, dtype=np.float64), full_matrices=False)
    eps = jnp.finfo(data.x.dtype).eps
    r = int(np.sum(s > max(data.x.shape) * eps * (s[0] if s.size else 0.0)))
    return jnp.asarray(vt[:r].T, dtype=data.x.dtype)


def reduce_to_row_space(
    model: TwoLayerReLU, data: Dataset
) -> tuple[TwoLayerReLU, Dataset, RowSpace | None]:
    """The model and data in the row space of `data.x`, and the `RowSpace` that lifts
    the reduced model back (`None`, with the inputs unchanged, for full-rank data)."""
    Q = row_space_basis(data)
    if Q.shape[1] == data.dim:
        return model, data, None
    W_r = Q.T @ model.W
    lift = RowSpace(Q=Q, W_perp=model.W - Q @ W_r, data=data)
    reduced = Dataset(data.x @ Q, data.y, data.num_classes)
    return TwoLayerReLU(W_r, model.V, model.leak), reduced, lift


def save_function(
    loss: str,
    reduction: str,
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
            "loss": loss_value(y, data, loss, reduction),
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
    loss: str = "cross_entropy",
    reduction: str = "sum",
    rtol: float | ArrayLike = DEFAULT_RTOL,
    atol: float | ArrayLike | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    solver: diffrax.AbstractSolver | str | None = None,
    record: Mapping[str, Recorder] | None = None,
    save_params: bool = True,
    progress: bool = False,
    dt0: float | None = None,
    row_space: bool = False,
) -> Trajectory:
    r"""Integrate the exact gradient flow `d theta/dt = -grad L(theta)` from `model`.

    The ReLU is not smoothed: the vector field is the papers' regular one
    (`relu'(0) = 0`). Integration uses Diffrax with an adaptive step (`PIDController`)
    and never raises on solver failure: the outcome is in `Trajectory.status`.

    Works under `jax.jit` and `jax.vmap` (batch over models, init scales, seeds, data of
    equal shape, `t1`, tolerances and save times: all are traced, nothing recompiles
    per value).

    **Arguments:**

    - `model`: the initial network `theta(0)`.
    - `data`: the training `Dataset`.
    - `t1`: the horizon (time starts at 0).
    - `saveat`: increasing save times in `[0, t1]` (default `log_times(t1)`).
    - `loss`, `reduction`: see `neuralcollapse_jax.loss`. Default: sum cross-entropy.
    - `rtol`: relative tolerance of the step-size controller (default `1e-9`).
    - `atol`: absolute tolerance; default `rtol * rms(theta(0))` (see `default_atol`),
      which keeps the error control meaningful for any init scale.
    - `max_steps`: step budget; running out gives `Status.MAX_STEPS`, not an exception.
    - `solver`: `"auto"` (default, also `None`): `"regular"` on orthogonally separable
      data and `"sliding"` on other data (`auto_solver`; `"regular"` when the data are
      traced). `"regular"`: the `Tsit5` tableau on the regular field `relu'(0) = 0`,
      run by `UnrolledERK`. `"sliding"`: `SlidingReLU`, which holds the pairs that
      slide on their kink `<x_i, w_j> = 0` there instead of chattering across it (on
      data such as MNIST; see the docs page *Sliding*), with the `Bosh3` tableau when
      `rtol >= 1e-6` and `Tsit5` below (`sliding_tableau`); its steps end just before
      the ReLU kink crossings that matter (`SlidingReLU.controller`, a
      `CrossingController`, replaces the `PIDController`). Or another name in
      `SOLVER_NAMES`, or a Diffrax solver instance.
    - `record`: diagnostics to record at the save times, `{name: fn(model, data)}`.
    - `save_params`: keep the parameters at every save time (default). Turn off for
      long runs on large data and rely on `record` and `Trajectory.final`.
    - `progress`: show a progress bar (log-scaled in time).
    - `dt0`: initial step (default: chosen automatically).
    - `row_space`: integrate in the row space of `data.x` (`RowSpace`): exact, and
      cheaper when `rank(X) < D`, as for MNIST (784 pixels; 554 is the rank of the
      3147 centered test digits {0, 1, 2}, and `n - 1` for fewer centered samples). The
      trajectory is returned for the full model. The error control then works in the
      reduced coordinates, so step sizes differ slightly from a full-space run. Needs
      concrete data (not under `jit`/`vmap`); with full-rank data nothing changes.

    **Returns:**

    A `Trajectory`.
    """
    if saveat is None:
        if isinstance(t1, jax.core.Tracer):
            raise ValueError("pass saveat explicitly when t1 is traced")
        saveat = log_times(float(np.asarray(t1)))
    _validate(model, data, t1, saveat, loss, reduction, rtol, atol, max_steps)
    solver = resolve_solver(solver, loss, reduction, data, rtol)
    dtype = model.W.dtype
    t1 = jnp.asarray(t1, dtype=dtype)
    ts = jnp.asarray(saveat, dtype=dtype)
    rtol = jnp.asarray(rtol, dtype=dtype)
    atol = default_atol(model, rtol) if atol is None else jnp.asarray(atol, dtype=dtype)
    lift = None
    if row_space:
        model, data, lift = reduce_to_row_space(model, data)
    return _solve(
        model,
        data,
        t1,
        ts,
        rtol,
        atol,
        lift,
        solver=solver,
        loss=loss,
        reduction=reduction,
        max_steps=int(max_steps),
        record=tuple(sorted((record or {}).items())),
        save_params=save_params,
        progress=progress,
        dt0=dt0,
    )


@eqx.filter_jit
def _solve(
    model,
    data,
    t1,
    ts,
    rtol,
    atol,
    lift,
    *,
    solver,
    loss,
    reduction,
    max_steps,
    record,
    save_params,
    progress,
    dt0,
) -> Trajectory:
    fn = save_function(loss, reduction, save_params, dict(record), lift)
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
    if make_controller is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm)
    else:
        controller = make_controller(rtol, atol, norm)
    solver_stats = getattr(solver, "stats", None)
    controller_stats = getattr(controller, "stats", None)
    saveat = diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(ts=ts, fn=fn), diffrax.SubSaveAt(t1=True)],
        solver_state=solver_stats is not None,
        controller_state=controller_stats is not None,
    )
    meter = LogTimeProgressMeter(t1=t1) if progress else diffrax.NoProgressMeter()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field(loss, reduction)),
        solver,
        t0=jnp.zeros((), t1.dtype),
        t1=t1,
        dt0=dt0,
        y0=model,
        args=data,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        progress_meter=meter,
    )
    saved, final = sol.ys
    final = jax.tree.map(lambda x: x[-1], final)
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
    }
    if solver_stats is not None:  # e.g. the sliding solver's mode switches
        stats.update(solver_stats(sol.solver_state))
    if controller_stats is not None:
        stats.update(controller_stats(sol.controller_state))
    # A NaN/inf state is never accepted by the controller (Diffrax turns a NaN error
    # estimate into a rejection), so a blow-up shows as a failed run whose last state
    # has a non-finite gradient or loss: check both there.
    ok = (
        _all_finite(final)
        & _all_finite(vector_field(loss, reduction)(None, final, data))
        & jnp.isfinite(loss_value(final, data, loss, reduction))
    )
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
        status=_status(sol.result, ok),
    )
