"""`rare_cond`: a branch that stays a branch under `vmap`."""

import jax
import jax.numpy as jnp
import numpy as np

from neuralcollapse_jax._batching import rare_cond


def _counted(calls):
    def rare(x):
        jax.debug.callback(lambda: calls.append(1))
        return 2.0 * x + 1.0

    def common(x):
        return -x

    return rare, common


def test_rare_cond_equals_lax_cond_and_skips_the_rare_branch_under_vmap():
    x = jnp.arange(4.0)
    for pred in ([False] * 4, [False, True, False, True], [True] * 4):
        pred = jnp.array(pred)
        calls = []
        rare, common = _counted(calls)
        got = jax.jit(jax.vmap(lambda p, x: rare_cond(p, rare, common, x)))(pred, x)
        want = jnp.where(pred, 2.0 * x + 1.0, -x)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        jax.effects_barrier()
        # The rare branch runs only when some element of the batch takes it.
        assert bool(calls) == bool(np.any(np.asarray(pred))), (pred, calls)
    # (`lax.cond` batches into a select of both branches: its rare branch runs
    # for an all-false batch too.)
    calls = []
    rare, common = _counted(calls)
    jax.vmap(lambda p, x: jax.lax.cond(p, rare, common, x))(jnp.zeros(4, bool), x)
    jax.effects_barrier()
    assert calls


def test_rare_cond_unbatched_and_differentiated():
    rare, common = (lambda x: jnp.sin(x)), (lambda x: x**2)
    for p in (True, False):
        want = jax.grad(lambda x: jax.lax.cond(p, rare, common, x))(0.3)
        got = jax.grad(lambda x: rare_cond(jnp.asarray(p), rare, common, x))(0.3)
        assert float(got) == float(want)
        _, t = jax.jvp(lambda x: rare_cond(jnp.asarray(p), rare, common, x), (0.3,), (1.0,))
        assert float(t) == float(want)
