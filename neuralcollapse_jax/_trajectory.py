"""The result of a flow or a descent: saved times, models, losses, statistics, status."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

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
    """Another solver failure (step size underflow, internal error)."""

    MESSAGES = {
        SUCCESS: "success: horizon reached",
        MAX_STEPS: "max_steps reached before the horizon: raise max_steps or loosen rtol",
        NONFINITE: "non-finite values (NaN/inf) in the state or the loss",
        FAILED: "solver failure (step size underflow or internal error)",
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
    - `stats`: dict of integer arrays: at least `num_steps` (attempted steps),
      `num_accepted_steps`, `num_rejected_steps` and `grad_evals` (gradient evaluations).
    - `status`: integer `Status` code; `Status.SUCCESS` (0) when the horizon was reached.
      After a failure the save times past the failure hold `inf`.
    """

    ts: Float[Array, " T"]
    models: TwoLayerReLU | None
    loss: Float[Array, " T"]
    records: dict[str, Any]
    final: TwoLayerReLU
    stats: dict[str, Int[Array, ""]]
    status: Int[Array, ""]

    @property
    def ok(self) -> Array:
        """Boolean array: `True` where the run reached its horizon."""
        return self.status == Status.SUCCESS

    def message(self) -> str:
        """Human-readable status (for a single, un-batched trajectory)."""
        codes = np.unique(np.asarray(self.status))
        return "; ".join(Status.message(c) for c in codes)

    def model_at(self, index: int) -> TwoLayerReLU:
        """The model at save index `index` (for an un-batched trajectory)."""
        if self.models is None:
            raise ValueError("parameters were not saved: run with save_params=True")
        return TwoLayerReLU(self.models.W[index], self.models.V[index], self.models.leak)

    def weight_norm(self) -> Float[Array, " T"]:
        """`||theta(t)||_F = sqrt(||W||_F^2 + ||V||_F^2)` at the save times."""
        if self.models is None:
            raise ValueError("parameters were not saved: run with save_params=True")
        return jnp.sqrt(
            jnp.sum(self.models.W**2, axis=(-2, -1))
            + jnp.sum(self.models.V**2, axis=(-2, -1))
        )
