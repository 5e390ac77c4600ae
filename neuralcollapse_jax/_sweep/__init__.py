"""Sweeps: grids of exact gradient flows, batched, chunked, resumable, distributable."""

from ._api import Execution as Execution
from ._api import sweep as sweep
from ._config import SweepConfig as SweepConfig
from ._plot import plot_sweep as plot_sweep
from ._store import load_sweep as load_sweep
