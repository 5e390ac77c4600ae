"""`ncjax run`: outputs, options, config files, and exit code 2 on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import neuralcollapse_jax as nc
from neuralcollapse_jax.cli import main


SMALL = [
    "--set",
    "data.points_per_class=[5, 6, 7]",
    "--set",
    "data.dim=12",
    "--width",
    "8",
    "--t1",
    "50",
    "--set",
    "flow.num_saves=20",
    "--no-progress",
]


def test_run_writes_summary_trajectory_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # The summary line reports the kink events the default solver located, as in
    # the stored statistics.
    line = capsys.readouterr().out.strip().splitlines()[-1]
    stats = summary["stats"]
    crossings = stats["crossings_located"] + stats["crossings_started"]
    assert crossings > 0
    assert f"events: {crossings} kink crossings" in line, line
    assert f"{stats['event_retries']} steps retried" in line, line
    for key in ("final_loss", "t1", "num_steps", "grad_evals", "wall_time_s", "status"):
        assert key in summary
    assert summary["status"].startswith("success")
    assert summary["t1"] == 50.0
    assert summary["final_loss"] < summary["initial_loss"]
    ds = xr.open_dataset(out / "trajectory.nc", engine="h5netcdf")
    assert ds["W"].shape == (21, 12, 8) and ds["V"].shape == (21, 3, 8)
    assert float(ds["time"][-1]) == 50.0
    # the stored trajectory reproduces the summary's final loss
    assert float(ds["loss"][-1]) == pytest.approx(summary["final_loss"], rel=1e-12)
    assert (out / "flow.png").stat().st_size > 10_000
    assert np.all(np.isfinite(ds["W"].values))


def test_a_run_that_stops_early_exits_1_and_says_where(tmp_path, capsys):
    # The final model of a run that ran out of steps lies before t1: the summary
    # line said "at t = t1" before.
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--set", "flow.max_steps=3", "--out", str(out)]) == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("max_steps reached"), line
    assert "where the run stopped, before t = 50 (past the save time t = " in line, line
    assert "at t = 50" not in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status_code"] == 1


@pytest.mark.slow
def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data: {points_per_class: [4, 4, 4], dim: 12}\n"
        "model: {width: 6}\n"
        "flow: {t1: 20, num_saves: 5}\n"
    )
    out = tmp_path / "o"
    argv = ["run", "--config", str(cfg), "--t1", "10", "--out", str(out), "--no-progress"]
    assert main([*argv, "--set", "model.width=7"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["t1"] == 10.0
    assert summary["options"]["model"]["width"] == 7
    assert (summary["n"], summary["D"]) == (12, 12)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["run", "--width", "0"], "model.width"),
        (["run", "--scale", "-1"], "model.scale"),
        (["run", "--loss", "hinge"], "flow.loss"),
        (["run", "--set", "data.mu_d=0.9"], "mu_d"),
        (["run", "--data", "cifar"], "data"),
        (["run", "--t1", "abc"], "flow.t1"),
        (["run", "--set", "flow.rtol=-1"], "flow.rtol must be a positive number"),
        (["run", "--set", "flow.widht=3"], "flow.widht"),
        (["run", "--set", "model.t1=3"], "belongs in 'flow'"),
        (["run", "--set", "data.block_dim=3"], "data.block_dim"),
        (["run", "--set", "flow.solver=rk4"], "flow.solver"),
        (["run", "--set", "flow.solver=euler"], "flow.solver 'euler' gives no error"),
        (["run", "--set", "t1"], "SECTION.KEY=VALUE"),
        (["run", "--loss", "exponential"], "binary"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        code = main([*argv, "--out", str(tmp_path / "x"), "--no-progress"])
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "x").exists()  # refused before the output folder


def test_bad_config_key(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {widht: 6}\n")
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.widht" in err and len(err.splitlines()) == 1
    cfg.write_text("model: {width: 6}\ngrid: {seed: [0, 1]}\n")
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "grid" in err and "ncjax sweep" in err and len(err.splitlines()) == 1


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "neuralcollapse_jax", "run", "--width", "-3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "width" in proc.stderr
    version = subprocess.run(
        [sys.executable, "-m", "neuralcollapse_jax", "--version"],
        capture_output=True,
        text=True,
    )
    assert version.returncode == 0
    assert version.stdout.strip() == f"ncjax (neuralcollapse_jax) {nc.__version__}"


@pytest.mark.slow
def test_float32_run_warns_of_nothing(tmp_path):
    """`ncjax run --dtype float32` runs with JAX's float64 off (in its own process):
    nothing in it asks JAX for float64 (JAX would warn, and round to float32)."""
    out = tmp_path / "f32"
    argv = ["run", "--dtype", "float32", "--set", "data.points_per_class=[3,3,3]"]
    argv += ["--width", "4", "--t1", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-m", "neuralcollapse_jax", *argv],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"].startswith("success")
    assert summary["options"]["dtype"] == "float32"


@pytest.mark.slow
def test_mnist_run_uses_the_library_defaults(tmp_path):
    """On MNIST `ncjax run` passes no rtol of its own (the flow's default), `auto`
    picks the located sliding solver, and an explicit `flow.rtol` is passed on."""
    out = tmp_path / "m"
    argv = ["run", "--data", "mnist012", "--set", "data.per_class=3", "--width", "4"]
    argv += ["--set", "flow.num_saves=4", "--no-progress", "--out", str(out)]
    assert main([*argv, "--t1", "0.05"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["flow"]["rtol"] is None
    assert summary["status"].startswith("success")
    assert summary["solver"] == "events"
    assert (summary["n"], summary["D"], summary["K"]) == (9, 784, 3)
    assert main([*argv, "--t1", "0.2", "--rtol", "1e-5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["flow"]["rtol"] == 1e-5
    assert summary["solver"] == "events" and "sliding_pairs" in summary["stats"]
