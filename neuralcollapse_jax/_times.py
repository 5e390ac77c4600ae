"""Save grids: log-spaced times for the flow, log-spaced steps for descent."""

from __future__ import annotations

import numpy as np


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


def log_steps(steps: int, num: int = 100) -> np.ndarray:
    """Distinct integer save steps `0, ..., steps`, roughly log-spaced."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    s = np.unique(np.round(np.geomspace(1, steps, num)).astype(np.int64))
    return np.concatenate([[0], s])
