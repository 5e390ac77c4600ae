"""Sweeps: equality with single runs, failed runs, resume, config errors, CLI, plots."""

import inspect
import json
import logging
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import Status
from neuralcollapse_jax.cli import main as cli_main


RECORD = ("min_margin", "separated")

# Block-orthogonal classes (shared data): 3 scales x 2 seeds, one compiled block.
CONFIG_A = {
    "name": "a",
    "data": {"generator": "block_orthogonal", "points_per_class": 4, "block_dim": 4},
    "model": {"width": 6, "init": "lecun"},
    "flow": {"t1": 30.0, "rtol": 1e-6, "atol_per_scale": 1e-6, "num_saves": 8},
    "grid": {"scale": {"geomspace": [1e-4, 1e-2, 3]}, "seed": [0, 1]},
    "record": list(RECORD),
    "execution": {"chunk_size": 2},
}

# Data geometry swept (per-run data), two widths (two blocks), explicit runs over the
# horizon and the tolerance (per-run save times), scale-free default atol.
CONFIG_B = {
    "name": "b",
    "data": {
        "generator": "orthogonally_separable",
        "num_classes": 3,
        "points_per_class": [3, 4, 5],
        "dim": 9,
        "mu_s": 0.5,
    },
    "model": {"init": "gaussian"},
    "flow": {"num_saves": 6, "t_min_ratio": 1e-3},
    "runs": [{"t1": 20.0, "rtol": 1e-6}, {"t1": 40.0, "rtol": 1e-7}],
    "grid": {"mu_d": [0.1, 0.3], "width": [5, 7], "scale": [1e-3, 1e-1]},
    "record": list(RECORD),
    "execution": {"chunk_size": 3},
}


@pytest.fixture(scope="module")
def result_a():
    return nc.sweep(CONFIG_A, progress=False)


@pytest.fixture(scope="module")
def result_b():
    return nc.sweep(CONFIG_B, progress=False)


def _single(
    data,
    width,
    init,
    seed,
    scale,
    t1,
    num_saves,
    t_min_ratio,
    rtol,
    atol,
    loss="cross_entropy",
    max_steps=100_000,
):
    """One run exactly as a user would write it, with the public API."""
    out_dim = 1 if loss in ("exponential", "logistic") else data.num_classes
    model = nc.TwoLayerReLU.init(
        jax.random.key(seed), data.dim, width, out_dim, scale, init=init
    )
    return nc.gradient_flow(
        model,
        data,
        t1=t1,
        saveat=nc.log_times(t1, num_saves, t_min=t_min_ratio * t1),
        loss=loss,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        record=nc.metrics.recorder(*RECORD),
        save_params=False,
    )


def _assert_same(ds, index, traj, data, loss="cross_entropy"):
    sel = ds.isel(index)
    ulps = max(1e-14, 4 * float(np.finfo(sel["loss"].dtype).eps))  # "the last bits"
    np.testing.assert_array_equal(sel["loss"].values, np.asarray(traj.loss))
    for name in RECORD:
        np.testing.assert_array_equal(sel[name].values, np.asarray(traj.records[name]))
        # Final values: the same final model, the diagnostic evaluated inside the
        # compiled sweep rather than op by op, so equal up to the last bit or two.
        want = nc.metrics.RECORDERS[name](traj.final, data)
        np.testing.assert_allclose(
            sel[f"final_{name}"].values, np.asarray(want), rtol=ulps, atol=1e-300
        )
    np.testing.assert_allclose(
        sel["final_loss"].values, np.asarray(nc.loss(traj.final, data, loss)), rtol=ulps
    )
    assert int(sel["status"]) == int(traj.status)
    assert int(sel["num_steps"]) == int(traj.stats["num_steps"])
    assert int(sel["grad_evals"]) == int(traj.stats["grad_evals"])


def test_sweep_equals_single_runs(result_a):
    ds = result_a
    assert ds["loss"].dims == ("scale", "seed", "time")
    assert ds["status"].dims == ("scale", "seed")
    np.testing.assert_allclose(ds["scale"].values, np.geomspace(1e-4, 1e-2, 3))
    data = nc.datasets.block_orthogonal(jax.random.key(0), points_per_class=4, block_dim=4)
    np.testing.assert_array_equal(ds["t"].values, nc.log_times(30.0, 8, t_min=30.0 * 1e-4))
    for i, scale in enumerate(ds["scale"].values):
        for j, seed in enumerate(ds["seed"].values):
            traj = _single(
                data,
                6,
                "lecun",
                int(seed),
                float(scale),
                30.0,
                8,
                1e-4,
                1e-6,
                1e-6 * float(scale),
            )
            assert bool(traj.ok)
            _assert_same(ds, {"scale": i, "seed": j}, traj, data)


@pytest.mark.slow
def test_sweep_geometry_widths_runs_equal_single_runs(result_b):
    ds = result_b
    assert ds["status"].dims == ("run", "mu_d", "width", "scale")
    np.testing.assert_array_equal(ds["t1"].values, [20.0, 40.0])  # run coordinates
    assert ds["t"].dims == ("run", "mu_d", "width", "scale", "time")
    for r, (t1, rtol) in enumerate([(20.0, 1e-6), (40.0, 1e-7)]):
        for i, mu_d in enumerate([0.1, 0.3]):
            data = nc.datasets.orthogonally_separable(
                jax.random.key(0),
                num_classes=3,
                points_per_class=[3, 4, 5],
                dim=9,
                mu_s=0.5,
                mu_d=mu_d,
            )
            for j, width in enumerate([5, 7]):
                for k, scale in enumerate([1e-3, 1e-1]):
                    traj = _single(
                        data, width, "gaussian", 0, scale, t1, 6, 1e-3, rtol, None
                    )
                    index = {"run": r, "mu_d": i, "width": j, "scale": k}
                    _assert_same(ds, index, traj, data)
                    np.testing.assert_array_equal(
                        ds["t"].isel(index).values, nc.log_times(t1, 6, t_min=t1 * 1e-3)
                    )


@pytest.fixture
def compiled(caplog):
    """The programs XLA compiles from now on, as JAX logs them (`jax_log_compiles`)."""
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            start = len(caplog.records)
            yield lambda: [
                r.getMessage().split(" with ")[0]
                for r in caplog.records[start:]
                if r.getMessage().startswith("Compiling ")
            ]
    finally:
        jax.config.update("jax_log_compiles", False)


def test_values_and_grid_size_do_not_recompile(compiled):
    """Scale, seed and horizon values and the number of runs never recompile, and a
    sweep's runs are `gradient_flow` calls: once one sweep has run, another sweep of
    other values and size, and a single run of the same settings, compile nothing."""
    execution = {"batch_size": 1, "workers": 2}
    grid = {"scale": [1e-4, 3e-4, 5e-3], "t1": [10.0, 20.0]}
    cfg = dict(CONFIG_A, grid=grid, execution=execution)
    nc.sweep(cfg, progress=False)
    before = len(compiled())
    cfg = dict(
        CONFIG_A,
        grid={"scale": [2e-4, 7e-4, 1e-3, 4e-3, 9e-3], "seed": [3, 4], "t1": [15.0]},
        execution=dict(execution, chunk_size=3),
    )
    ds = nc.sweep(cfg, progress=False)
    assert int(ds["status"].max()) == Status.SUCCESS
    data = nc.datasets.block_orthogonal(jax.random.key(0), points_per_class=4, block_dim=4)
    traj = _single(data, 6, "lecun", 5, 6e-4, 25.0, 8, 1e-4, 1e-6, 1e-6 * 6e-4)
    assert compiled()[before:] == []
    assert bool(traj.ok)
    jax.jit(lambda v: 2 * v)(jnp.ones(3))  # a new program: the log records compilations
    assert any("<lambda>" in c for c in compiled()[before:])


def test_failed_runs_are_marked_and_do_not_stop_the_sweep():
    cfg = {
        "data": {"generator": "iclr_toy", "toy": "mu_large"},
        "model": {"width": 4, "init": "gaussian"},
        "flow": {"loss": "exponential", "rtol": 1e-8, "max_steps": 150, "num_saves": 5},
        "grid": {"scale": [1e-3, 1e60], "t1": [0.1, 1e6]},
        "record": list(RECORD),
    }
    # The sweep records each run's status; `gradient_flow`'s warning for a failed
    # call stays silent inside it (its worker threads included).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = nc.sweep(cfg, progress=False)
    assert not [w for w in caught if "gradient_flow" in str(w.message)]
    status = ds["status"].values
    assert status[0, 0] == Status.SUCCESS
    assert status[0, 1] == Status.MAX_STEPS  # the long horizon needs more steps
    assert np.all(status[1] == Status.NONFINITE)  # exp(-f) overflows at scale 1e60
    data = nc.datasets.iclr_toy("mu_large")
    traj = _single(
        data,
        4,
        "gaussian",
        0,
        1e-3,
        0.1,
        5,
        1e-4,
        1e-8,
        None,
        loss="exponential",
        max_steps=150,
    )
    _assert_same(ds, {"scale": 0, "t1": 0}, traj, data, loss="exponential")


def test_resume_recomputes_only_missing_chunks(tmp_path, capsys, result_a):
    out = tmp_path / "a.nc"
    ds_full = nc.sweep(CONFIG_A, out, progress=False, keep_parts=True)
    xr_equal(ds_full, result_a)
    parts = sorted((tmp_path / "a.nc.parts").glob("part-*.npz"))
    assert len(parts) == 3
    out.unlink()
    parts[1].unlink()  # as if killed before the second chunk was saved
    capsys.readouterr()
    ds = nc.sweep(CONFIG_A, out, progress=True)
    # The progress bar (runs done of 6) starts at the 4 runs of the kept chunks: only
    # the missing chunk of two runs is solved.
    counts = [int(c) for c in re.findall(r"(\d+)/6 \[", capsys.readouterr().err)]
    assert counts and counts[0] == 4 and counts[-1] == 6
    xr_equal(ds, result_a)
    assert not (tmp_path / "a.nc.parts").exists()
    # A finished sweep run again computes nothing: it returns the stored results, here
    # changed so that no run could have produced them.
    stored = nc.load_sweep(out)
    stored["loss"] = stored["loss"] + 1.0
    out.unlink()
    stored.to_netcdf(out, engine="h5netcdf")
    ds = nc.sweep(CONFIG_A, out, progress=True)
    assert "/6 [" not in capsys.readouterr().err  # no progress bar: nothing to run
    np.testing.assert_array_equal(ds["loss"].values, result_a["loss"].values + 1.0)
    # A different config at the same place is refused, naming the problem.
    with pytest.raises(ValueError, match="different sweep"):
        nc.sweep(dict(CONFIG_A, flow=dict(CONFIG_A["flow"], t1=31.0)), out, progress=False)


def xr_equal(a, b):
    """Element-by-element equality of two sweep results (values, coordinates, names)."""
    assert set(a.data_vars) == set(b.data_vars)
    assert set(a.coords) == set(b.coords)
    for name in list(a.data_vars) + list(a.coords):
        assert a[name].dims == b[name].dims, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_netcdf_round_trip(tmp_path, result_a):
    out = tmp_path / "a.nc"
    nc.sweep(CONFIG_A, out, progress=False)
    xr_equal(nc.load_sweep(out), result_a)
    attrs = nc.load_sweep(out).attrs
    assert json.loads(attrs["config"])["grid"]["seed"] == [0, 1]


@pytest.mark.parametrize(
    "change, key",
    [
        ({"colour": "red"}, "colour"),
        ({"model": {"widht": 5}}, "model.widht"),
        ({"model": {"t1": 5.0}}, "model.t1"),
        ({"grid": {"scale": []}}, "grid.scale"),
        ({"grid": {"scale": {"geomspace": [1e-3, 1e-1, 0]}}}, "grid.scale"),
        ({"grid": {"sclae": [1e-3]}}, "grid.sclae"),
        ({"grid": {"scale": [1e-3, -1.0]}}, "grid.scale"),
        ({"grid": {"width": [4, 0]}}, "grid.width"),
        ({"grid": {"mu_s": [0.5]}}, "grid.mu_s"),  # not a block_orthogonal argument
        ({"record": ["nc1", "nc9"]}, "record.nc9"),
        ({"execution": {"chunk_size": 0}}, "execution.chunk_size"),
        ({"runs": []}, "runs"),
        ({"runs": [{"t1": 1.0}, {"rtol": 1e-3}]}, r"runs\[1\]"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_config_names_the_key(change, key, tmp_path):
    cfg = dict(CONFIG_A)
    cfg.update(change)
    with pytest.raises(ValueError, match=key):
        nc.sweep(cfg, tmp_path / "x.nc", progress=False)
    # Nothing written, so nothing started: a sweep makes its parts folder before its
    # first run.
    assert not list(tmp_path.iterdir())


def test_impossible_geometry_fails_before_any_run(tmp_path):
    cfg = dict(CONFIG_B, grid={"mu_d": [0.1, 0.9], "scale": [1e-3]})  # 0.9 > 1/(K-1)
    with pytest.raises(ValueError, match=r"grid\.mu_d=0\.9.*impossible"):
        nc.sweep(cfg, tmp_path / "x.nc", progress=False)
    cfg = dict(CONFIG_B, grid={"dim": [9, 5]})  # D < 3K
    with pytest.raises(ValueError, match=r"grid\.dim=5"):
        nc.sweep(cfg, tmp_path / "x.nc", progress=False)
    cfg = dict(CONFIG_A, flow={"loss": "exponential"})  # binary loss, K = 3
    with pytest.raises(ValueError, match=r"flow\.loss"):
        nc.sweep(cfg, tmp_path / "x.nc", progress=False)
    assert not list(tmp_path.iterdir())  # as above: no parts folder, no run


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {generator: block_orthogonal}\ngrid:\n  scale: []\n")
    assert cli_main(["sweep", str(path), "-o", str(tmp_path / "o.nc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid.scale" in err
    path.write_text("grid: {scale: [0.001]}\nmodle: {width: 3}\n")
    assert cli_main(["sweep", str(path), "-o", str(tmp_path / "o.nc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modle" in err
    assert cli_main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_float32_sweep_runs():
    cfg = dict(
        CONFIG_A,
        dtype="float32",
        flow=dict(CONFIG_A["flow"], rtol=1e-4, atol_per_scale=1e-4),
        grid={"scale": [1e-3, 1e-2]},
    )
    ds = nc.sweep(cfg, progress=False)
    assert ds["loss"].dtype == np.float32
    assert np.all(ds["status"].values == Status.SUCCESS)
    data = nc.datasets.block_orthogonal(
        jax.random.key(0), points_per_class=4, block_dim=4, dtype=jnp.float32
    )
    model = nc.TwoLayerReLU.init(
        jax.random.key(0), 12, 6, 3, 1e-2, init="lecun", dtype=jnp.float32
    )
    traj = nc.gradient_flow(
        model,
        data,
        t1=30.0,
        saveat=nc.log_times(30.0, 8, t_min=3e-3),
        rtol=1e-4,
        atol=1e-6,
        record=nc.metrics.recorder(*RECORD),
        save_params=False,
    )
    _assert_same(ds, {"scale": 1}, traj, data)


def test_plot_sweep_draws_views_against_the_scale(tmp_path, result_a):
    """`nc.plot_sweep` on a scale x seed grid: the separation time against
    `log(1/eps)` and each final diagnostic against the scale, over the seeds."""
    files = nc.plot_sweep(result_a, tmp_path)
    names = sorted(Path(f).name for f in files)
    assert "separation_time.png" in names
    assert "final_min_margin_vs_scale.png" in names
    for f in files:
        assert Path(f).stat().st_size > 5_000


@pytest.mark.slow
def test_plot_cli_draws_the_standard_views(tmp_path, result_b):
    path = tmp_path / "b.nc"
    result_b.to_netcdf(path, engine="h5netcdf")
    out = tmp_path / "plots"
    assert cli_main(["plot", str(path), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "separation_time.png" in names
    assert "final_min_margin_vs_scale.png" in names
    assert "final_min_margin_scale_mu_d.png" in names  # heatmap over two parameters
    assert "loss_curves_scale.png" in names
    assert cli_main(["plot", str(path), "--var", "nope", "-o", str(out)]) == 2


@pytest.mark.slow
def test_separation_time_is_the_first_lasting_separated_save(result_a, result_b):
    """`T*` per run: the first save time from which `separated` holds to the end."""
    found = 0
    for ds in (result_a, result_b):
        dims = ds["status"].dims
        recorded = ds["separated"].transpose(*dims, "time").values
        times = ds["t"].broadcast_like(ds["separated"]).transpose(*dims, "time").values
        sep = jax.vmap(nc.theory.separation_time)(
            times.reshape(-1, times.shape[-1]), recorded.reshape(-1, recorded.shape[-1])
        )
        sep = np.asarray(sep).reshape(recorded.shape[:-1])
        flags = recorded > 0.5
        for index in np.ndindex(sep.shape):
            f, t = flags[index], times[index]
            lasting = [k for k in range(len(f)) if f[k:].all()]
            want = t[lasting[0]] if lasting else np.inf
            assert sep[index] == want
            found += bool(lasting)
    assert found > 0


@pytest.mark.slow
def test_default_solver_is_resolved_per_data_set():
    """`solver: default` runs the located sliding solver (`events`) on MNIST and on
    separable data, as `gradient_flow`'s default does, and the sweep's runs equal
    single runs with `solver="events"`."""
    config = {
        "name": "m",
        "data": {"generator": "mnist", "digits": [0, 1, 2], "per_class": 3},
        "model": {"width": 4},
        "flow": {"t1": 0.5, "rtol": 1e-6, "num_saves": 3},
        "grid": {"scale": [1e-3, 1e-2]},
        "record": list(RECORD),
    }

    def named(cfg, solver):
        return {**cfg, "flow": {**cfg["flow"], "solver": solver}}

    # One default for all data: each default sweep equals the sweep that names the
    # solver (the step counts and gradient evaluations tell the solvers apart).
    tight = {**config, "flow": {**config["flow"], "rtol": 1e-8}}
    separable = {**config, "data": {"generator": "orthogonally_separable"}}
    for cfg, solver in ((tight, "events"), (separable, "events")):
        xr_equal(
            nc.sweep(cfg, progress=False), nc.sweep(named(cfg, solver), progress=False)
        )
    ds = nc.sweep(config, progress=False)
    data = nc.datasets.mnist((0, 1, 2), per_class=3)
    for i, scale in enumerate(ds["scale"].values):
        model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, 4, 3, float(scale))
        traj = nc.gradient_flow(
            model,
            data,
            t1=0.5,
            saveat=nc.log_times(0.5, 3, t_min=0.5 * 1e-4),
            rtol=1e-6,
            solver="events",
            record=nc.metrics.recorder(*RECORD),
            save_params=False,
        )
        _assert_same(ds, {"scale": i}, traj, data)


def test_solver_names_and_tolerance_defaults_are_gradient_flows():
    """The sweep takes the solver names `gradient_flow` takes (and `default` for
    `auto`), and an unset `rtol` is `gradient_flow`'s default for the config's dtype."""
    config = dict(CONFIG_A, flow={"t1": 30.0})
    one = {**config, "grid": {"scale": [1e-3], "seed": [0]}}
    default = nc.sweep({**one, "flow": {"t1": 30.0, "solver": "default"}}, progress=False)
    events = {**one, "flow": {"t1": 30.0, "solver": "events"}}
    xr_equal(default, nc.sweep(events, progress=False))
    with pytest.raises(ValueError, match="flow.solver must be one of"):
        nc.SweepConfig({**config, "flow": {"solver": "rk4"}})

    # `gradient_flow(rtol=None)` takes `default_rtol` of the model's dtype.
    assert inspect.signature(nc.gradient_flow).parameters["rtol"].default is None
    for dtype, default in (("float64", 1e-8), ("float32", 1e-5)):
        params = nc.SweepConfig({**config, "dtype": dtype}).run_params()
        assert {p["rtol"] for p in params} == {default} == {nc.default_rtol(dtype)}


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(CONFIG_A, id="shared"),
        pytest.param(CONFIG_B, id="per_run", marks=pytest.mark.slow),
    ],
)
def test_batched_solves_agree_with_one_run_per_solve(config):
    """Several runs per solve (`vmap`, as on accelerators; chunks padded to their size)
    give the runs of one run per solve, up to the solver's tolerance."""
    grid = {**config["grid"], "width": [5]} if "width" in config["grid"] else config["grid"]
    one = nc.sweep(dict(config, grid=grid, execution={"batch_size": 1}), progress=False)
    batched = nc.sweep(
        dict(config, grid=grid, execution={"chunk_size": 4, "batch_size": 3}),
        progress=False,
    )
    np.testing.assert_array_equal(batched["status"].values, one["status"].values)
    assert int(one["status"].max()) == Status.SUCCESS
    for name in ("loss", "min_margin", "final_loss", "final_min_margin"):
        np.testing.assert_allclose(
            batched[name].values, one[name].values, rtol=1e-4, atol=1e-12, err_msg=name
        )
