"""The standard views of a sweep: a diagnostic against a parameter, separation time
against `log(1/eps)`, heatmaps over two parameters, curves in time."""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import numpy as np

from .. import theory


def separation_time(ds):
    """The separation time `T*` of every run (`inf` if never), from the recorded
    `separated` diagnostic: `theory.separation_time` (the first save time from which
    `metrics.is_separated` holds at every later save)."""
    import xarray as xr

    if "separated" not in ds:
        raise ValueError(
            "the separation time needs the 'separated' diagnostic: add it "
            "to the config's record list"
        )
    sep = ds["separated"]
    dims = tuple(d for d in sep.dims if d != "time")
    t = ds["t"].broadcast_like(sep).transpose(*dims, "time")
    sep = sep.transpose(*dims, "time")
    shape = sep.shape[:-1]
    flat_t = np.asarray(t.values, dtype=float).reshape(-1, sep.shape[-1])
    flat_s = np.asarray(sep.values).reshape(-1, sep.shape[-1])
    when = np.asarray(jax.vmap(theory.separation_time)(flat_t, flat_s)).reshape(shape)
    coords = {d: ds[d] for d in dims if d in ds.coords}
    extra = {
        k: v for k, v in ds.coords.items() if k not in coords and set(v.dims) <= set(dims)
    }
    coords.update(extra)
    return xr.DataArray(when, dims=dims, coords=coords, name="separation_time")


def _ok(ds, da):
    return da.where(ds["status"] == 0)


def _is_log(values) -> bool:
    v = np.asarray(values)
    if v.dtype.kind not in "fi" or v.size < 2 or np.any(v <= 0):
        return False
    return v.max() / v.min() >= 100


def _numeric_dims(ds) -> list[str]:
    out = []
    for d in ds["status"].dims:
        if d == "run":  # an index of explicit runs, not a parameter
            continue
        if d in ds.coords and np.asarray(ds[d]).dtype.kind in "fi" and ds.sizes[d] > 1:
            out.append(d)
    return sorted(out, key=lambda d: d == "seed")  # the seed last: a replicate


def _default_x(ds) -> str:
    dims = _numeric_dims(ds)
    for pref in ("scale", "mu_d", "mu_s", "t1", "width"):
        if pref in dims:
            return pref
    if not dims:
        raise ValueError("the sweep has no numeric swept parameter to plot against")
    return dims[0]


def _fmt(value) -> str:
    """A parameter value for a legend, to three significant digits: `1e-06`, `0.3`,
    `3.73e-06` (not `0.30000000000000004`)."""
    v = np.asarray(value)
    return f"{v.item():.3g}" if v.dtype.kind in "fi" else str(v.item())


def _lines(ax, da, x: str, xvals, label_prefix="", transform=None):
    """Median over the dimensions other than `x` (and a hue dimension), with the
    min-max range over them shaded."""
    others = [d for d in da.dims if d != x]
    hue = next((d for d in others if d != "seed" and 1 < da.sizes[d] <= 8), None)
    groups = (
        [(None, da)]
        if hue is None
        else [
            (f"{hue}={_fmt(v)}", da.isel({hue: k}))
            for k, v in enumerate(da[hue].values)
            if hue in da.coords
        ]
        or [(None, da)]
    )
    for label, sub in groups:
        rest = [d for d in sub.dims if d != x]
        arr = sub.transpose(x, *rest).values.reshape(sub.sizes[x], -1).astype(float)
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(arr, axis=1)
                lo = np.nanmin(arr, axis=1)
                hi = np.nanmax(arr, axis=1)
        xs = np.asarray(xvals if transform is None else transform(xvals), dtype=float)
        (line,) = ax.plot(
            xs, med, "o-", ms=3, label=(label_prefix + label) if label else None
        )
        if arr.shape[1] > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if hue is not None:
        ax.legend(fontsize=7)


def plot_sweep(
    ds,
    out_dir,
    *,
    var: str | None = None,
    x: str | None = None,
    y: str | None = None,
    views=("final", "separation", "heatmap", "curves"),
    fmt: str = "png",
) -> list[Path]:
    """Draw the standard views of a sweep into `out_dir`; return the files written.

    **Arguments:**

    - `ds`: a sweep's `xarray.Dataset` (see `sweep`, `load_sweep`).
    - `out_dir`: the folder for the figures (created).
    - `var`: the diagnostic of the `final` and `heatmap` views (default: `min_margin`
      if recorded, else the final loss); a recorded name or `final_<name>`.
    - `x`, `y`: swept parameters (default `x`: the init scale if swept, else `mu_d`,
      `mu_s`, ...; `y` of the heatmap: the next numeric parameter).
    - `views`: any of `"final"` (the final `var` against `x`; median over the other
      parameters, their range shaded), `"separation"` (the first time the data are
      separated against `log(1/eps)`), `"heatmap"` (`var` over `x` and `y`) and
      `"curves"` (`loss` against time, one line per value of `x`). A view that does not
      apply to the sweep (no scale swept, one parameter only) is skipped.
    - `fmt`: image format (`png`, `pdf`, `svg`).

    **Returns:**

    The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if x is None:
        x = _default_x(ds)
    if x not in ds["status"].dims:
        raise ValueError(
            f"x: {x!r} is not a swept parameter; choose one of {list(ds['status'].dims)}"
        )
    if var is None:
        var = "final_min_margin" if "final_min_margin" in ds else "final_loss"
    elif var not in ds and f"final_{var}" in ds:
        var = f"final_{var}"
    if var not in ds:
        finals = sorted(v for v in ds.data_vars if str(v).startswith("final_"))
        raise ValueError(f"var: {var!r} is not in the sweep; choose one of {finals}")
    da = ds[var]
    extra = [d for d in da.dims if d not in ds["status"].dims]
    if extra:  # per-class or per-neuron values: summarise by their mean
        da = da.mean(extra)
    da = _ok(ds, da)
    logx = _is_log(ds[x].values)

    def save(fig, name):
        path = out / f"{name}.{fmt}"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    if "final" in views:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        _lines(ax, da, x, ds[x].values)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(var)
        ax.set_title(f"{var} against {x}", fontsize=9)
        save(fig, f"{var}_vs_{x}")

    if "separation" in views and "scale" in ds["status"].dims:
        sep = None
        if "separated" in ds:
            sep = _ok(ds, separation_time(ds))
            sep = sep.where(np.isfinite(sep))
        if sep is not None:
            fig, ax = plt.subplots(figsize=(5, 3.6))
            _lines(ax, sep, "scale", ds["scale"].values, transform=lambda s: np.log(1 / s))
            ax.set_xlabel("log(1/eps)")
            ax.set_ylabel("separation time")
            ax.set_title("first time the training data are separated", fontsize=9)
            save(fig, "separation_time")

    numeric = [d for d in _numeric_dims(ds) if d != x]
    if "heatmap" in views and (y is not None or numeric):
        y = y or numeric[0]
        if y not in ds["status"].dims:
            raise ValueError(f"y: {y!r} is not a swept parameter")
        others = [d for d in da.dims if d not in (x, y)]
        grid = da.median(others) if others else da
        grid = grid.transpose(y, x)
        fig, ax = plt.subplots(figsize=(5, 4))
        xv, yv = ds[x].values.astype(float), ds[y].values.astype(float)
        mesh = ax.pcolormesh(
            np.arange(len(xv) + 1),
            np.arange(len(yv) + 1),
            grid.values.astype(float),
            shading="flat",
        )
        ax.set_xticks(
            np.arange(len(xv)) + 0.5, [f"{v:.2g}" for v in xv], rotation=90, fontsize=6
        )
        ax.set_yticks(np.arange(len(yv)) + 0.5, [f"{v:.2g}" for v in yv], fontsize=6)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        fig.colorbar(mesh, ax=ax, label=var, format="%.6g")
        ax.set_title(f"{var} (median over {', '.join(others) or 'nothing'})", fontsize=8)
        save(fig, f"{var}_{x}_{y}")

    if "curves" in views:
        loss = _ok(ds, ds["loss"])
        others = [d for d in loss.dims if d not in (x, "time")]
        curves = loss.median(others) if others else loss
        t = ds["t"]
        if t.ndim > 1:
            t = (
                t.median([d for d in t.dims if d not in (x, "time")])
                if any(d not in (x, "time") for d in t.dims)
                else t
            )
        fig, ax = plt.subplots(figsize=(5, 3.6))
        cmap = plt.get_cmap("viridis")
        n = ds.sizes[x]
        for k in range(n):
            tk = t.values if t.ndim == 1 else t.isel({x: k}).values
            ax.plot(
                tk[1:],
                curves.isel({x: k}).values[1:],
                color=cmap(k / max(1, n - 1)),
                lw=1,
                label=f"{x}={_fmt(ds[x].values[k])}" if n <= 8 else None,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel("loss")
        if n <= 8:
            ax.legend(fontsize=7)
        ax.set_title(
            f"training loss (median over {', '.join(others) or 'nothing'})", fontsize=8
        )
        save(fig, f"loss_curves_{x}")
    return written
