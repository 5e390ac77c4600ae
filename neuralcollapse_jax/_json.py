"""Plain JSON values of the numbers a run reports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def to_json(value: Any) -> Any:
    """Arrays, NumPy/JAX scalars, tuples and paths as plain JSON values.

    Non-finite floats become the strings `"nan"`, `"inf"` and `"-inf"` (JSON has no
    such numbers; Python's `json` would write invalid `NaN` tokens).
    """
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool | str) or value is None:
        return value
    if hasattr(value, "shape") or isinstance(value, np.generic):
        arr = np.asarray(value)
        if arr.dtype == bool:
            return arr.tolist()
        if np.issubdtype(arr.dtype, np.integer):
            return arr.tolist()
        return to_json(arr.astype(np.float64).tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, int):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
