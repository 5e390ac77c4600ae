"""`ncjax reproduce normalization`: the ResNet + normalization + two-layer head runs.

The checks are structural (files, dims, one value per seed, norm and epoch) and
against independent facts: RMSNorm leaves the direction of the head's input unchanged
and LayerNorm's output is centred, so the norm statistics and the bridge's
separability follow from the definitions.
"""

import json

import numpy as np
import pytest
import xarray as xr

from neuralcollapse_jax import deep, reproduce
from neuralcollapse_jax import reproduce_config as config
from neuralcollapse_jax.cli import main as cli_main


def test_config_defaults_and_errors():
    cfg = config("normalization")
    assert cfg.arch == "small" and cfg.norms == ("none", "layernorm", "rmsnorm")
    assert cfg.seeds >= 3
    full = config("normalization", arch="resnet18", epochs=50, seeds=5)
    assert full.arch == "resnet18" and full.seeds == 5
    with pytest.raises(ValueError, match="depth is not a setting of normalization"):
        config("normalization", depth=3)


def test_bad_settings_exit_2(tmp_path, capsys):
    def run(*settings):
        argv = ["reproduce", "normalization", "--quick", "--out", str(tmp_path)]
        for item in settings:
            argv += ["--set", item]
        return cli_main(argv)

    assert run("normalization.arch=vgg") == 2
    err = capsys.readouterr().err
    assert "normalization.arch" in err and "vgg" in err
    assert run("normalization.norms=[batchnorm]") == 2
    assert run("normalization.dataset=cifar10") == 2
    assert "cifar_folder" in capsys.readouterr().err
    none = tmp_path / "none"
    assert run("normalization.dataset=cifar10", f"normalization.cifar_folder={none}") == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_one_norm_one_seed(tmp_path):
    res = reproduce(
        "normalization",
        tmp_path,
        quick=True,
        quiet=True,
        norms=["rmsnorm"],
        seeds=1,
        bridge=False,
    )
    ds = xr.open_dataset(tmp_path / "normalization.nc", engine="h5netcdf")
    assert dict(ds.sizes) == {"seed": 1, "norm": 1, "epoch": 2}
    for name in deep.MEASURES:
        assert np.all(np.isfinite(ds[name].values)), name
    # RMSNorm output with its scale at init (1): RMS of a row is 1 up to the learned
    # scale, so ||row|| is about sqrt(F) and barely varies.
    assert res["final"]["rmsnorm"]["norm_after_cv"]["mean"] < 0.5
    assert (tmp_path / "normalization.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_cli(tmp_path):
    assert (
        cli_main(
            ["reproduce", "normalization", "--quick", "--quiet", "--out", str(tmp_path)]
        )
        == 0
    )
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["final"]) == {"none", "layernorm", "rmsnorm"}
    ds = xr.open_dataset(tmp_path / "normalization.nc", engine="h5netcdf")
    assert dict(ds.sizes) == {"seed": 2, "norm": 3, "epoch": 2}
    # Without normalization the head's input is unchanged.
    np.testing.assert_allclose(
        ds.norm_before_mean.sel(norm="none"), ds.norm_after_mean.sel(norm="none")
    )
    for norm, b in res["bridge"].items():
        assert b["flow_status"].startswith("success")
        # Pooled ReLU features (none, RMSNorm: a positive rescaling once the scale is
        # positive) have non-negative cosines: Assumption 1 cannot hold.
        if norm == "none":
            assert not b["assumption1"]["holds"]
            assert b["fraction_cross_class_pairs_negative"] == 0.0


@pytest.mark.slow
def test_mnist012_steps_option(tmp_path):
    # `steps` overrides epochs x batches: the paper's 950 steps on our smaller data.
    res = reproduce("mnist012", tmp_path, quick=True, quiet=True, exact="none", steps=7)
    assert res["sgd_steps"] == 7
    assert res["t1"] == pytest.approx(0.1 * 7)
    with pytest.raises(ValueError, match="steps"):
        reproduce("mnist012", tmp_path, quick=True, quiet=True, exact="none", steps=0)
