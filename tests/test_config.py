"""The configuration schema: one vocabulary for `ncjax run`, `ncjax sweep` and Python."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import neuralcollapse_jax as nc
from neuralcollapse_jax.cli import main


EXAMPLES = Path(__file__).parent.parent / "examples"

# A small problem in the sections of a run (no grid): a sweep of one point.
POINT = {
    "data": {
        "generator": "orthogonally_separable",
        "data_seed": 3,
        "num_classes": 3,
        "points_per_class": [4, 5, 6],
        "dim": 12,
        "mu_d": 0.2,
    },
    "model": {"width": 6, "scale": 1e-3, "seed": 1},
    "flow": {"t1": 40.0, "rtol": 1e-6, "num_saves": 5},
    "record": ["min_margin"],
}


def test_values_from_text_take_the_key_type():
    cfg = nc.RunConfig.from_dict(
        {
            "flow": {"t1": "1e3", "rtol": "1e-6", "max_steps": "5000"},
            "model": {"width": "20", "seed": 2.0},
            "data": {"points_per_class": [3, "4"], "rotate": "false"},
        }
    )
    assert cfg.flow.t1 == 1000.0 and isinstance(cfg.flow.t1, float)
    assert cfg.flow.rtol == 1e-6 and cfg.flow.max_steps == 5000
    assert cfg.model.width == 20 and isinstance(cfg.model.width, int)
    assert cfg.model.seed == 2 and isinstance(cfg.model.seed, int)
    assert cfg.data.points_per_class == (3, 4) and cfg.data.rotate is False


def test_defaults_are_the_library_defaults():
    cfg = nc.RunConfig()
    assert cfg.flow.rtol is None and cfg.flow.atol is None  # gradient_flow's own
    assert cfg.flow.solver == "auto"
    assert cfg.data.num_classes is None  # the generator's default


@pytest.mark.parametrize(
    "config,message",
    [
        ({"flow": {"rtol": -1}}, "flow.rtol must be a positive number, got -1"),
        ({"flow": {"t1": "abc"}}, "flow.t1 must be a positive number, got 'abc'"),
        ({"model": {"width": 2.5}}, "model.width must be a positive integer, got 2.5"),
        ({"model": {"init": "xavier"}}, "model.init must be one of"),
        ({"model": {"t1": 3}}, "model.t1 is not a key of the schema (it belongs in"),
        ({"flow": {"solver": "rk4"}}, "flow.solver must be one of"),
        ({"flow": {"solver": "euler"}}, "flow.solver 'euler' gives no error estimate"),
        ({"data": {"generator": "mnist", "dim": 5}}, "data.dim is not an argument"),
        ({"flow": {"atol": 1e-9, "atol_per_scale": 1e-6}}, "flow.atol and"),
        ({"model": {"leak": 1.5}}, "model.leak must be in [0, 1)"),
        ({"record": ["nc9"]}, "record.nc9 is not a diagnostic"),
        ({"dtype": "float16"}, "dtype must be"),
        ({"flwo": {}}, "flwo is not a key of the schema"),
        ({"grid": {"scale": [1e-3]}}, "grid describes several runs"),
    ],
)
def test_errors_name_the_key(config, message):
    with pytest.raises(ValueError) as e:
        nc.RunConfig.from_dict(config)
    assert message in str(e.value)


def test_frozen_replace_and_round_trip():
    cfg = nc.RunConfig.from_dict(POINT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flow.t1 = 3.0
    assert nc.RunConfig.from_dict(cfg.to_dict()) == cfg
    changed = cfg.replace(**{"flow.t1": "5", "model.width": 3})
    assert (changed.flow.t1, changed.model.width, cfg.flow.t1) == (5.0, 3, 40.0)
    with pytest.raises(ValueError, match="flow.width"):
        cfg.replace(**{"flow.width": 3})
    # sections built directly are checked as well
    with pytest.raises(ValueError, match="model.scale"):
        nc.RunConfig(model=nc.ModelConfig(scale=0.0))


def test_sweep_config_reads_the_same_sections():
    point = nc.SweepConfig(POINT)
    assert point.num_runs == 1
    (params,) = point.run_params()
    assert params == nc.RunConfig.from_dict(POINT).flat()
    with pytest.raises(ValueError, match="flow.rtol must be a positive number"):
        nc.SweepConfig({**POINT, "flow": {"rtol": -1}})


@pytest.mark.slow
def test_the_same_file_runs_under_run_and_sweep(tmp_path):
    """A file of a run's sections is also a sweep of one point: the same numbers."""
    path = tmp_path / "point.yaml"
    path.write_text(yaml.safe_dump(POINT))
    out = tmp_path / "run"
    assert main(["run", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    result = tmp_path / "point.nc"
    assert main(["sweep", str(path), "-o", str(result), "--no-progress"]) == 0
    ds = nc.load_sweep(result)
    assert int(ds["status"]) == 0 and summary["status_code"] == 0
    assert int(ds["num_steps"]) == summary["num_steps"]
    assert float(ds["final_loss"]) == summary["final_loss"]
    assert float(ds["final_min_margin"]) == summary["final"]["min_margin"]


def test_cli_set_is_the_file_key(tmp_path, capsys):
    path = tmp_path / "point.yaml"
    path.write_text(yaml.safe_dump({**POINT, "model": {"width": 9}}))
    argv = ["run", "--config", str(path), "--show-config"]
    assert main([*argv, "--set", "model.width=9"]) == 0
    from_set = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == from_set
    assert yaml.safe_load(from_set)["model"]["width"] == 9
    assert main([*argv, "--width", "7", "--set", "data.points_per_class=[1,2,3]"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["width"] == 7
    assert shown["data"]["points_per_class"] == [1, 2, 3]


def test_cli_switching_the_generator_starts_from_its_defaults(capsys):
    """`--set data.generator=...` drops the default problem's data arguments that the
    new generator does not take; arguments given by flags stay, and a wrong one is
    refused by name."""
    argv = ["run", "--show-config", "--set", "data.generator=mnist"]
    assert main([*argv, "--set", "data.per_class=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["data"]
    assert shown == {"generator": "mnist", "digits": None, "per_class": 3, "center": None}
    # A data argument set before the switch is the user's: refused, not dropped.
    bad = ["run", "--show-config", "--set", "data.points_per_class=5"]
    assert main([*bad, "--set", "data.generator=mnist"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "data.points_per_class is not an argument of the mnist generator" in err
    # The arguments the new generator shares with the old one are kept.
    assert main(["run", "--show-config", "--set", "data.generator=block_orthogonal"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["data"]
    assert shown["points_per_class"] == [20, 30, 40] and "mu_s" not in shown


def test_default_run_is_the_example_file(capsys):
    assert main(["run", "--show-config"]) == 0
    default = capsys.readouterr().out
    assert main(["run", "--config", str(EXAMPLES / "run.yaml"), "--show-config"]) == 0
    assert capsys.readouterr().out == default


def test_sweep_set_and_execution_flags(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**POINT, "grid": {"seed": [0, 1]}}))
    argv = ["sweep", str(path), "--check"]
    assert main([*argv, "--set", "grid.scale=[1e-3, 1e-2]"]) == 0
    assert capsys.readouterr().out.startswith("4 runs")
    assert main([*argv, "--chunk-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "execution.chunk_size" in err
    assert main([*argv, "--set", "flow.rtol=-1"]) == 2
    assert "flow.rtol must be a positive number" in capsys.readouterr().err
