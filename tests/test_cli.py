"""`ncjax run`: outputs, options, config files, and exit code 2 on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from neuralcollapse_jax._cli import main


SMALL = [
    "--per-class",
    "5",
    "6",
    "7",
    "--dim",
    "12",
    "--width",
    "8",
    "--t1",
    "50",
    "--num-saves",
    "20",
    "--no-progress",
]


def test_run_writes_summary_trajectory_and_plot(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
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


def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("width: 6\nt1: 20\nper_class: [4, 4, 4]\ndim: 12\nnum_saves: 5\n")
    out = tmp_path / "o"
    assert (
        main(
            ["run", "--config", str(cfg), "--t1", "10", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["t1"] == 10.0
    assert summary["options"]["width"] == 6


@pytest.mark.parametrize(
    "argv,match",
    [
        (["run", "--width", "0"], "width"),
        (["run", "--scale", "-1"], "scale"),
        (["run", "--loss", "hinge"], "loss"),
        (["run", "--mu-d", "0.9"], "mu_d"),
        (["run", "--data", "cifar"], "data"),
        (["run", "--t1", "abc"], "t1"),
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


def test_bad_config_key(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("widht: 6\n")
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "widht" in err and len(err.splitlines()) == 1


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "neuralcollapse_jax", "run", "--width", "-3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "width" in proc.stderr


@pytest.mark.slow
def test_mnist_run_defaults_to_rtol_1e5_and_the_sliding_solver(tmp_path):
    """On MNIST the default rtol is 1e-5 (1e-9 elsewhere) and `--solver auto` runs the
    sliding solver; an explicit `--rtol` wins."""
    out = tmp_path / "m"
    argv = ["run", "--data", "mnist012", "--mnist-per-class", "3", "--width", "4"]
    argv += ["--t1", "0.2", "--num-saves", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["rtol"] == 1e-5
    assert summary["status"].startswith("success")
    assert "sliding_pairs" in summary["stats"]
    assert summary["solver"] == "sliding_bosh3"
    assert main([*argv, "--rtol", "1e-6"]) == 0
    assert json.loads((out / "summary.json").read_text())["options"]["rtol"] == 1e-6
    synthetic = tmp_path / "s"
    assert main(["run", *SMALL, "--t1", "1", "--out", str(synthetic)]) == 0
    assert json.loads((synthetic / "summary.json").read_text())["options"]["rtol"] == 1e-9
