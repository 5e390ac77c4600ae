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


def test_skipped_sweeps_of_empty_slots_leave_the_inverse_exact():
    """`masked_inverse` skips the sweeps of slots that no neuron uses: each neuron's
    block of used slots is still the NumPy inverse of its Gram block (zero
    elsewhere), equal to the bit to the inverse with every pivot swept, and `vmap`
    over problems that use different slots equals one call each."""
    from neuralcollapse_jax._sliding_modes import masked_inverse, spd_inverse

    rng = np.random.default_rng(1)
    h, m, D = 3, 6, 9
    xs = rng.normal(size=(2, h, m, D))
    used = np.zeros((2, h, m), bool)
    used[0, 0, [0, 2]] = used[0, 1, [1]] = used[0, 2, [0, 1, 2]] = True  # 3 to 5 empty
    used[1] = used[0]
    used[1, 1, 5] = True  # the second problem also uses slot 5
    xs = np.where(used[..., None], xs, 0.0)
    G = np.einsum("bjmd,bjkd->bjmk", xs, xs)
    for b in range(2):
        ginv = np.asarray(masked_inverse(jnp.asarray(G[b]), jnp.asarray(used[b])))
        for j in range(h):
            u = used[b, j]
            np.testing.assert_allclose(
                ginv[j][np.ix_(u, u)], np.linalg.inv(G[b, j][np.ix_(u, u)]), rtol=1e-12
            )
            assert np.all(ginv[j][~u, :] == 0) and np.all(ginv[j][:, ~u] == 0)
        # Every pivot swept (the empty slots' identity blocks included): the same.
        eye = np.where(used[b][:, :, None], 0.0, 1.0) * np.eye(m)
        Gm = np.where(used[b][:, :, None] & used[b][:, None, :], G[b], 0.0) + eye
        full, swept = spd_inverse(jnp.asarray(Gm))
        keep = np.asarray(swept) & used[b]
        full = np.where(keep[:, :, None] & keep[:, None, :], np.asarray(full), 0.0)
        np.testing.assert_array_equal(ginv, full)
    batched = jax.vmap(masked_inverse)(jnp.asarray(G), jnp.asarray(used))
    for b in range(2):
        np.testing.assert_array_equal(
            np.asarray(batched[b]),
            np.asarray(masked_inverse(jnp.asarray(G[b]), jnp.asarray(used[b]))),
        )


def test_tied_weights_skipped_when_no_line_is_shared():
    """Without two used slots on one line `tied_weights` returns `eta` to the bit;
    batched with a problem that has a copy, each element equals its own call."""
    from neuralcollapse_jax._sliding_modes import collinear, tied_weights

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5))
    alone = np.stack([x[0], x[1], x[2]])[None]  # one neuron, three independent slots
    copy = np.stack([x[0], x[1], 2.0 * x[0]])[None]  # slot 2 on slot 0's line
    used = jnp.ones((1, 3), bool)
    eta = jnp.asarray(rng.normal(size=(2, 1, 3)))
    cs = -jnp.asarray(rng.uniform(0.5, 1.5, size=(2, 1, 3)))
    lines = jnp.stack(
        [
            collinear(jnp.asarray(np.einsum("jmd,jkd->jmk", s, s)), used)
            for s in (alone, copy)
        ]
    )
    np.testing.assert_array_equal(
        np.asarray(tied_weights(eta[0], cs[0], lines[0], 0.0)), np.asarray(eta[0])
    )
    tied = np.asarray(tied_weights(eta[1], cs[1], lines[1], 0.0))
    # The copy and its original share one weight `s = eta / c`, with their total kept.
    np.testing.assert_allclose(
        tied[0, 0] / cs[1, 0, 0], tied[0, 2] / cs[1, 0, 2], rtol=1e-13
    )
    np.testing.assert_allclose(
        tied[0, 0] * 1.0 + tied[0, 2] * 2.0, eta[1, 0, 0] + 2.0 * eta[1, 0, 2], rtol=1e-13
    )
    batched = jax.vmap(lambda e, c, lin: tied_weights(e, c, lin, 0.0))(eta, cs, lines)
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(eta[0]))
    np.testing.assert_array_equal(np.asarray(batched[1]), tied)
