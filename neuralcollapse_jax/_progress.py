"""Progress meters whose progress is measured in log-time."""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
from jaxtyping import Array


class LogTimeProgressMeter(diffrax.TqdmProgressMeter):
    """A tqdm bar whose progress is `log(1 + t/tau) / log(1 + t1/tau)`.

    Diffrax reports progress linearly in `t`; the flow's phases span decades of time
    (alignment at `t ~ log(1/eps)`, then `1/t` loss decay), so a linear bar would sit at
    0% for most of the wall time. `tau` defaults to `t1 * 1e-4`.
    """

    t1: Array = None  # type: ignore[assignment]
    tau: Array | None = None

    def step(self, state, progress):
        t = progress * self.t1
        tau = self.t1 * 1e-4 if self.tau is None else self.tau
        p = jnp.log1p(t / tau) / jnp.log1p(self.t1 / tau)
        return super().step(state, p)
