import jax


# Tests run in float64 with strict promotion (as Diffrax's and Equinox's suites do).
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. A test worker runs many
    modules in one process; without this it keeps every program it ever compiled, and
    its memory grows through the run."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic within a test."""
    counter = iter(range(10**6))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey


@pytest.fixture
def transpose_stored(monkeypatch):
    """The solve's `args` hold the data's transpose whatever the number of samples
    (the default stores it from `_flow.TRANSPOSE_FROM` samples on, on CPU; the test
    problems are smaller). The constant is read when the solve is traced: the
    compiled programs are dropped before and after."""
    from neuralcollapse_jax import _flow

    monkeypatch.setattr(_flow, "TRANSPOSE_ONCE", True)
    jax.clear_caches()
    yield
    jax.clear_caches()
