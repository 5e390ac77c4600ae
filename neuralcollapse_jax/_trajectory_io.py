"""Trajectory files: a run's saved states, data and configuration in one netCDF file.

The file is self-describing (CF conventions): every variable carries `long_name` and
`units`, the status follows CF's `flag_values`/`flag_meanings`, and the configuration
is stored both as one JSON attribute and as typed scalar attributes. Everything a
metric needs (the data and the weights at every save time) is in the file, so a run
can be analysed from the file alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset
from ._model import TwoLayerReLU
from ._trajectory import Status, Trajectory


__all__ = ["load_run", "load_trajectory", "save_trajectory"]

CONVENTIONS = "CF-1.10"
RECORD_PREFIX = "record."
CONFIG_PREFIX = "config_"

# `long_name` of the solver statistics that `gradient_flow` and `gradient_descent` keep.
STAT_NAMES = {
    "num_steps": "attempted solver steps",
    "num_accepted_steps": "accepted solver steps",
    "num_rejected_steps": "rejected solver steps",
    "grad_evals": "gradient evaluations",
    "sliding_pairs": "neuron-sample pairs held on a kink by the sliding solver",
    "sliding_entries": "entries of neuron-sample pairs into sliding on their kink",
    "sliding_exits": "exits of neuron-sample pairs from sliding",
    "crossings_located": "kink crossings located inside steps",
    "crossings_started": "kink crossings started at the beginning of a step",
    "event_retries": "steps rejected and retried to end before a located kink event",
    "event_landings": "steps shortened to end before a predicted kink event",
    "event_retries_past": "steps rejected for the error of the kink crossings "
    "corrected inside them and retried to end just past the first",
}

REQUIRED = ("loss", "final_W", "final_V", "status", "x", "labels", "num_classes")


def _plain(value: Any) -> Any:
    """A JSON value: paths and NumPy/JAX scalars or arrays as Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "shape") or isinstance(value, np.generic):
        return _plain(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf: "nan", "inf", "-inf"
    return value


def _typed_attribute(value: Any) -> Any:
    """A netCDF attribute for a scalar (or a flat list of numbers); `None` if none fits.

    netCDF has no booleans (written as 0/1) and no null (left to the JSON attribute).
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=np.int64)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=np.float64)
    return None


def _flatten_records(records: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(records, Mapping):
        out = {}
        for key, value in records.items():
            key = str(key)
            if "." in key:
                raise ValueError(f"record names may not contain '.', got {key!r}")
            out |= _flatten_records(value, f"{prefix}{key}.")
        return out
    if records is None:
        return {}
    return {prefix[:-1]: records}


def _unflatten_records(flat: dict[str, Any]) -> dict[str, Any]:
    records: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = records
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return records


def _dataset(traj: Trajectory, data: Dataset, config: Mapping[str, Any] | None):
    import xarray as xr

    if not isinstance(traj, Trajectory):
        raise ValueError(f"traj must be a Trajectory, got {type(traj).__name__}")
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    if np.ndim(traj.ts) != 1:
        raise ValueError(
            f"save_trajectory takes one run, not a batch (ts has shape {np.shape(traj.ts)})"
        )
    final = traj.final
    if final.W.shape[-2] != data.dim:
        raise ValueError(
            f"the model has input dimension {final.W.shape[-2]} but the data {data.dim}"
        )
    time_attrs = {"long_name": "save time t (gradient descent: learning rate x step)"}
    one = {"units": "1"}  # every quantity of the flow is dimensionless
    data_vars: dict[str, Any] = {
        "loss": ("time", np.asarray(traj.loss), {"long_name": "training loss L(θ(t))"}),
        "final_W": (
            ("D", "h"),
            np.asarray(final.W),
            {"long_name": "input weights W at the end of the run (column j: w_j)"},
        ),
        "final_V": (
            ("K_out", "h"),
            np.asarray(final.V),
            {"long_name": "output weights V at the end of the run (column j: v_j)"},
        ),
        "x": (("sample", "D"), np.asarray(data.x), {"long_name": "samples x_i"}),
        "labels": (
            "sample",
            np.asarray(data.y),
            {"long_name": "class labels y_i in [0, K)"},
        ),
        "num_classes": ((), np.asarray(data.num_classes), {"long_name": "classes K"}),
        "status": (
            (),
            np.asarray(traj.status),
            {
                "long_name": "status of the run",
                "flag_values": np.asarray(list(Status.MESSAGES), dtype=np.int32),
                "flag_meanings": "success max_steps nonfinite failed",
                "comment": "; ".join(f"{c}: {m}" for c, m in Status.MESSAGES.items()),
            },
        ),
    }
    if traj.models is not None:
        data_vars["W"] = (
            ("time", "D", "h"),
            np.asarray(traj.models.W),
            {"long_name": "input weights W(t) (column j: w_j)"},
        )
        data_vars["V"] = (
            ("time", "K_out", "h"),
            np.asarray(traj.models.V),
            {"long_name": "output weights V(t) (column j: v_j)"},
        )
    stats = sorted(traj.stats)
    for key in stats:
        if key in data_vars or key in ("time", "sample", "D", "h", "K_out"):
            raise ValueError(f"the statistic {key!r} clashes with a variable of the file")
        long_name = STAT_NAMES.get(key, f"solver statistic {key}")
        data_vars[key] = ((), np.asarray(traj.stats[key]), {"long_name": long_name})
    for path, value in _flatten_records(traj.records).items():
        value = np.asarray(value)
        name = RECORD_PREFIX + path
        dims = ("time",) + tuple(f"{name}_dim{i}" for i in range(value.ndim - 1))
        data_vars[name] = (dims, value, {"long_name": f"recorded diagnostic {path}"})
    for _, _, attrs in data_vars.values():
        attrs |= one

    attrs: dict[str, Any] = {
        "Conventions": CONVENTIONS,
        "title": "saved states of a run of f(x) = V relu(W^T x)",
        "source": "neuralcollapse_jax",
        "leak": float(final.leak),
        "stats_variables": " ".join(stats),
    }
    if config is not None:
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping, got {type(config).__name__}")
        plain = _plain(config)
        attrs["config"] = json.dumps(plain)
        for key, value in plain.items():
            typed = _typed_attribute(value)
            if typed is not None:
                attrs[CONFIG_PREFIX + key] = typed
    ds = xr.Dataset(
        {name: (dims, value, a) for name, (dims, value, a) in data_vars.items()},
        coords={"time": ("time", np.asarray(traj.ts), time_attrs | one)},
        attrs=attrs,
    )
    return ds


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_trajectory(
    path: str | os.PathLike,
    traj: Trajectory,
    data: Dataset,
    config: Mapping[str, Any] | None = None,
) -> None:
    r"""Write a run to a netCDF file (xarray, h5netcdf engine) that describes itself.

    Variables (each with `long_name` and `units`):

    - coordinate `time` (`T`): the save times `traj.ts`;
    - `loss` (`time`); `W` (`time, D, h`) and `V` (`time, K_out, h`) when the
      parameters were saved; `final_W`, `final_V`: the model at the end of the run;
    - the data: `x` (`sample, D`), `labels` (`sample`), `num_classes` (scalar);
    - `status` (CF flags), and one scalar per solver statistic (`num_steps`,
      `grad_evals`, ...; the global attribute `stats_variables` lists them);
    - each recorded diagnostic as `record.<name>` (nested names joined by `.`).

    Global attributes: `Conventions`, `title`, `leak` (the model's leaky slope), and for a
    `config`: `config` (the whole mapping as a JSON string) and `config_<key>` (each
    scalar or flat numeric list as a typed attribute; booleans as 0/1; `None` only in
    the JSON).

    The file is written to a temporary file in the same folder and renamed, so that a
    reader sees the old file or the complete new one; its mode is that of a plain
    `open()` (`0644` under the usual umask).

    **Arguments:**

    - `path`: the file to write (conventionally `*.nc`).
    - `traj`: an un-batched `Trajectory` (from `gradient_flow` or `gradient_descent`).
    - `data`: the `Dataset` it was trained on.
    - `config`: optional settings of the run (JSON-serializable values and paths).

    **Raises:** `ValueError` for a batched trajectory, data that do not fit the model,
    or a folder that does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {path.parent} does not exist")
    ds = _dataset(traj, data, config)
    encoding = {
        name: {"_FillValue": None}
        for name in list(ds.data_vars) + list(ds.coords)
        if np.issubdtype(ds[name].dtype, np.floating)
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates the file 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _as_jax(a: np.ndarray) -> jax.Array:
    if a.dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "the file holds float64 arrays: enable float64 first, "
            "jax.config.update('jax_enable_x64', True)"
        )
    return jnp.asarray(a)


def load_run(
    path: str | os.PathLike,
) -> tuple[Trajectory, Dataset, dict[str, Any] | None]:
    r"""Read a file of `save_trajectory`: the trajectory, its data and its configuration.

    **Arguments:**

    - `path`: a file written by `save_trajectory` (or by `ncjax run`, its
      `trajectory.nc`).

    **Returns:**

    `(traj, data, config)`: the `Trajectory` (equal to the saved one, array for array
    and dtype for dtype), the `Dataset`, and the configuration mapping (`None` if none
    was saved).

    **Raises:** `ValueError` if the file is missing or not a trajectory file, or holds
    float64 arrays while JAX runs in float32 (enable `jax_enable_x64` first).
    """
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trajectory file not found: {path}")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            ds = opened.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as netCDF: {e}") from e
    missing = [name for name in REQUIRED if name not in ds.variables]
    if "time" not in ds.coords:
        missing.insert(0, "time")
    if missing:
        raise ValueError(f"{path} is not a trajectory file: no variable {missing[0]!r}")
    leak = float(ds.attrs.get("leak", 0.0))
    models = None
    if "W" in ds.variables:
        models = TwoLayerReLU(_as_jax(ds["W"].values), _as_jax(ds["V"].values), leak)
    stats_names = str(ds.attrs.get("stats_variables", "")).split()
    records = _unflatten_records(
        {
            name[len(RECORD_PREFIX) :]: _as_jax(ds[name].values)
            for name in ds.data_vars
            if name.startswith(RECORD_PREFIX)
        }
    )
    traj = Trajectory(
        ts=_as_jax(ds["time"].values),
        models=models,
        loss=_as_jax(ds["loss"].values),
        records=records,
        final=TwoLayerReLU(
            _as_jax(ds["final_W"].values), _as_jax(ds["final_V"].values), leak
        ),
        stats={k: _as_jax(ds[k].values) for k in stats_names},
        status=_as_jax(ds["status"].values),
    )
    data = Dataset(
        _as_jax(ds["x"].values), ds["labels"].values, int(ds["num_classes"].values)
    )
    config = json.loads(ds.attrs["config"]) if "config" in ds.attrs else None
    return traj, data, config


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """The `Trajectory` of a file of `save_trajectory` (see `load_run` for the data and
    the configuration too).

    **Raises:** `ValueError` as `load_run`.
    """
    return load_run(path)[0]
