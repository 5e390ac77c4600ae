"""Chunk files written atomically, resume, and the assembled xarray Dataset."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .._config import plain
from .._trajectory import Status
from ._config import SweepConfig


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then `os.replace`: a reader
    (or a restarted sweep) sees the old file or the complete new one, never a part.

    The temporary file is created as `open` creates files (mode 0666 less the umask),
    so the result has the usual permissions (`tempfile.mkstemp` would give 0600)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class PartStore:
    """The folder `<output>.parts` of finished chunks of a sweep."""

    def __init__(self, output: Path, config: SweepConfig, overwrite: bool = False):
        self.dir = parts_dir(output)
        self.hash = config.hash()
        manifest = self.dir / "manifest.json"
        if self.dir.exists():
            old = None
            if manifest.exists():
                try:
                    old = json.loads(manifest.read_text()).get("config_hash")
                except (OSError, ValueError):
                    old = None
            if old != self.hash:
                if not overwrite:
                    raise ValueError(
                        f"output: {self.dir} holds partial results of a different sweep "
                        f"configuration; delete it or pass overwrite=True (--overwrite)"
                    )
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # A writer killed between creating its temporary file and renaming it leaves the
        # temporary behind; it never holds a finished chunk, so it is removed here.
        for stale in [
            *self.dir.glob(".*.tmp"),
            *output.parent.glob(f".{output.name}*.tmp"),
        ]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        if not manifest.exists():
            _atomic_write(
                manifest,
                lambda p: Path(p).write_text(
                    json.dumps(
                        {"config_hash": self.hash, "config": config.to_dict()}, default=repr
                    )
                ),
            )

    def done(self) -> dict[int, Path]:
        """Run index -> the part file holding it (unreadable files are ignored)."""
        out: dict[int, Path] = {}
        for f in sorted(self.dir.glob("part-*.npz")):
            try:
                with np.load(f) as z:
                    runs = z["run_index"]
            except Exception:  # noqa: BLE001 - a damaged part is recomputed
                continue
            for i in runs.tolist():
                out[int(i)] = f
        return out

    def write(self, runs: list[int], arrays: dict[str, np.ndarray]) -> Path:
        name = f"part-{runs[0]:08d}-{len(runs):05d}.npz"
        path = self.dir / name

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, run_index=np.asarray(runs, dtype=np.int64), **arrays)

        _atomic_write(path, write)
        return path

    def read_all(self, num_runs: int) -> dict[str, np.ndarray]:
        """Every saved output, as arrays with a leading axis of all runs."""
        out: dict[str, np.ndarray] = {}
        seen = np.zeros(num_runs, dtype=bool)
        for f in sorted(self.dir.glob("part-*.npz")):
            try:
                z = np.load(f)
                runs = z["run_index"]
            except Exception:  # noqa: BLE001
                continue
            with z:
                for key in z.files:
                    if key == "run_index":
                        continue
                    a = z[key]
                    if key not in out:
                        fill = np.nan if np.issubdtype(a.dtype, np.floating) else -1
                        out[key] = np.full((num_runs,) + a.shape[1:], fill, dtype=a.dtype)
                    out[key][runs] = a
            seen[runs] = True
        if not seen.all():
            raise RuntimeError(f"{int((~seen).sum())} runs have no saved result")
        return out

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _coord(values: list) -> np.ndarray:
    """A coordinate array: numbers as numbers, anything else (lists, solvers) as text."""
    if all(isinstance(v, bool | np.bool_) for v in values):
        return np.asarray(values, dtype=bool)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
    ):
        return np.asarray(values, dtype=np.float64)
    return np.asarray(
        [v if isinstance(v, str) else json.dumps(plain(v)) for v in values], dtype=object
    )


def assemble(
    config: SweepConfig,
    arrays: dict[str, np.ndarray],
    ts: np.ndarray,
    attrs: dict[str, Any],
):
    """The sweep's `xarray.Dataset`: one dimension per swept parameter, plus `time`."""
    import xarray as xr

    dims = config.dims
    shape = config.shape
    coords: dict[str, Any] = {}
    for key, values in config.grid.items():
        coords[key] = (key, _coord(values))
    if config.runs is not None:
        coords["run"] = ("run", np.arange(len(config.runs)))
        for key in config.run_keys:
            coords[key] = ("run", _coord([r[key] for r in config.runs]))
    ts = ts.reshape(shape + ts.shape[-1:])
    flat_ts = ts.reshape(-1, ts.shape[-1])
    if np.all(flat_ts == flat_ts[:1]):
        coords["t"] = ("time", flat_ts[0])
    else:
        coords["t"] = (dims + ("time",), ts)

    data_vars: dict[str, Any] = {}

    def put(name, a, time: bool):
        a = a.reshape(shape + a.shape[1:])
        extra = a.ndim - len(shape) - (1 if time else 0)
        base = name.removeprefix("rec.").removeprefix("final.")
        vdims = (
            dims
            + (("time",) if time else ())
            + tuple(f"{base}_dim{k}" for k in range(extra))
        )
        data_vars[name] = (vdims, a)

    put("loss", arrays["loss"], True)
    for key in sorted(arrays):
        if key.startswith("rec."):
            put(key, arrays[key], True)
    for key in sorted(arrays):
        if key.startswith("final."):
            put(key, arrays[key], False)
    for key in ("status", "num_steps", "num_rejected_steps", "grad_evals"):
        put(key, arrays[key], False)
    renamed = {}
    for name in list(data_vars):
        if name.startswith("rec."):
            renamed[name] = name[4:]
        elif name.startswith("final."):
            renamed[name] = "final_" + name[6:]
    data_vars = {renamed.get(k, k): v for k, v in data_vars.items()}
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds["status"].attrs["meaning"] = "; ".join(
        f"{code}: {msg}" for code, msg in Status.MESSAGES.items()
    )
    ds["loss"].attrs["long_name"] = "training loss at the save times"
    ds["t"].attrs["long_name"] = "save time"
    return ds


def write_dataset(ds, output: Path) -> None:
    suffix = output.suffix.lower()
    if suffix == ".zarr":
        try:
            import zarr  # noqa: F401
        except ImportError:
            raise ValueError(
                "output: writing .zarr needs the zarr package "
                "(pip install zarr); use a .nc file otherwise"
            ) from None
        tmp = output.with_name("." + output.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.to_zarr(tmp, mode="w")
        shutil.rmtree(output, ignore_errors=True)
        os.replace(tmp, output)
        return
    _atomic_write(output, lambda p: ds.to_netcdf(p, engine="h5netcdf"))


def load_sweep(path: str | Path):
    """Open a sweep result (`.nc` or `.zarr`) as an `xarray.Dataset` in memory."""
    import xarray as xr  # on first use: importing it takes seconds

    path = Path(path)
    if not path.exists():
        raise ValueError(f"sweep file not found: {path}")
    if path.suffix.lower() == ".zarr":
        return xr.open_zarr(path).load()
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
