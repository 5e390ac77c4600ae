"""The result of a flow or a descent: saved times, models, losses, statistics, status."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from ._model import TwoLayerReLU


class Status:
    """Integer status codes of a `Trajectory` (arrays, so that they survive `vmap`)."""

    SUCCESS = 0
    """The horizon `t1` (or the last step) was reached."""
    MAX_STEPS = 1
    """The solver ran out of steps (`max_steps`) before the horizon."""
    NONFINITE = 2
    """The state or the loss became NaN or infinite."""
    FAILED = 3
    """Another solver failure (step size underflow, internal error), or save times
    traced under an outer `jax.jit` that are out of order or outside `[0, t1]`
    (which Diffrax reports as an error unless `EQX_ON_ERROR=nan`)."""

    MESSAGES = {
        SUCCESS: "success: horizon reached",
        MAX_STEPS: "max_steps reached before the horizon: raise max_steps or loosen rtol",
        NONFINITE: "non-finite values (NaN/inf) in the state or the loss",
        FAILED: (
            "solver failure (step size underflow or internal error), or traced save "
            "times out of order or outside [0, t1]"
        ),
    }

    @classmethod
    def message(cls, code: int) -> str:
        return cls.MESSAGES.get(int(code), f"unknown status {int(code)}")


class Trajectory(eqx.Module):
    """Saved states of a gradient flow or of gradient descent.

    Fields (a leading batch axis is added by `jax.vmap`):

    - `ts`: save times, shape `(T,)`. For gradient descent, `learning_rate * step`.
    - `models`: a `TwoLayerReLU` whose `W` and `V` carry a leading time axis
      (`W[s]` is `W(ts[s])`), or `None` when parameters were not saved.
    - `loss`: the training loss at the save times, shape `(T,)`.
    - `records`: the recorded diagnostics, a dict of arrays with leading axis `T`.
    - `final`: the model at the end of the run (at `t1`, or where the run stopped).
    - `stats`: dict of scalar arrays (counts, and the sliding solver's
      `min_transversality`, `min_event_gap`, `min_touch`): at least `num_steps`
      (attempted steps), `num_accepted_steps`, `num_rejected_steps`, `grad_evals`
      (gradient evaluations) and, from `gradient_flow`, `kinks_at_start` (pairs with
      `z_ij = 0` at `t = 0`).
    - `status`: integer `Status` code; `Status.SUCCESS` (0) when the horizon was reached.
      After a failure the save times past the failure hold `inf`.

    **Indexing.** `len(traj)` is the number of save times `T`. `traj[i]` is the model at
    save index `i` (negative indices count from the end: `traj[-1]` is the last saved
    model), the same as `traj.models[i]`. A slice, an integer array or a boolean mask
    (e.g. `traj[traj.ts >= 1.0]`) gives a `Trajectory` of those save times, whose
    `final`, `stats` and `status` are still those of the whole run. Indices are
    concrete (not traced). With leading batch axes (`jax.vmap`), the index selects save
    times in every run of the batch.
    """

    ts: Float[Array, " T"]
    models: TwoLayerReLU | None
    loss: Float[Array, " T"]
    records: dict[str, Any]
    final: TwoLayerReLU
    stats: dict[str, Shaped[Array, ""]]
    status: Int[Array, ""]

    @property
    def ok(self) -> Array:
        """Boolean array: `True` where the run reached its horizon."""
        return self.status == Status.SUCCESS

    def message(self) -> str:
        """Human-readable status (for a single, un-batched trajectory)."""
        codes = np.unique(np.asarray(self.status))
        return "; ".join(Status.message(c) for c in codes)

    def stats_summary(self) -> dict[str, int | float | None]:
        """`stats` as Python numbers, for JSON and tables: counts as ints, other values
        as floats, non-finite ones (`min_transversality` is `inf` when no event was
        located) as `None`."""
        out = {}
        for key, value in self.stats.items():
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.integer):
                out[key] = int(value)
            else:
                value = float(value)
                out[key] = value if np.isfinite(value) else None
        return out

    def __len__(self) -> int:
        return self.ts.shape[-1]

    def __getitem__(self, index) -> TwoLayerReLU | Trajectory:
        # Normalize any NumPy index (int, negative int, slice, int array, mask) to
        # concrete save indices; NumPy raises IndexError when one is out of range.
        idx = np.arange(len(self))[_concrete_index(index)]
        if idx.ndim == 0:
            if self.models is None:
                raise ValueError("parameters were not saved: run with save_params=True")
            i = int(idx)
            return TwoLayerReLU(
                self.models.W[..., i, :, :], self.models.V[..., i, :, :], self.models.leak
            )
        if idx.ndim != 1:
            raise ValueError(f"a save-time index must be one-dimensional, got {index!r}")
        axis = self.ts.ndim - 1  # the time axis of `ts`, `loss` and every record
        records = jax.tree.map(lambda a: jnp.take(a, idx, axis=axis), self.records)
        return Trajectory(
            ts=jnp.take(self.ts, idx, axis=axis),
            models=None
            if self.models is None
            else TwoLayerReLU(
                jnp.take(self.models.W, idx, axis=-3),
                jnp.take(self.models.V, idx, axis=-3),
                self.models.leak,
            ),
            loss=jnp.take(self.loss, idx, axis=axis),
            records=records,
            final=self.final,
            stats=self.stats,
            status=self.status,
        )

    def model_at(self, index: int) -> TwoLayerReLU:
        """The model at save index `index`: `traj[index]` for one index (an index out
        of range raises `IndexError`)."""
        if np.ndim(_concrete_index(index)) != 0:
            raise ValueError(
                f"model_at takes one save index, got {index!r}; index the trajectory "
                "for several"
            )
        return self[index]

    def weight_norm(self) -> Float[Array, " T"]:
        """`||theta(t)||_F = sqrt(||W||_F^2 + ||V||_F^2)` at the save times."""
        if self.models is None:
            raise ValueError("parameters were not saved: run with save_params=True")
        return jnp.sqrt(
            jnp.sum(self.models.W**2, axis=(-2, -1))
            + jnp.sum(self.models.V**2, axis=(-2, -1))
        )


def _concrete_index(index):
    if isinstance(index, jax.core.Tracer):
        raise ValueError("a Trajectory takes concrete save indices, not traced ones")
    if isinstance(index, jax.Array):
        return np.asarray(index)
    return index
