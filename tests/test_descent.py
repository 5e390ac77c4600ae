"""Gradient descent through Optax: first-order convergence to the flow, SGD batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets


@pytest.fixture(scope="module")
def problem():
    data = datasets.orthogonally_separable(
        jax.random.key(0), 3, (4, 5, 6), 12, mu_s=0.5, mu_d=0.2, norm_range=(0.5, 1.5)
    )
    model = nc.TwoLayerReLU.init(jax.random.key(1), 12, 8, 3, 0.3)
    return data, model


def _rel(a, b):
    fa = np.concatenate([np.ravel(a.W), np.ravel(a.V)])
    fb = np.concatenate([np.ravel(b.W), np.ravel(b.V)])
    return np.linalg.norm(fa - fb) / np.linalg.norm(fb)


def test_one_step_is_explicit_euler(problem):
    data, model = problem
    gd = nc.gradient_descent(model, data, learning_rate=0.05, steps=1)
    g = nc.gradient(model, data)
    np.testing.assert_allclose(gd.final.W, model.W - 0.05 * g.W, rtol=1e-14)
    np.testing.assert_allclose(gd.final.V, model.V - 0.05 * g.V, rtol=1e-14)
    np.testing.assert_allclose(gd.ts, [0.0, 0.05])


def test_converges_to_flow_at_first_order(problem):
    data, model = problem
    T = 2.0
    flow = nc.gradient_flow(model, data, t1=T, saveat=np.array([0.0, T]), rtol=1e-12)
    errors = []
    for lr in (4e-3, 2e-3, 1e-3):
        steps = int(round(T / lr))
        gd = nc.gradient_descent(model, data, learning_rate=lr, steps=steps)
        errors.append(_rel(gd.final, flow.final))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(rates - 1.0) < 0.15), (errors, rates)
    assert errors[-1] < 1e-2


def test_save_steps_and_records(problem):
    data, model = problem
    gd = nc.gradient_descent(
        model,
        data,
        learning_rate=0.01,
        steps=50,
        save_steps=np.array([0, 10, 50]),
        record={"nW": lambda m, d: jnp.linalg.norm(m.W)},
    )
    np.testing.assert_allclose(gd.ts, [0.0, 0.1, 0.5])
    np.testing.assert_allclose(gd.records["nW"], jnp.linalg.norm(gd.models.W, axis=(1, 2)))
    ten = nc.gradient_descent(model, data, learning_rate=0.01, steps=10)
    np.testing.assert_allclose(gd.models.W[1], ten.final.W, rtol=1e-14)
    assert float(gd.loss[0]) == pytest.approx(float(nc.loss(model, data)))


def test_sgd_epoch_visits_every_sample_once(problem):
    """With lr -> one epoch of SGD on the mean loss equals sum of batch gradients."""
    data, model = problem
    n = data.num_samples  # 15 samples, batches of 4: 4 steps per epoch (4, 4, 4, 3)
    sgd = nc.gradient_descent(
        model,
        data,
        learning_rate=1e-9,
        steps=4,
        batch_size=4,
        reduction="sum",
        key=jax.random.key(5),
    )
    full = nc.gradient(model, data, reduction="sum")
    # to first order in lr, one epoch moves by -lr * (sum of all per-sample gradients)
    np.testing.assert_allclose((model.W - sgd.final.W) / 1e-9, full.W, rtol=1e-5, atol=1e-9)
    assert int(sgd.stats["grad_evals"]) == 4
    assert n == 15


def test_sgd_with_optax_momentum_runs(problem):
    data, model = problem
    out = nc.gradient_descent(
        model,
        data,
        learning_rate=0.1,
        steps=200,
        batch_size=5,
        reduction="mean",
        optimizer=optax.sgd(0.1, momentum=0.9),
    )
    assert int(out.status) == 0
    assert float(out.loss[-1]) < float(out.loss[0])


def test_vmap_over_learning_rates(problem):
    data, model = problem
    lrs = jnp.array([1e-2, 2e-2])
    batched = jax.vmap(
        lambda lr: nc.gradient_descent(model, data, learning_rate=lr, steps=20)
    )(lrs)
    single = nc.gradient_descent(model, data, learning_rate=2e-2, steps=20)
    np.testing.assert_allclose(batched.final.W[1], single.final.W, rtol=1e-12, atol=1e-15)


def test_bad_inputs(problem):
    data, model = problem
    with pytest.raises(ValueError, match="learning_rate"):
        nc.gradient_descent(model, data, learning_rate=-1.0, steps=3)
    with pytest.raises(ValueError, match="steps"):
        nc.gradient_descent(model, data, learning_rate=0.1, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        nc.gradient_descent(model, data, learning_rate=0.1, steps=3, batch_size=1000)
    with pytest.raises(ValueError, match="save_steps"):
        nc.gradient_descent(
            model, data, learning_rate=0.1, steps=3, save_steps=np.array([0, 5])
        )
    with pytest.raises(ValueError, match="binary"):
        nc.gradient_descent(model, data, learning_rate=0.1, steps=3, loss="exponential")


@pytest.mark.parametrize(
    "batch_size",
    [pytest.param(None, marks=pytest.mark.slow), pytest.param(7, marks=pytest.mark.slow)],
)
def test_row_space_descent_is_the_same_descent(batch_size):
    """With rank(X) < D, descending in the row space of X gives the full-space
    iterates up to rounding (every gradient X^T G lies in the row space), for full
    batches and minibatches; saved parameters, loss and records are for the full
    model, and the part of W outside the row space never moves."""
    data = datasets.orthogonally_separable(jax.random.key(3), 3, 20, dim=10)
    assert np.linalg.matrix_rank(np.asarray(data.x)) == 6
    model = nc.TwoLayerReLU.init(jax.random.key(4), 10, 8, 3, 1e-1)
    rec = {"w2": lambda m, d: jnp.sum(m.W**2)}
    kw = dict(learning_rate=0.05, steps=300, batch_size=batch_size, record=rec)
    full = nc.gradient_descent(model, data, **kw)
    red = nc.gradient_descent(model, data, row_space=True, **kw)
    assert int(red.status) == 0
    # the run moves the weights well away from the start, so agreement is not trivial
    moved = np.abs(np.asarray(full.final.W) - np.asarray(model.W)).max()
    assert moved > 3 * np.abs(np.asarray(model.W)).max()
    np.testing.assert_allclose(red.models.W, full.models.W, rtol=0, atol=1e-12 * moved)
    np.testing.assert_allclose(red.models.V, full.models.V, rtol=0, atol=1e-12 * moved)
    np.testing.assert_allclose(red.final.W, full.final.W, rtol=0, atol=1e-12 * moved)
    np.testing.assert_allclose(red.loss, full.loss, rtol=1e-12)
    np.testing.assert_allclose(red.records["w2"], full.records["w2"], rtol=1e-12)
    Q = np.asarray(nc.row_space_basis(data))
    P = np.eye(10) - Q @ Q.T
    W0 = np.asarray(model.W)
    assert np.max(np.abs(P @ np.asarray(red.final.W) - P @ W0)) < 1e-14


def test_row_space_descent_bad_input(problem):
    """A custom optimizer is refused (Adam is not invariant under the change of
    basis), and so is traced data."""
    data, model = problem
    with pytest.raises(ValueError, match="row_space=True needs the default optimizer"):
        nc.gradient_descent(
            model,
            data,
            learning_rate=0.1,
            steps=3,
            row_space=True,
            optimizer=optax.adam(0.1),
        )

    @jax.jit
    def traced(x):
        d = nc.Dataset(x, data.y, data.num_classes)
        return nc.gradient_descent(model, d, learning_rate=0.1, steps=3, row_space=True)

    with pytest.raises(ValueError, match="row_space=True needs concrete data"):
        traced(data.x)
