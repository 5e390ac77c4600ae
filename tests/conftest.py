import jax


# Tests run in float64 with strict promotion (as Diffrax's and Equinox's suites do).
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic within a test."""
    counter = iter(range(10**6))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
