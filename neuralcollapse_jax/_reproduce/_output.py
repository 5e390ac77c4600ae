"""Writing a reproduction: its output folder, figures, JSON of numbers and progress."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._json import to_json as to_json


class Output:
    """The output folder of one reproduction.

    Creates the folder, saves figures (PNG, Agg backend), writes `results.json`, and
    prints progress lines (`[name] message (elapsed)`) to stderr unless `quiet`.
    """

    def __init__(self, folder: str | os.PathLike, name: str, quiet: bool = False):
        self.folder = Path(folder)
        self.name = name
        self.quiet = quiet
        self.files: list[str] = []
        self._start = time.perf_counter()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(
                f"cannot create output folder {self.folder}: {e.strerror}"
            ) from e
        if not os.access(self.folder, os.W_OK):
            raise ValueError(f"output folder {self.folder} is not writable")

    @property
    def progress_bar(self) -> bool:
        """Show a solver progress bar: not quiet, and stderr is a terminal."""
        return not self.quiet and sys.stderr.isatty()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def log(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"[{self.name}] {message} ({self.elapsed():.1f} s)\n")
            sys.stderr.flush()

    def figure(self, fig, stem: str, dpi: int = 100) -> Path:
        """Save `fig` as `stem.png` and close it."""
        import matplotlib.pyplot as plt

        path = self.folder / f"{stem}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        self.files.append(path.name)
        return path

    def write_json(self, results: dict[str, Any], stem: str = "results") -> Path:
        path = self.folder / f"{stem}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(to_json(results), indent=2) + "\n")
        os.replace(tmp, path)
        self.files.append(path.name)
        return path


def pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def first_time(ts, condition) -> float:
    """The first save time at which `condition` holds from then on (`inf` if never)."""
    ts = np.asarray(ts)
    cond = np.asarray(condition, dtype=bool)
    # Holds from index s on: reverse cumulative AND.
    persistent = np.flip(np.logical_and.accumulate(np.flip(cond)))
    idx = np.flatnonzero(persistent)
    return float(ts[idx[0]]) if idx.size else math.inf
