"""Transversal crossings integrated inside the steps
(`SlidingReLU(crossings="locate", correct_crossings=True)`): the local error of a
step across a crossing against SciPy with the crossing located as an event, the
agreement with SciPy's DOP853 on a problem with crossings and no sliding (at the
save times inside steps too), the balance `||w_j||^2 - ||v_j||^2`, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import crossing_problem
from test_events import _saved, _scipy_exponential
from test_sliding import _one_step

import neuralcollapse_jax as nc
from neuralcollapse_jax import SlidingReLU


def _corrected():
    return SlidingReLU(crossings="locate", correct_crossings=True)


@pytest.mark.parametrize("frac", [0.4, 0.8])
def test_a_step_across_a_crossing_is_third_order(frac):
    """One neuron, one transversal crossing at `frac` of the step: the stages keep
    the near side and the crossing is added after the step (first- and second-order
    terms), so the local error falls like `dt^3`, against `dt` when the stages cross
    it themselves."""
    data, _, tc, exact = crossing_problem()
    dts = np.array([0.1, 0.05, 0.025])
    errors = {}
    for name, solver in (
        ("plain", SlidingReLU(crossings="locate")),
        ("corr", _corrected()),
    ):
        errors[name] = np.array(
            [
                np.linalg.norm(
                    _one_step(solver, data, exact(tc - frac * dt), tc - frac * dt, dt)
                    - exact(tc + (1 - frac) * dt)
                )
                for dt in dts
            ]
        )
    plain = np.log2(errors["plain"][:-1] / errors["plain"][1:])
    corr = np.log2(errors["corr"][:-1] / errors["corr"][1:])
    assert np.all(np.abs(plain - 1.0) < 0.2), errors
    assert np.all(corr > 2.8), errors
    assert errors["corr"][-1] < errors["plain"][-1] / 1000, errors


def _no_sliding_problem():
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(size=(6, 3))) + 0.3 * rng.normal(size=(6, 3))
    W = rng.normal(size=(3, 4)) * 0.5
    v = np.array([0.5, -0.4, 0.3, -0.6])
    return nc.TwoLayerReLU(W, v[None, :]), nc.Dataset(X, np.ones(6, int), 2), X


@pytest.mark.parametrize("rtol, bound", [(1e-7, 2e-6), (1e-9, 3e-8)])
def test_agrees_with_scipy_where_nothing_slides(rtol, bound):
    """Positively correlated points of one label, four neurons of both output signs:
    pairs cross their kinks, none slides. The crossings are located and corrected
    inside the steps (none is started, no step is shortened for one), and the flow
    agrees with SciPy's DOP853 at every save time; the balance of each neuron holds."""
    model, data, X = _no_sliding_problem()
    ts = np.linspace(0.0, 4.0, 17)
    traj = nc.gradient_flow(
        model, data, t1=4.0, saveat=ts, loss="exponential", rtol=rtol, solver=_corrected()
    )
    assert int(traj.status) == nc.Status.SUCCESS
    assert int(traj.stats["sliding_max_pairs"]) == 0
    assert int(traj.stats["crossings_located"]) >= 2
    assert int(traj.stats["crossings_started"]) == 0
    assert int(traj.stats["event_landings"]) == 0
    ref = _scipy_exponential(model, X, ts)
    err = np.linalg.norm(_saved(traj) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() < bound, err
    W, V = np.asarray(traj.models.W), np.asarray(traj.models.V)
    balance = np.sum(W * W, axis=1) - np.sum(V * V, axis=1)
    drift = np.abs(balance - balance[0]) / np.sum(W[0] ** 2 + V[0] ** 2)
    assert drift.max() < bound, drift


def test_under_jit_and_vmap():
    """`vmap` over initial output weights equals single calls."""
    model, data, _ = _no_sliding_problem()
    ts = np.array([0.0, 2.0])

    def run(scale):
        m = nc.TwoLayerReLU(model.W, model.V * scale)
        return nc.gradient_flow(
            m, data, t1=2.0, saveat=ts, loss="exponential", rtol=1e-8, solver=_corrected()
        ).final.W

    scales = np.array([1.0, 0.8])
    batched = jax.jit(jax.vmap(run))(scales)
    for k, s in enumerate(scales):
        np.testing.assert_allclose(np.asarray(batched[k]), np.asarray(run(s)), rtol=1e-10)


def test_bad_input():
    with pytest.raises(ValueError, match="correct_crossings needs crossings='locate'"):
        SlidingReLU(crossings="land", correct_crossings=True)
    # Its controller does not shorten steps before transversal crossings.
    controller = _corrected().controller(1e-6, 1e-8)
    assert isinstance(controller, nc.EventController) and controller.transversal == 0.0
    assert SlidingReLU(crossings="locate").controller(1e-6, 1e-8).transversal == 0.25


def test_crossing_times_follow_a_shift_on_a_curved_interpolant():
    """Two crossings of one neuron in one step: the first (at 0.2 of the step)
    switches a term of the neuron's equation, which moves the second pair's `z` by
    `dt <x_2, G_1> (t - t_1)`. The second crossing time is the root of its near-side
    cubic plus that shift, here a fifth of the step away from the near-side root
    where the cubic is curved; against SciPy's `brentq` on the same function. (Moved
    along the slope at the near-side root alone, it was off by 1e-2.)"""
    from scipy.optimize import brentq

    from neuralcollapse_jax._sliding_modes import _hermite, crossing_times

    dt = 0.5
    x = np.array([[1.0, 0.0], [0.8, 0.6]])
    # near-side cubics (values and slopes at the ends of the step, in step units)
    Z0 = np.array([[-0.2], [-0.5]])
    Z1 = np.array([[0.8], [0.1]])
    m0 = np.array([[1.0], [0.1]])
    m1 = np.array([[1.0], [1.5]])
    C0 = np.array([[-0.9], [-0.3]])  # c constant over the step
    jsign = np.array([[-1.0], [-1.0]])  # both cross from the inactive side
    theta0 = np.array([[0.2], [0.0]])
    p = lambda t, i: float(_hermite(t, Z0[i, 0], m0[i, 0], Z1[i, 0], m1[i, 0]))  # noqa: E731
    theta0[1, 0] = brentq(lambda t: p(t, 1), 0.0, 1.0, xtol=1e-15)
    theta0[0, 0] = brentq(lambda t: p(t, 0), 0.0, 1.0, xtol=1e-15)
    crossed = np.array([[True], [True]])
    args = (crossed, theta0, Z0, Z1, m0, m1, C0, C0, jsign, x)
    th = np.asarray(crossing_times(*map(jnp.asarray, args), dt))
    g1 = jsign[0, 0] * C0[0, 0]
    shift = lambda t: dt * (x[1] @ x[0]) * g1 * max(t - theta0[0, 0], 0.0)  # noqa: E731
    exact = brentq(lambda t: p(t, 1) + shift(t), 0.0, 1.0, xtol=1e-15)
    assert abs(exact - theta0[1, 0]) > 0.05  # the shift is large
    assert th[0, 0] == pytest.approx(theta0[0, 0], abs=1e-14)
    assert th[1, 0] == pytest.approx(exact, abs=1e-6), (th, exact, theta0)


@pytest.mark.slow
def test_mnist60_within_the_target():
    """MNIST-60 (20 test digits each of 0, 1, 2, centered, `h = 50`, std 1e-3) to
    `T = 2`, at the default tolerance: 1,292 crossings corrected inside the steps,
    253 entries into sliding. Within 2e-7 of the default solver (steps end at every
    event) at `rtol 1e-11` at every save time; the issue's target is 1e-6. Before a
    crossing that another crossing of its neuron brings about inside a step was
    located (and a neuron's crossing times followed their shifts on the cubic), it
    was 1.6e-6."""
    data = nc.datasets.mnist(per_class=20)
    model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, 50, 3, 1e-3)
    ts = np.linspace(0.0, 2.0, 6)
    ref = nc.gradient_flow(model, data, t1=2.0, saveat=ts, rtol=1e-11)
    traj = nc.gradient_flow(model, data, t1=2.0, saveat=ts, solver=_corrected())
    assert int(traj.status) == nc.Status.SUCCESS
    assert int(traj.stats["crossings_located"]) > 1000
    assert int(traj.stats["crossings_started"]) == 0
    err = np.linalg.norm(_saved(traj) - _saved(ref), axis=1) / np.linalg.norm(
        _saved(ref), axis=1
    )
    assert err.max() < 2e-7, err


def test_derivatives_are_reported_not_given():
    """Derivatives through corrected steps lack a term (against central differences
    of SciPy on `crossing_problem()`: 4.2e-4 off in `W0, V0` at `T = 2`, at any
    tolerance): forward and reverse mode raise, in every argument; values, `jit` and
    the default solver's derivatives are unaffected."""
    data, model, _, _ = crossing_problem()

    def J(W, x, t1, solver):
        d = nc.Dataset(x, data.y, data.num_classes)
        traj = nc.gradient_flow(
            nc.TwoLayerReLU(W, model.V),
            d,
            t1=t1,
            saveat=[0.0, t1],
            loss="exponential",
            solver=solver,
        )
        return jnp.sum(traj.final.W)

    x = jnp.asarray(data.x)
    value = J(model.W, x, 2.0, _corrected())
    assert np.isfinite(float(value))
    assert float(jax.jit(J, static_argnums=3)(model.W, x, 2.0, _corrected())) == float(
        value
    )
    match = "derivatives through SlidingReLU\\(correct_crossings=True\\)"
    with pytest.raises(ValueError, match=match):
        jax.grad(J)(model.W, x, 2.0, _corrected())
    with pytest.raises(ValueError, match=match):
        jax.grad(J, argnums=1)(model.W, x, 2.0, _corrected())
    with pytest.raises(ValueError, match=match):
        jax.jvp(lambda t: J(model.W, x, t, _corrected()), (2.0,), (1.0,))
    g = jax.grad(J)(model.W, x, 2.0, None)
    assert np.all(np.isfinite(np.asarray(g)))
