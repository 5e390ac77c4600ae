"""The Ray backend gives the same output as the local one (local Ray instance)."""

import numpy as np
import pytest

import neuralcollapse_jax as nc


ray = pytest.importorskip("ray")

CONFIG = {
    "name": "ray",
    "data": {
        "generator": "orthogonally_separable",
        "num_classes": 3,
        "points_per_class": 3,
        "dim": 9,
    },
    "model": {"width": 5, "init": "lecun"},
    "flow": {"t1": 20.0, "rtol": 1e-6, "num_saves": 6},
    "grid": {"scale": [1e-4, 1e-2], "mu_d": [0.1, 0.3], "seed": [0, 1]},
    "record": ["min_margin", "separated"],
    "execution": {"chunk_size": 3},
}


@pytest.fixture(scope="module")
def ray_instance():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.mark.long
def test_ray_backend_equals_local(ray_instance, tmp_path):
    local = nc.sweep(CONFIG, progress=False)
    remote = nc.sweep(CONFIG, tmp_path / "ray.nc", backend="ray", progress=False)
    assert set(remote.data_vars) == set(local.data_vars)
    for name in list(local.data_vars) + list(local.coords):
        assert remote[name].dims == local[name].dims
        np.testing.assert_array_equal(remote[name].values, local[name].values, err_msg=name)
    np.testing.assert_array_equal(
        nc.load_sweep(tmp_path / "ray.nc")["loss"].values, local["loss"].values
    )
    assert np.all(local["status"].values == 0)
