"""Trajectory indexing, trajectory files, and the outputs of `ncjax run`."""

import dataclasses
import json
import math
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets, metrics, theory
from neuralcollapse_jax.cli import main


@pytest.fixture(scope="module")
def run():
    """A short flow with parameters and records saved."""
    kd, km = jax.random.split(jax.random.key(3))
    data = datasets.orthogonally_separable(kd, 3, [4, 5, 6], 10, 0.5, 0.2)
    model = nc.TwoLayerReLU.init(km, 10, 6, 3, 1e-2)
    record = metrics.recorder("nc1", "activation")
    traj = nc.gradient_flow(
        model, data, t1=20.0, saveat=nc.log_times(20.0, 8), record=record
    )
    return traj, data


def _same(a, b):
    """Equal trees: the same structure, shapes, dtypes and values (bit for bit)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- indexing


def test_indexing_gives_models_and_sub_trajectories(run):
    traj, data = run
    T = traj.ts.shape[0]
    assert len(traj) == T == 9
    W, V = np.asarray(traj.models.W), np.asarray(traj.models.V)
    for i in (0, 3, -1, -T):
        for m in (traj[i], traj.models[i]):
            assert isinstance(m, nc.TwoLayerReLU)
            np.testing.assert_array_equal(m.W, W[i])
            np.testing.assert_array_equal(m.V, V[i])
    # The last saved model is the final one at t1 (a successful run), up to rounding.
    np.testing.assert_allclose(traj[-1].W, traj.final.W, rtol=1e-13, atol=1e-15)
    part = traj[2:5]
    assert isinstance(part, nc.Trajectory) and len(part) == 3
    np.testing.assert_array_equal(part.ts, np.asarray(traj.ts)[2:5])
    np.testing.assert_array_equal(part.models.W, W[2:5])
    np.testing.assert_array_equal(part.loss, np.asarray(traj.loss)[2:5])
    np.testing.assert_array_equal(
        part.records["activation"]["exact"][0], traj.records["activation"]["exact"][2]
    )
    late = traj[traj.ts >= 1.0]
    np.testing.assert_array_equal(late.ts, np.asarray(traj.ts)[np.asarray(traj.ts) >= 1.0])
    np.testing.assert_array_equal(traj[[0, -1]].loss, np.asarray(traj.loss)[[0, -1]])
    assert part.final is traj.final
    with pytest.raises(IndexError):
        traj[T]
    with pytest.raises(IndexError):
        traj.models[-T - 1]
    with pytest.raises(ValueError, match="no leading axis"):
        traj.final[0]


@pytest.mark.slow
def test_indexing_without_parameters_and_in_batches(run):
    traj, data = run
    light = nc.gradient_flow(
        traj[0], data, t1=20.0, saveat=nc.log_times(20.0, 8), save_params=False
    )
    with pytest.raises(ValueError, match="save_params"):
        light[0]
    assert len(light[1:3]) == 2 and light[1:3].models is None
    # A batch of two runs: the index selects save times in each run.
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), traj)
    assert len(batch) == len(traj)
    np.testing.assert_array_equal(batch[-1].W[1], traj[-1].W)
    np.testing.assert_array_equal(batch[1:3].ts[0], np.asarray(traj.ts)[1:3])


# ---------------------------------------------------------------- trajectory files


def test_plot_trajectory_draws_the_run(run, tmp_path):
    """`plot_trajectory` draws `ncjax run`'s six panels for a library trajectory: the
    loss panel holds the trajectory's own losses, metrics panels the metrics of the
    saved models, and the figure is written where asked."""
    traj, data = run
    path = tmp_path / "flow.png"
    fig = nc.plot_trajectory(traj, data, path)
    assert len(fig.axes) == 6
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    ts = np.asarray(traj.ts)
    keep = ts > 0  # the time axis is logarithmic
    loss_line = fig.axes[0].get_lines()[0]
    np.testing.assert_array_equal(loss_line.get_xdata(), ts[keep])
    np.testing.assert_allclose(loss_line.get_ydata(), np.asarray(traj.loss)[keep])
    margin_line = fig.axes[4].get_lines()[0]
    margins = [
        float(metrics.min_normalized_margin(traj[i], data)) for i in range(len(traj))
    ]
    np.testing.assert_allclose(
        margin_line.get_ydata(), np.asarray(margins)[keep], rtol=1e-12
    )
    assert "n = 15, D = 10, K = 3, width h = 6" in fig.get_suptitle()
    fig = nc.plot_trajectory(traj, data, title="my run", loss="exponential")
    assert fig.get_suptitle() == "my run"

    # What it needs, named when missing.
    with pytest.raises(ValueError, match="save_params=True"):
        nc.plot_trajectory(dataclasses.replace(traj, models=None), data)
    with pytest.raises(ValueError, match="model at t = 0"):
        nc.plot_trajectory(traj[1:], data)
    with pytest.raises(ValueError, match="unknown loss"):
        nc.plot_trajectory(traj, data, loss="hinge")


def test_trajectory_file_round_trip(run, tmp_path):
    traj, data = run
    config = {
        "width": 6,
        "scale": 1e-2,
        "per_class": [4, 5, 6],
        "progress": None,
        "save": True,
        "loss": "cross_entropy",
        "out": tmp_path,
    }
    path = tmp_path / "traj.nc"
    nc.save_trajectory(path, traj, data, config)
    loaded, data2, config2 = nc.load_run(path)
    _same(loaded, traj)
    _same(data2, data)
    _same(nc.load_trajectory(path), traj)
    assert config2 == {**config, "out": str(tmp_path)}
    # Readable by any netCDF reader; the mode of a plain open() (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds.attrs["Conventions"].startswith("CF-")
        for name in ds.variables:
            assert ds[name].attrs.get("units") == "1", name
            assert ds[name].attrs.get("long_name"), name
        assert ds["W"].dims == ("time", "D", "h") and ds["x"].dims == ("sample", "D")
        assert list(ds["status"].attrs["flag_values"]) == [0, 1, 2, 3]
        assert ds.attrs["config_width"] == 6 and ds.attrs["config_scale"] == 1e-2
        assert list(ds.attrs["config_per_class"]) == [4, 5, 6]
        assert ds.attrs["config_save"] == 1 and "config_progress" not in ds.attrs
        assert json.loads(ds.attrs["config"])["progress"] is None
    # Metrics from the file alone equal those of the run.
    _same(metrics.summary(loaded.final, data2), metrics.summary(traj.final, data))


def test_trajectory_file_of_gradient_descent_without_parameters(run, tmp_path):
    traj, data = run
    gd = nc.gradient_descent(
        traj[0],
        data,
        learning_rate=0.05,
        steps=20,
        save_steps=[0, 5, 20],
        save_params=False,
        record=metrics.recorder("nc2"),
    )
    nc.save_trajectory(tmp_path / "gd.nc", gd, data)
    loaded, _, config = nc.load_run(tmp_path / "gd.nc")
    _same(loaded, gd)
    assert loaded.models is None and config is None


def test_trajectory_file_errors(run, tmp_path):
    traj, data = run
    with pytest.raises(ValueError, match="not found"):
        nc.load_run(tmp_path / "missing.nc")
    xr.Dataset({"a": ("t", np.zeros(3))}).to_netcdf(
        tmp_path / "other.nc", engine="h5netcdf"
    )
    with pytest.raises(ValueError, match="not a trajectory file"):
        nc.load_trajectory(tmp_path / "other.nc")
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), traj)
    with pytest.raises(ValueError, match="batch"):
        nc.save_trajectory(tmp_path / "b.nc", batch, data)
    other = datasets.orthogonally_separable(jax.random.key(0), 3, 4, 12, 0.5, 0.2)
    with pytest.raises(ValueError, match="input dimension"):
        nc.save_trajectory(tmp_path / "d.nc", traj, other)
    with pytest.raises(ValueError, match="does not exist"):
        nc.save_trajectory(tmp_path / "no" / "t.nc", traj, data)


# ---------------------------------------------------------------- ncjax run


def _json_equal(stored, value):
    """A summary entry against a recomputed value ("nan"/"inf" strings for non-finite)."""
    value = np.asarray(value)
    if value.ndim:
        assert len(stored) == len(value)
        for s, v in zip(stored, value, strict=True):
            _json_equal(s, v)
        return
    v = value.item()
    if isinstance(v, float) and not math.isfinite(v):
        assert stored == str(v)
    else:
        assert stored == v


@pytest.mark.slow
def test_run_outputs_tell_the_story(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--set", "data.points_per_class=[5,6,7]", "--set", "data.dim=12"]
    argv += ["--width", "8", "--t1", "200", "--set", "flow.num_saves=30"]
    argv += ["--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    traj, data, config = nc.load_run(out / "trajectory.nc")
    assert config["width"] == 8 and config["points_per_class"] == [5, 6, 7]
    assert data.num_samples == 18 and data.num_classes == 3
    # The run's own entries, and the loss from the file.
    assert summary["final_loss"] == pytest.approx(
        float(nc.loss(traj.final, data)), rel=1e-12
    )
    assert summary["initial_loss"] == float(traj.loss[0])
    # Every new entry, recomputed from the file alone through the public API.
    final = metrics.summary(traj.final, data)
    assert set(summary["final_metrics"]) == set(final)
    for key, value in final.items():
        _json_equal(summary["final_metrics"][key], value)
    _json_equal(summary["separation_time"], theory.trajectory_separation_time(traj, data))
    limit = theory.predicted_limit(data)
    distance = theory.limit_distance(traj.final, data, limit)
    for key, value in summary["limit_distance"].items():
        _json_equal(value, distance[key])
    _json_equal(summary["predicted_limit"]["s"], limit.s)
    _json_equal(
        summary["predicted_limit"]["normalized_margin"], theory.predicted_margin(limit, 3)
    )
    checks = theory.check_assumptions(traj[0], data)
    assert [c["name"] for c in summary["assumptions"]] == [c.name for c in checks]
    assert [c["ok"] for c in summary["assumptions"]] == [c.holds for c in checks]
    assert summary["alignment_horizon"] == pytest.approx(
        float(theory.alignment_horizon(data, 8, theory.effective_eps(traj[0]))), rel=1e-12
    )
    # The flow separates the classes and approaches the limit.
    assert summary["separation_time"] != "inf" or summary["final_metrics"]["nc2"] < 1e-6
    assert summary["limit_distance"]["distance"] < 0.5
    assert (out / "flow.png").stat().st_size > 50_000
