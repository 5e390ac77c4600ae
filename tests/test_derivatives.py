"""Derivatives through the flow, against finite differences of an independent SciPy
integrator (`problems.scipy_flow`) and closed forms."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import crossing_problem, neuron_field, scipy_flow
from scipy.integrate import solve_ivp
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expi

import neuralcollapse_jax as nc


# Steps that end before each kink event: the references' method for the default (no
# crossing is corrected there).
STEPS_END = nc.SlidingReLU(crossings="locate")


def _directions(model, x, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=np.shape(a)) for a in (model.W, model.V, x, model.W, model.V)]


def _objective(data, T, uW, uV, loss, **kwargs):
    """`J(W0, V0, X) = <uW, W(T)> + <uV, V(T)>` through `gradient_flow`."""

    def J(W, V, x):
        d = nc.Dataset(x, data.y, data.num_classes)
        tr = nc.gradient_flow(
            nc.TwoLayerReLU(W, V), d, t1=T, saveat=[T], loss=loss, **kwargs
        )
        return jnp.sum(tr.final.W * uW) + jnp.sum(tr.final.V * uV)

    return J


def _reference(data, model, T, uW, uV, loss, direction, eps):
    """Central difference of the SciPy flow's `J` along `direction` = (dW, dV, dX)."""
    D, h = model.W.shape
    W0, V0, x0 = (np.asarray(a) for a in (model.W, model.V, data.x))

    def J(s):
        dW, dV, dX = direction
        th = scipy_flow(
            W0 + s * dW, V0 + s * dV, x0 + s * dX, data.y, data.num_classes, T, loss
        )
        return np.sum(th[: D * h].reshape(D, h) * uW) + np.sum(th[D * h :] * uV.ravel())

    return (J(eps) - J(-eps)) / (2 * eps)


def _central(J, model, x, direction, e):
    """Central difference of `J(W0, V0, X)` at `(model, x)` along `direction` =
    `(dW, dV, dX)`, with step `e`."""
    dW, dV, dX = direction
    plus = J(model.W + e * dW, model.V + e * dV, x + e * dX)
    minus = J(model.W - e * dW, model.V - e * dV, x - e * dX)
    return float(plus - minus) / (2 * e)


def _check(data, model, T, loss, rtol, bound, wrt=("theta", "X"), **kwargs):
    """`jax.grad` of `J` (`_objective`) along the directions of `_directions`, against
    central differences of the SciPy flow (steps 1e-5 and 1e-6, which must agree to a
    tenth of `bound`), within `bound` relative. Returns the gradient in `(W0, V0, X)`."""
    dW, dV, dX, uW, uV = _directions(model, data.x)
    J = _objective(data, T, uW, uV, loss, rtol=rtol, **kwargs)
    g = jax.grad(J, argnums=(0, 1, 2))(model.W, model.V, jnp.asarray(data.x))
    errors = {}
    for name in wrt:
        direction = (dW, dV, 0 * dX) if name == "theta" else (0 * dW, 0 * dV, dX)
        fd = [_reference(data, model, T, uW, uV, loss, direction, e) for e in (1e-5, 1e-6)]
        # The finite differences are stable to well below the bound.
        assert abs(fd[0] - fd[1]) <= 0.1 * bound * abs(fd[1])
        ad = sum(float(np.sum(np.asarray(gi) * di)) for gi, di in zip(g, direction))
        errors[name] = abs(ad - fd[1]) / abs(fd[1])
    assert all(e <= bound for e in errors.values()), errors
    return g


def test_gradient_through_a_crossing_matches_scipy():
    """One neuron crosses one kink (at t = 1.48): the jump term of the crossing is in
    the gradient, with respect to the initial parameters and the data."""
    data, model, tc, _ = crossing_problem()
    assert tc < 2.0
    # Measured: 1.1e-7 (W0, V0) and 1.1e-8 (X) at the default rtol, 4e-8 and 9e-10 at
    # 1e-11 (the differences agree to 4e-8); 3.4e-6 and 6.8e-7 at the default before
    # the started crossing's shift had its second-order derivative terms.
    _check(data, model, 2.0, "exponential", nc.DEFAULT_RTOL, 1e-6)
    _check(data, model, 2.0, "exponential", 1e-11, 1e-6)


def test_derivative_of_a_step_that_starts_a_crossing_is_second_order():
    """One step of the default solver from `tau dt` before the crossing of the
    one-neuron problem, which it starts at the step's beginning: the Jacobian of the
    step map against central differences of SciPy's piecewise flow over the same
    interval. The shift by the near-side part is exact to first order in value, its
    derivative was first order in `tau dt` (error `0.82 tau`: 8.2e-3 and 2.5e-3 at
    `tau` 1e-2 and 3e-3); with the second-order terms' derivatives
    (`started_second_order`) it is second order (measured 7.7e-6 and 6.8e-7)."""
    data, model, tc, exact = crossing_problem()
    X = np.asarray(data.x)
    tight = dict(method="DOP853", rtol=1e-13, atol=1e-15)
    before = neuron_field(X, np.ones(2), np.array([1.0, 0.0]))
    after = neuron_field(X, np.ones(2), np.array([1.0, 1.0]))

    def flow(th, T):
        event = lambda t, th: (X @ th[:2])[1]  # noqa: E731
        event.terminal = True
        sol = solve_ivp(before, (0.0, T), th, events=event, **tight)
        assert sol.status == 1  # the crossing happens inside the step
        th_c = sol.y_events[0][0]
        return solve_ivp(after, (sol.t_events[0][0], T), th_c, **tight).y[:, -1]

    term = diffrax.ODETerm(nc.GradientField(nc.as_loss("exponential", "sum")))
    solver = nc.SlidingReLU(inner=diffrax.Tsit5(), crossings="locate")
    dt = 0.05

    def step(th):
        y = nc.TwoLayerReLU(th[:2, None], th[2:, None])
        state = solver.init(term, 0.0, dt, y, data)
        y1 = solver.step(term, 0.0, dt, y, data, state, False)[0]
        return jnp.concatenate([y1.W[:, 0], y1.V[:, 0]])

    jacobian = jax.jit(jax.jacfwd(step))
    errors = []
    for tau in (1e-2, 3e-3):
        th = exact(tc - tau * dt)
        ref = np.stack(
            [(flow(th + 1e-6 * e, dt) - flow(th - 1e-6 * e, dt)) / 2e-6 for e in np.eye(3)],
            axis=1,
        )
        errors.append(np.max(np.abs(np.asarray(jacobian(jnp.asarray(th))) - ref)))
    assert errors[0] < 3e-5, errors
    assert errors[0] / errors[1] > 6.0, errors  # 3.3 at first order, 11 at second


def test_frozen_pattern_derivative_is_wrong_there():
    """The plain solver on the regular field differentiates each step with its
    activation pattern frozen: it misses the jump term (the check above can fail),
    and a warning says so, with the default adjoint and with another, with the
    transform around the call and behind an outer `jax.jit`, in either mode."""
    data, model, _, _ = crossing_problem()
    frozen = "activation pattern frozen"
    with pytest.raises(AssertionError), pytest.warns(RuntimeWarning, match=frozen):
        _check(data, model, 2.0, "exponential", 1e-8, 0.5, solver="regular")
    _, _, _, uW, uV = _directions(model, data.x)
    args = (model.W, model.V, jnp.asarray(data.x))
    adjoint = diffrax.RecursiveCheckpointAdjoint()
    J = _objective(data, 2.0, uW, uV, "exponential", solver="regular", adjoint=adjoint)
    with pytest.warns(RuntimeWarning, match=frozen):
        jax.grad(J)(*args)
    with pytest.warns(RuntimeWarning, match=frozen):
        jax.grad(jax.jit(J))(*args)
    J = _objective(data, 2.0, uW, uV, "exponential", solver="regular")
    with pytest.warns(RuntimeWarning, match=frozen):
        jax.grad(jax.jit(J))(*args)
    with pytest.warns(RuntimeWarning, match=frozen):
        jax.jvp(jax.jit(J), args, args)


@pytest.mark.parametrize("jit", [False, True])
def test_the_sliding_solvers_derivative_carries_the_jump_terms(jit):
    """`solver="sliding"` (`crossings="land"`) leaves the crossings within its budget
    to the stages, whose derivative has no jump term: in a solve that is
    differentiated it locates them (`for_derivatives`), with the controller of
    steps that end at events. Measured on the one-neuron problem: 1.15e-7 along
    `W0, V0` and 1.1e-8 along `X`, against 3.7e-6 and 7.2e-7 before. The call
    switches where it sees the transform (also under an outer `jax.jit`); behind
    it, it cannot switch the solve's state, and the derivative raises, in either
    mode, with any adjoint."""
    data, model, _, _ = crossing_problem()
    sliding = nc.SlidingReLU()
    assert sliding.for_derivatives().crossings == "locate"
    assert isinstance(sliding.for_derivatives().controller(1e-8, 1e-9), nc.EventController)
    if not jit:
        _check(data, model, 2.0, "exponential", nc.DEFAULT_RTOL, 1e-6, solver="sliding")
        return
    _, _, _, uW, uV = _directions(model, data.x)
    args = (model.W, model.V, jnp.asarray(data.x))
    J = _objective(data, 2.0, uW, uV, "exponential", solver="sliding")
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.grad(J))(*args)), np.asarray(jax.grad(J)(*args)), rtol=1e-12
    )
    with pytest.raises(ValueError, match="behind an outer jax.jit"):
        jax.grad(jax.jit(J))(*args)
    with pytest.raises(ValueError, match="behind an outer jax.jit"):
        jax.jvp(jax.jit(J), args, args)
    adjoint = diffrax.RecursiveCheckpointAdjoint()
    J = _objective(data, 2.0, uW, uV, "exponential", solver="sliding", adjoint=adjoint)
    with pytest.raises(ValueError, match="behind an outer jax.jit"):
        jax.grad(jax.jit(J))(*args)


@pytest.mark.slow
def test_the_sliding_solvers_derivative_through_many_crossings_matches_scipy():
    """The 22 crossings of the test below with `solver="sliding"`: measured 1.0e-10
    along `W0, V0`, against 2.0e-3 when its crossings within the budget were left to
    the stages in the differentiated solve too (and 14% on the geometry example at
    `T = 0.75`, still 3% at `rtol 1e-10`)."""
    data, model = _orthogonal_problem()
    _check(
        data,
        model,
        1.0,
        "cross_entropy",
        nc.DEFAULT_RTOL,
        1e-6,
        wrt=("theta",),
        solver="sliding",
    )


def _orthogonal_problem():
    data = nc.datasets.orthogonally_separable(jax.random.key(0), 3, 4, 9, 0.5, 0.2)
    model = nc.TwoLayerReLU.init(jax.random.key(1), 9, 6, 3, scale=0.1)
    return data, model


@pytest.mark.slow
def test_gradient_through_many_crossings_matches_scipy():
    """Orthogonally separable data, 22 crossings up to T = 1, several at once (samples
    on one ray cross together): the derivative in the initial parameters, which keep
    those samples together."""
    data, model = _orthogonal_problem()
    # Measured 9e-11 at the default rtol (3.4e-6 before the started crossings' shift
    # had its second-order derivative terms).
    _check(data, model, 1.0, "cross_entropy", nc.DEFAULT_RTOL, 1e-6, wrt=("theta",))


def test_forward_mode_equals_reverse_mode():
    """Forward mode equals reverse mode, with each adjoint; and the value returned
    with a derivative is that of the solver's `for_derivatives()` (steps with a
    corrected crossing weigh its error estimate by `derivative_safety`, and no step
    is retried just past its crossing)."""
    data, model, _, _ = crossing_problem()
    dW, dV, dX, uW, uV = _directions(model, data.x)
    args = (model.W, model.V, jnp.asarray(data.x))
    tangents = tuple(jnp.asarray(a) for a in (dW, dV, dX))
    J = _objective(data, 2.0, uW, uV, "exponential")
    value, g = jax.value_and_grad(J, argnums=(0, 1, 2))(*args)
    reverse = sum(float(jnp.sum(gi * ti)) for gi, ti in zip(g, tangents))
    J_fwd = _objective(data, 2.0, uW, uV, "exponential", adjoint=diffrax.ForwardMode())
    value_fwd, forward = jax.jvp(J_fwd, args, tangents)
    assert float(forward) == pytest.approx(reverse, rel=1e-9)
    # At the defaults forward mode works too (the default adjoint sees the JVP):
    # `jax.jvp` and `jax.jacfwd` of the same J.
    value_default, forward_default = jax.jvp(J, args, tangents)
    assert float(forward_default) == pytest.approx(reverse, rel=1e-9)
    events = nc.SlidingReLU(crossings="locate", correct_crossings=True)
    assert events.for_derivatives().crossing_safety == events.derivative_safety > 1
    # ... and its controller retries no step just past a crossing (page *Sliding*),
    # but before it.
    assert events.controller(1e-8, 1e-9).past
    assert not events.for_derivatives().controller(1e-8, 1e-9).past
    assert events.for_derivatives().controller(1e-8, 1e-9).before
    J_for = _objective(data, 2.0, uW, uV, "exponential", solver=events.for_derivatives())
    plain, for_derivatives = float(J(*args)), float(J_for(*args))
    for v in (value, value_fwd, value_default):
        assert float(v) == pytest.approx(for_derivatives, rel=1e-13, abs=0)
    # The crossing's step is sized differently without a transform (so the check
    # above tells the two solves apart), both within the tolerance.
    assert plain != for_derivatives
    assert plain == pytest.approx(for_derivatives, rel=1e-6)
    jac = jax.jacfwd(J, argnums=1)(*args)
    np.testing.assert_allclose(np.asarray(jac), np.asarray(g[1]), rtol=1e-9)
    # Under an outer `jax.jit` the call does not see the JVP: the default adjoint
    # (`ForwardOrReverse`) differentiates it all the same.
    _, forward_jit = jax.jvp(jax.jit(J), args, tangents)
    assert float(forward_jit) == pytest.approx(reverse, rel=1e-9)


@pytest.mark.long
def test_checkpoints_bound_the_memory_of_reverse_mode():
    """`ForwardOrReverse(checkpoints=k)` stores `k` solver states: the compiled
    gradient's temporary memory (XLA's `memory_analysis`, no run) grows with `k`, by
    about one state per checkpoint. The gradient is the same to rounding where no
    step is recomputed (64 and 1024 checkpoints for 30 steps), also against forward
    mode; with 4 checkpoints (steps recomputed in the backward pass) within 1e-5.
    (Measured there: 2.1e-6 at the default `derivative_safety` of 3, and 0 at 2,
    2.9, 3.1 and 5 with 4 and 8 checkpoints: the recomputed steps are compiled apart
    from the forward pass and round differently, and the step-size control, whose
    error estimate of a short step is mostly rounding, turns that into another
    sequence of steps; docs page *Differentiating the flow*, *Not done yet*.)"""
    data, model, _, _ = crossing_problem()
    dW, dV, _, uW, uV = _directions(model, data.x)
    args = (model.W, model.V, jnp.asarray(data.x))

    def gradient(checkpoints):
        J = _objective(
            data,
            2.0,
            uW,
            uV,
            "exponential",
            adjoint=nc.ForwardOrReverse(checkpoints=checkpoints),
        )
        fn = jax.jit(jax.grad(J, argnums=(0, 1))).lower(*args).compile()
        return fn(*args), fn.memory_analysis().temp_size_in_bytes

    grads, memory = zip(*(gradient(k) for k in (4, 64, 1024)))
    assert memory[0] < memory[1] < memory[2]
    # Per checkpoint about the same size from 4 to 64 as from 64 to 1024 (one state
    # each; measured 327 and 442 bytes, XLA's buffer layout aside).
    per_state = [(memory[i + 1] - memory[i]) / k for i, k in enumerate((60, 960))]
    assert 0.5 <= per_state[0] / per_state[1] <= 2.0
    for a, b in zip(grads[2], grads[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=0)
    for a, b in zip(grads[0], grads[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=0)
    J_fwd = _objective(data, 2.0, uW, uV, "exponential", adjoint=diffrax.ForwardMode())
    _, forward = jax.jvp(J_fwd, args, tuple(jnp.asarray(a) for a in (dW, dV, 0 * args[2])))
    reverse = float(jnp.sum(grads[1][0] * dW) + jnp.sum(grads[1][1] * dV))
    assert float(forward) == pytest.approx(reverse, rel=1e-9)


@pytest.mark.long
def test_forward_mode_under_an_outer_jit_at_the_defaults():
    """`jax.jacfwd(jax.jit(J))` hides the forward-mode transform from
    `gradient_flow`; the default adjoint (`ForwardOrReverse`) still differentiates
    it, to rounding of the reverse-mode gradient, also under `jax.vmap`. Its reverse
    mode is `RecursiveCheckpointAdjoint`'s, to rounding."""
    data, model, _, _ = crossing_problem()
    dW, dV, dX, uW, uV = _directions(model, data.x)
    args = (model.W, model.V, jnp.asarray(data.x))
    tangents = tuple(jnp.asarray(a) for a in (dW, dV, dX))
    J = _objective(data, 2.0, uW, uV, "exponential")
    J_rca = _objective(
        data, 2.0, uW, uV, "exponential", adjoint=diffrax.RecursiveCheckpointAdjoint()
    )
    g_rca = jax.grad(J_rca, argnums=(0, 1, 2))(*args)
    g = jax.grad(J, argnums=(0, 1, 2))(*args)
    for a, b in zip(g, g_rca):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    jac = jax.jacfwd(jax.jit(J), argnums=(0, 2))(*args)
    np.testing.assert_allclose(np.asarray(jac[0]), np.asarray(g[0]), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(jac[1]), np.asarray(g[2]), rtol=1e-9)

    # Batched: one directional derivative per init scale, against single calls.
    J_scaled = jax.jit(lambda W, scale: J(scale * W, args[1], args[2]))

    def directional(scale):
        return jax.jvp(lambda W: J_scaled(W, scale), (args[0],), (tangents[0],))[1]

    scales = jnp.array([0.5, 2.0])
    batched = jax.vmap(directional)(scales)
    single = [float(directional(s)) for s in scales]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-9)
    # A derivative of the derivative is not supported: it raises.
    with pytest.raises((TypeError, NotImplementedError)):
        jax.hessian(lambda V: J(args[0], V, args[2]))(args[1])


@pytest.mark.long
def test_derivative_in_the_horizon_is_the_velocity():
    """`d L(theta(T)) / dT = -|grad L(theta(T))|^2`, after the crossing."""
    data, model, _, _ = crossing_problem()

    def final_loss(T):
        tr = nc.gradient_flow(model, data, t1=T, saveat=[T], loss="exponential")
        return nc.loss(tr.final, data, "exponential")

    T = jnp.asarray(2.0)
    final = nc.gradient_flow(model, data, t1=T, saveat=[T], loss="exponential").final
    g = nc.gradient(final, data, "exponential")
    expected = -float(jnp.sum(g.W**2) + jnp.sum(g.V**2))
    assert float(jax.grad(final_loss)(T)) == pytest.approx(expected, rel=1e-6)

    # With the default save times (no `saveat`): a traced `t1` keeps them, as the
    # same fractions of `t1`, and the last saved loss has the same derivative.
    def default_call(T):
        return nc.gradient_flow(model, data, t1=T, loss="exponential")

    assert float(jax.grad(lambda T: default_call(T).loss[-1])(T)) == pytest.approx(
        expected, rel=1e-6
    )
    ts = jax.jit(lambda T: default_call(T).ts)(T)
    np.testing.assert_allclose(ts, nc.log_times(2.0), rtol=1e-15, atol=0)
    assert float(ts[-1]) == 2.0


@pytest.mark.long
def test_gradients_of_a_vmapped_flow_equal_single_calls():
    """`jax.grad(jax.vmap(f))` and `jax.jvp(jax.vmap(f))` (the call sees the batch,
    not the derivative: the default adjoint takes it) equal the single calls. The
    first raised until 2026-12-07: the batched transpose received the cotangents
    of the unused outputs as `None`."""
    data, model, _, _ = crossing_problem()
    _, _, _, uW, uV = _directions(model, data.x)
    J = _objective(data, 2.0, uW, uV, "exponential")
    x = jnp.asarray(data.x)

    def f(s):
        return J(model.W * s, model.V, x)

    scales = jnp.asarray([1.0, 1.01])
    single = jnp.stack([jax.grad(f)(s) for s in scales])
    batched = jax.grad(lambda s: jnp.sum(jax.vmap(f)(s)))(scales)
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    _, tangent = jax.jvp(jax.vmap(f), (scales,), (jnp.ones(2),))
    np.testing.assert_allclose(tangent, single, rtol=1e-9)


@pytest.mark.long
def test_vmap_of_gradients_over_init_scales_and_seeds_equals_single_calls():
    data, _ = _orthogonal_problem()

    def final_loss(scale):
        model = nc.TwoLayerReLU.init(jax.random.key(1), 9, 6, 3, scale=scale)
        tr = nc.gradient_flow(model, data, t1=1.0, saveat=[1.0])
        return tr.loss[-1]

    scales = jnp.asarray([0.05, 0.1, 0.2])
    batched = jax.vmap(jax.grad(final_loss))(scales)
    single = jnp.stack([jax.grad(final_loss)(s) for s in scales])
    assert jnp.all(jnp.isfinite(batched))
    np.testing.assert_allclose(batched, single, rtol=1e-6)

    # Over seeds and scales together: the gradient in the scale and in the data.
    def loss_of(scale, key, x):
        model = nc.TwoLayerReLU.init(key, 9, 6, 3, scale=scale)
        d = nc.Dataset(x, data.y, 3)
        return nc.gradient_flow(model, d, t1=1.0, saveat=[1.0]).loss[-1]

    keys = jax.random.split(jax.random.key(2), 3)
    grad = jax.grad(loss_of, argnums=(0, 2))
    batched = jax.vmap(grad, in_axes=(0, 0, None))(scales, keys, data.x)
    for i in range(3):
        one = grad(scales[i], keys[i], data.x)
        np.testing.assert_allclose(batched[0][i], one[0], rtol=1e-6)
        # Batched reductions round differently, which can move an adaptive step
        # decision: the two agree to the derivative's accuracy at the default rtol
        # (about 1e-5 in X directions here), not to the last digit.
        scale = float(jnp.max(jnp.abs(one[1])))
        np.testing.assert_allclose(batched[1][i], one[1], atol=1e-4 * scale)


@pytest.mark.slow
def test_gradient_descent_reverse_mode_equals_forward_and_freezes_the_pattern():
    """Reverse mode through `gradient_descent` equals forward mode; as the step
    shrinks both tend to the derivative of the flow with each activation pattern
    frozen (the regular solver's), not to the flow's: descent's iterates do not
    depend on crossing times, so its derivative has no jump term."""
    data, model, _, _ = crossing_problem()
    dW, dV, _, uW, uV = _directions(model, data.x)
    tangents = (jnp.asarray(dW), jnp.asarray(dV))
    lr, T = 1e-3, 2.0
    steps = int(round(T / lr))

    def J(W, V):
        tr = nc.gradient_descent(
            nc.TwoLayerReLU(W, V),
            data,
            learning_rate=lr,
            steps=steps,
            loss="exponential",
            save_steps=[0, steps // 2, steps],
        )
        return jnp.sum(tr.final.W * uW) + jnp.sum(tr.final.V * uV)

    g = jax.grad(J, argnums=(0, 1))(model.W, model.V)
    reverse = sum(float(jnp.sum(gi * ti)) for gi, ti in zip(g, tangents))
    _, forward = jax.jvp(J, (model.W, model.V), tangents)
    assert float(forward) == pytest.approx(reverse, rel=1e-10)

    def J_flow(W, V, **kwargs):
        tr = nc.gradient_flow(
            nc.TwoLayerReLU(W, V), data, t1=T, saveat=[T], loss="exponential", **kwargs
        )
        return jnp.sum(tr.final.W * uW) + jnp.sum(tr.final.V * uV)

    def along(fn):
        g = jax.grad(fn, argnums=(0, 1))(model.W, model.V)
        return sum(float(jnp.sum(gi * ti)) for gi, ti in zip(g, tangents))

    frozen = along(lambda W, V: J_flow(W, V, solver="regular", rtol=1e-10))
    flow = along(J_flow)
    assert abs(reverse - frozen) <= 10 * lr * abs(frozen)
    assert abs(reverse - flow) > 0.5 * abs(flow)


@pytest.mark.long
def test_gradient_through_sliding_matches_finite_differences_of_the_flow():
    """Orthogonally separable data where three pairs enter sliding and leave it before
    T = 8 (no independent integrator slides): the gradient at rtol 1e-10 against
    central differences of the flow at rtol 1e-11, which are stable across steps."""
    data = nc.datasets.orthogonally_separable(jax.random.key(0), 3, 5, 10, 0.5, 0.2)
    model = nc.TwoLayerReLU.init(jax.random.key(1), 10, 10, 3, 1e-2)
    dW, dV, _, uW, uV = _directions(model, data.x)
    J = _objective(data, 8.0, uW, uV, "cross_entropy", rtol=1e-10)
    stats = nc.gradient_flow(model, data, t1=8.0, saveat=[8.0], rtol=1e-10).stats
    assert int(stats["sliding_entries"]) > 0 and int(stats["sliding_exits"]) > 0
    x = jnp.asarray(data.x)
    g = jax.grad(J, argnums=(0, 1))(model.W, model.V, x)
    ad = float(jnp.sum(g[0] * dW) + jnp.sum(g[1] * dV))
    J_ref = jax.jit(
        _objective(data, 8.0, uW, uV, "cross_entropy", rtol=1e-11, solver=STEPS_END)
    )
    coarse, fine = (_central(J_ref, model, x, (dW, dV, 0.0 * x), e) for e in (1e-6, 1e-7))
    assert abs(coarse - fine) <= 1e-5 * abs(fine)
    # Measured 1.2e-8 (2.9e-5 before the exact projection on the sliding set, whose
    # three samples are one point).
    assert abs(ad - fine) <= 1e-6 * abs(fine)
    # With a budget that no event exceeds, the plain solve ends no step at an event:
    # the entries are found a step late, with no jump term, and the exits are held
    # past their times. The differentiated solve ends a step at each entry all the
    # same, and keeps at most the default budget (`for_derivatives`). Measured 4.4e-9
    # (steps ending at events, `crossings="locate"`); 2.0e-2 with the budget kept.
    late = nc.SlidingReLU(crossings="locate", crossing_budget=1e6)
    stats = nc.gradient_flow(model, data, t1=8.0, saveat=[8.0], solver=late).stats
    assert int(stats["event_retries"]) == 0 and int(stats["event_landings"]) == 0
    J_late = _objective(data, 8.0, uW, uV, "cross_entropy", solver=late)
    g = jax.grad(J_late, argnums=(0, 1))(model.W, model.V, x)
    ad = float(jnp.sum(g[0] * dW) + jnp.sum(g[1] * dV))
    assert abs(ad - fine) <= 1e-6 * abs(fine)


@pytest.mark.slow
def test_gradient_on_mnist_with_entries_and_exits_matches_finite_differences():
    """MNIST digits (4 each of 0, 1, 2, width 6, T = 2) where pairs enter sliding and
    leave it: the gradient at the defaults, along the initial parameters and along the
    data, against central differences of the flow at rtol 1e-11 (no independent
    integrator slides), stable across steps. Measured: 2.5e-5 (parameters) and
    8.6e-6 (data) relative, with the differences stable to 1.6e-5."""
    data = nc.datasets.mnist(per_class=4)
    model = nc.TwoLayerReLU.init(jax.random.key(0), 784, 6, 3, 1e-2)
    T = 2.0
    stats = nc.gradient_flow(model, data, t1=T, saveat=[T]).stats
    assert int(stats["sliding_entries"]) > 0 and int(stats["sliding_exits"]) > 0
    dW, dV, dX, uW, uV = _directions(model, data.x)
    x = jnp.asarray(data.x)
    g = jax.jit(jax.grad(_objective(data, T, uW, uV, "cross_entropy"), argnums=(0, 1, 2)))(
        model.W, model.V, x
    )
    J_ref = jax.jit(
        _objective(data, T, uW, uV, "cross_entropy", rtol=1e-11, solver=STEPS_END)
    )
    for a, b, c in ((dW, dV, 0 * dX), (0 * dW, 0 * dV, dX)):
        ad = float(jnp.sum(g[0] * a) + jnp.sum(g[1] * b) + jnp.sum(g[2] * c))
        coarse, fine = (_central(J_ref, model, x, (a, b, c), e) for e in (1e-5, 1e-6))
        assert abs(coarse - fine) <= 5e-5 * abs(fine), (coarse, fine)
        assert abs(ad - fine) <= 1e-4 * abs(fine), (ad, fine)


@pytest.mark.long
def test_gradient_on_mnist_width_10_matches_most_finite_differences():
    """MNIST digits (4 each of 0, 1, 2, width 10, T = 2: 11 entries into sliding, 7
    exits, one of them forced by an entry): the gradient at the defaults along the
    initial parameters and along the data, against central differences of the flow at
    rtol 1e-12 at four steps each. Most of the four agree to 1e-5 (measured: all
    four, to 1e-6), and the gradient lies within 1e-4 of their median (measured: 1.2e-6
    along `W0, V0`, 8.7e-6 along `X`).

    Fails without the exit side of a pair that leaves sliding at a step's start being
    fixed before the entry's near-side part and the step's velocities are formed
    (1.2e-3 off along `W0, V0`: the pair counted on the side of the rounding of its
    `z`, a jump term of the wrong size)."""
    data = nc.datasets.mnist(per_class=4)
    model = nc.TwoLayerReLU.init(jax.random.key(0), 784, 10, 3, 1e-2)
    T = 2.0
    stats = nc.gradient_flow(model, data, t1=T, saveat=[T]).stats
    assert int(stats["sliding_entries"]) >= 10 and int(stats["sliding_exits"]) >= 5
    dW, dV, dX, uW, uV = _directions(model, data.x)
    x = jnp.asarray(data.x)
    g = jax.jit(jax.grad(_objective(data, T, uW, uV, "cross_entropy"), argnums=(0, 1, 2)))(
        model.W, model.V, x
    )
    J_ref = jax.jit(
        _objective(data, T, uW, uV, "cross_entropy", rtol=1e-12, solver=STEPS_END)
    )
    along = [
        (float(jnp.sum(g[0] * dW) + jnp.sum(g[1] * dV)), (dW, dV, 0.0 * dX)),
        (float(jnp.sum(g[2] * dX)), (0.0 * dW, 0.0 * dV, dX)),
    ]
    for ad, direction in along:
        fds = np.array(
            [_central(J_ref, model, x, direction, e) for e in (4e-6, 2e-6, 1e-6, 5e-7)]
        )
        mid = float(np.median(fds))
        agree = np.abs(fds - mid) <= 1e-5 * abs(mid)
        assert agree.sum() >= 3, fds
        assert abs(ad - mid) <= 1e-4 * abs(mid), (ad, fds)


@pytest.mark.slow
def test_sensitivity_to_the_init_scale_matches_scipy():
    """The worked use of the docs page: `d <u, theta(T)> / d scale`, with
    `theta(0) = scale theta_0`, against central differences of the SciPy flow along
    `theta_0` (22 crossings up to T = 1), at the default rtol."""
    data, _ = _orthogonal_problem()
    unit = nc.TwoLayerReLU.init(jax.random.key(1), 9, 6, 3, scale=1.0)
    _, _, _, uW, uV = _directions(unit, data.x)
    T, scale = 1.0, 0.1

    def J(s):
        model = nc.TwoLayerReLU.init(jax.random.key(1), 9, 6, 3, scale=s)
        tr = nc.gradient_flow(model, data, t1=T, saveat=[T])
        return jnp.sum(tr.final.W * uW) + jnp.sum(tr.final.V * uV)

    ad = float(jax.grad(J)(scale))
    model = nc.TwoLayerReLU.init(jax.random.key(1), 9, 6, 3, scale=scale)
    direction = (np.asarray(unit.W), np.asarray(unit.V), np.zeros(np.shape(data.x)))
    fd = [
        _reference(data, model, T, uW, uV, "cross_entropy", direction, e)
        for e in (1e-5, 1e-6)
    ]
    assert abs(fd[0] - fd[1]) <= 1e-7 * abs(fd[1])
    # At the default rtol: measured 7.5e-10 (1.1e-6 before the started crossings'
    # shift had its second-order derivative terms).
    assert abs(ad - fd[1]) <= 1e-6 * abs(fd[1])


def test_one_pair_sliding_derivatives_match_the_closed_form():
    """One neuron sliding on the kink of a negative point from the start (the closed-form
    case of `test_sliding.py`): `w = s E`, `v = s`, `Ei(a s(T)^2) = Ei(a s0^2) + 2 a T`
    with `a = <x_1, E>`. Implicit differentiation of that relation gives `ds(T)/ds0`,
    `ds(T)/dT` and the data derivative `grad_{x_1} s(T) = (ds/da) E` (sliding projects
    out the part of `x_1` along `x_2`); an unbalanced start `v0 != s0` is checked
    against finite differences of the reduced ODE `(s, v)' = a exp(-a s v) (v, s)`
    (SciPy). Forward mode equals reverse mode."""
    theta = np.pi / 3
    X = np.array([[1.0, 0.0], [np.cos(theta), np.sin(theta)]])
    E = np.array([np.sin(theta), -np.cos(theta)])
    a, s0, T = np.sin(theta), 0.5, 5.0

    def s_final(s, v, x, T, **kwargs):
        model = nc.TwoLayerReLU(s * jnp.asarray(E)[:, None], jnp.reshape(v, (1, 1)))
        data = nc.Dataset(x, np.array([1, 0]))
        tr = nc.gradient_flow(model, data, t1=T, saveat=[T], loss="exponential", **kwargs)
        return tr.final.W[:, 0] @ jnp.asarray(E)

    s = brentq(lambda s: expi(a * s * s) - expi(a * s0 * s0) - 2 * a * T, s0, 50.0)
    e0, e1 = np.exp(a * s0 * s0), np.exp(a * s * s)
    ds_ds0 = s * e0 / (s0 * e1)  # along (W, V) together: v = s keeps the balance
    ds_dT = a * s * np.exp(-a * s * s)
    ds_da = (2 * T + (e0 - e1) / a) * s / (2 * e1)

    def reduced(v0):
        f = lambda t, u: a * np.exp(-a * u[0] * u[1]) * np.array([u[1], u[0]])  # noqa: E731
        return solve_ivp(f, (0, T), [s0, v0], method="DOP853", rtol=1e-13, atol=1e-15).y[
            0, -1
        ]

    fd = [(reduced(s0 + h) - reduced(s0 - h)) / (2 * h) for h in (1e-4, 1e-5)]
    assert abs(fd[0] - fd[1]) <= 1e-7 * abs(fd[1])
    ds_dv0 = fd[1]

    args = (jnp.asarray(s0), jnp.asarray(s0), jnp.asarray(X), jnp.asarray(T))
    g = jax.grad(s_final, argnums=(0, 1, 2, 3))(*args)
    g_s0 = float(g[0] + g[1])
    g_v0 = float(g[1])
    np.testing.assert_allclose(g_s0, ds_ds0, rtol=1e-5)
    np.testing.assert_allclose(float(g[3]), ds_dT, rtol=1e-5)
    np.testing.assert_allclose(g_v0, ds_dv0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g[2][0]), ds_da * E, rtol=1e-5)
    # Forward mode, along v0.
    _, tangent = jax.jvp(
        lambda v: s_final(args[0], v, args[2], args[3], adjoint=diffrax.ForwardMode()),
        (args[1],),
        (jnp.asarray(1.0),),
    )
    np.testing.assert_allclose(float(tangent), g_v0, rtol=1e-9)
    # The pair starts on its kink, reported: moving x_2 across w(0) has no derivative.
    stats = nc.gradient_flow(
        nc.TwoLayerReLU(s0 * jnp.asarray(E)[:, None], jnp.array([[s0]])),
        nc.Dataset(X, np.array([1, 0])),
        t1=T,
        loss="exponential",
    ).stats
    assert int(stats["kinks_at_start"]) == 1
    assert int(stats["sliding_entries"]) == 1


@pytest.mark.parametrize("angle", [1.2, 1.5, 1.56])
def test_transversality_of_the_crossing_is_reported(angle):
    """One neuron, exponential loss, two positive points: before `x_2` becomes active
    the neuron moves along `x_1` alone (`dw/dt = v exp(-v z_1) x_1`), so `z_2` reaches
    its kink at the angle `cos(angle)` to the neuron's velocity: the reported
    `min_transversality`, which tends to 0 as the crossing turns tangential."""
    X = np.array([[1.0, 0.0], [np.cos(angle), np.sin(angle)]])
    z2 = -0.05 * np.cos(angle)  # crossed once w has moved by 0.05 along x_1
    w0 = np.array([0.6, (z2 - 0.6 * np.cos(angle)) / np.sin(angle)])
    model = nc.TwoLayerReLU(jnp.asarray(w0)[:, None], jnp.array([[0.5]]))
    data = nc.Dataset(X, np.array([1, 1]), 2)
    tr = nc.gradient_flow(model, data, t1=4.0, loss="exponential")
    assert int(tr.status) == 0
    assert int(tr.stats["crossings_started"] + tr.stats["crossings_located"]) == 1
    assert int(tr.stats["kinks_at_start"]) == 0
    reported = float(tr.stats["min_transversality"])
    np.testing.assert_allclose(reported, np.cos(angle), rtol=1e-6)
    assert float(np.asarray(tr.final.W)[:, 0] @ X[1]) > 0  # it crossed


@pytest.mark.parametrize("separate", [False, True])
def test_simultaneous_crossings_are_reported(separate):
    """One neuron, exponential loss: `x_1` active pulls the neuron towards itself, and
    `x_2`, `x_3` cross their kinks. With `x_3 = 2 x_2` (one ray) they cross at the
    same instant for every initialization: `min_event_gap` is 0, and a perturbation of
    the data that separates them has no derivative. Rotated by 0.1 rad, they cross
    apart: the gap equals SciPy's, with each crossing located as an event."""
    a = 1.2
    b = a + 0.1 if separate else a
    X = np.array([[1.0, 0.0], [np.cos(a), np.sin(a)], [2 * np.cos(b), 2 * np.sin(b)]])
    y = np.ones(3)
    th0 = np.array([0.6, -0.45, 0.5])
    model = nc.TwoLayerReLU(jnp.asarray(th0[:2])[:, None], jnp.asarray([[th0[2]]]))
    tr = nc.gradient_flow(
        model, nc.Dataset(X, np.array([1, 1, 1]), 2), t1=10.0, loss="exponential"
    )
    assert int(tr.status) == 0
    assert int(tr.stats["crossings_started"] + tr.stats["crossings_located"]) == 2
    gap = float(tr.stats["min_event_gap"])
    if not separate:
        assert gap == 0.0
        return
    tight = dict(method="DOP853", rtol=1e-13, atol=1e-15)
    active = np.array([1.0, 0.0, 0.0])
    times, th = [], th0
    for _ in range(2):  # the next crossing of an inactive pair, then switch it on
        events = []
        for k in np.flatnonzero(active == 0):
            ev = lambda t, th, k=k: X[k] @ th[:2]  # noqa: E731
            ev.terminal, ev.direction = True, 1
            events.append(ev)
        t_start = times[-1] if times else 0.0
        sol = solve_ivp(
            neuron_field(X, y, active), (t_start, 10.0), th, events=events, **tight
        )
        hit = [i for i, te in enumerate(sol.t_events) if len(te)][0]
        times.append(sol.t_events[hit][0])
        th = sol.y_events[hit][0]
        active[np.flatnonzero(active == 0)[hit]] = 1.0
    np.testing.assert_allclose(gap, times[1] - times[0], rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.12, 0.135])
def test_touch_without_crossing_is_reported(alpha):
    """One neuron, exponential loss, `x_1` (label +1) and `x_2` (label -1) active: the
    neuron's velocity turns, and `z_3 = <x_3, w>` rises towards its kink and turns back
    without crossing. `min_touch` is the closest approach `|z_3| / (|x_3| |w|)`,
    against SciPy's dense output, minimized; it tends to 0 as the touch turns
    tangential (`alpha` moves the start towards the kink)."""
    X = np.array(
        [[-0.74667419, -0.1826116], [-0.64339271, -1.42241229], [-0.3142305, 0.40015638]]
    )
    y = np.array([1.0, -1.0, 1.0])
    w0 = np.array([-1.0963585, -1.28510646]) + alpha * X[2] / (X[2] @ X[2])
    sol = solve_ivp(
        neuron_field(X, y, np.array([1.0, 1.0, 0.0])),
        (0.0, 1.0),
        np.r_[w0, 0.5],
        method="DOP853",
        rtol=1e-13,
        atol=1e-15,
        dense_output=True,
    )

    def rel(t):
        w = sol.sol(t)[:2]
        return -(X[2] @ w) / (np.linalg.norm(X[2]) * np.linalg.norm(w))

    grid = np.linspace(0.0, 1.0, 1001)
    k = int(np.argmin([rel(t) for t in grid]))
    assert 0 < k < 1000  # an interior closest approach: it turns back
    closest = minimize_scalar(
        rel, bounds=(grid[k - 1], grid[k + 1]), method="bounded", options=dict(xatol=1e-12)
    ).fun
    model = nc.TwoLayerReLU(jnp.asarray(w0)[:, None], jnp.array([[0.5]]))
    tr = nc.gradient_flow(
        model, nc.Dataset(X, np.array([1, 0, 1]), 2), t1=1.0, loss="exponential"
    )
    assert int(tr.stats["crossings_started"] + tr.stats["crossings_located"]) == 0
    np.testing.assert_allclose(float(tr.stats["min_touch"]), closest, rtol=1e-4)
    assert float(tr.stats["min_event_gap"]) == np.inf


@pytest.mark.parametrize(
    "corrected",
    [
        pytest.param(False, marks=pytest.mark.long),
        pytest.param(True, marks=pytest.mark.slow),
    ],
)
def test_sensitivity_to_the_data_geometry_matches_scipy(corrected):
    """The docs page's worked use on the data geometry: `d <u, theta(T)> / d mu_s` and
    `/ d mu_d` through `datasets.orthogonally_separable` and the flow (23 crossings up
    to T = 1), and the derivative along random directions in `theta(0)` and `X`,
    against central differences of the SciPy flow, at the default rtol: with steps
    that end at the crossings (every one started at a step's beginning; before the
    first stage of a started crossing took its far-side derivative, the `X`
    direction was off by 3e-3 here), within 1e-6; with the default (the crossings
    corrected inside the steps), within 1e-5, the bound of the issue on derivatives
    (its derivatives along the data converge more slowly with the tolerance: see
    the docs page *Differentiating the flow*)."""
    K, per, dim, T = 3, 4, 15, 1.0
    model = nc.TwoLayerReLU.init(jax.random.key(1), dim, 6, K, 0.1)
    mu = np.array([0.5, 0.2])
    solver = None if corrected else nc.SlidingReLU(crossings="locate")
    bound = 1e-5 if corrected else 1e-6

    def points(mu_s, mu_d):
        key = jax.random.key(0)
        return nc.datasets.orthogonally_separable(key, K, per, dim, mu_s, mu_d)

    data = points(*mu)
    dW, dV, dX, uW, uV = _directions(model, data.x)

    def J_geometry(mu_s, mu_d):
        d = points(mu_s, mu_d)
        tr = nc.gradient_flow(model, d, t1=T, saveat=[T], solver=solver)
        return jnp.sum(tr.final.W * uW) + jnp.sum(tr.final.V * uV)

    def reference(mu_s, mu_d):
        d = points(mu_s, mu_d)
        th = scipy_flow(model.W, model.V, d.x, d.y, K, T)
        W, V = th[: dim * 6].reshape(dim, 6), th[dim * 6 :]
        return np.sum(W * uW) + np.sum(V * uV.ravel())

    grads = jax.grad(J_geometry, argnums=(0, 1))(*mu)
    for i, g in enumerate(grads):
        fd = []
        for e in (1e-5, 1e-6):
            step = np.array([e, 0.0]) if i == 0 else np.array([0.0, e])
            fd.append((reference(*(mu + step)) - reference(*(mu - step))) / (2 * e))
        assert abs(fd[0] - fd[1]) <= 1e-7 * abs(fd[1])
        assert abs(float(g) - fd[1]) <= bound * abs(fd[1]), (i, float(g), fd)
    # At the default rtol (measured with steps ending at the crossings: mu_s 1.1e-9,
    # mu_d 1.1e-8, W0 and V0 3e-9, X 1.5e-9; before the started crossings' shift had
    # its second-order derivative terms, 2.9e-5 and 1.9e-4 along W0, V0 and X; with
    # the default: mu_s 2.0e-6, mu_d 2.9e-6, W0 and V0 1.0e-6, X 4.6e-6).
    _check(data, model, T, "cross_entropy", nc.DEFAULT_RTOL, bound, solver=solver)


@pytest.mark.slow
def test_derivatives_with_the_datas_transpose_stored(transpose_stored):
    """The geometry example's derivative along `X` (default solver, default rtol, 23
    crossings) with the data's transpose in the solve's `args`
    (`WithTranspose`, which the default call uses from `_flow.TRANSPOSE_FROM` samples
    on, on CPU; this problem has 12): the derivative in `X` reaches the data through
    the transpose too. Against central differences of the SciPy flow within 1e-5, as
    without it, and forward mode along `X` equal to reverse mode."""
    from neuralcollapse_jax import _flow
    from neuralcollapse_jax._dataset import WithTranspose

    K, per, dim, T = 3, 4, 15, 1.0
    model = nc.TwoLayerReLU.init(jax.random.key(1), dim, 6, K, 0.1)
    data = nc.datasets.orthogonally_separable(jax.random.key(0), K, per, dim, 0.5, 0.2)
    assert isinstance(_flow.solve_args(data), WithTranspose)
    g = _check(data, model, T, "cross_entropy", nc.DEFAULT_RTOL, 1e-5, wrt=("X",))
    dW, dV, dX, uW, uV = _directions(model, data.x)
    J = _objective(data, T, uW, uV, "cross_entropy")
    x = jnp.asarray(data.x)
    _, tangent = jax.jvp(lambda x: J(model.W, model.V, x), (x,), (jnp.asarray(dX),))
    reverse = float(np.sum(np.asarray(g[2]) * dX))
    assert abs(float(tangent) - reverse) <= 1e-8 * abs(reverse)


@pytest.mark.slow
def test_derivatives_along_the_data_where_crossings_share_steps():
    """The geometry example of the test above at T = 0.75, where up to three
    crossings share a step: the derivatives along `W0, V0` and along the data at the
    defaults, against central differences of the SciPy flow, within 1e-5. (With the
    steps sized for the value only, `derivative_safety=1`, the one along the data was
    1.16e-5 off: a step's derivative through a crossing inside it is one order less
    accurate than its value.)"""
    K, per, dim = 3, 4, 15
    model = nc.TwoLayerReLU.init(jax.random.key(1), dim, 6, K, 0.1)
    data = nc.datasets.orthogonally_separable(jax.random.key(0), K, per, dim, 0.5, 0.2)
    # Measured: W0, V0 5.2e-7, X 6.7e-6 (1.9e-8 and 2.3e-6 before the differentiated
    # solve's retries ended before the corrected crossings and started them).
    _check(data, model, 0.75, "cross_entropy", nc.DEFAULT_RTOL, 1e-5)


def implicit_bias_problem():
    """The docs page's second worked use: an orthogonally separable set (K = 3, 15
    points in dimension 9) made generic by a little noise, so that every class's max
    margin has a regular support and is differentiable in the points."""
    base = nc.datasets.orthogonally_separable(jax.random.key(0), 3, [4, 5, 6], 9, 0.5, 0.2)
    rng = np.random.default_rng(0)
    scale = jnp.asarray([1.0, 1.3, 1.6])[base.y][:, None]
    x = base.x * scale + 0.05 * jnp.asarray(rng.standard_normal(base.x.shape))
    data = nc.Dataset(x, base.y, 3)
    model = nc.TwoLayerReLU.init(jax.random.key(1), 9, 9, 3, 1e-4, "gaussian")
    direction = jnp.asarray(rng.standard_normal(x.shape))
    return data, model, direction


def gram_of_normalized_weights(W, V):
    """`Q = W W^T / ||theta||_F^2`: Theorem 1 predicts `Q -> sum_k s_k^2 u_k u_k^T`,
    whatever the split `g_k` of each class over its neurons."""
    return W @ W.T / (jnp.sum(W**2) + jnp.sum(V**2))


def predicted_gram(x, y):
    limit = nc.theory.predicted_limit(nc.Dataset(x, y, 3))
    return jnp.einsum("k,ka,kb->ab", limit.s**2, limit.u, limit.u)


@pytest.mark.slow
def test_implicit_bias_differentiated():
    """`dQ(t)/dX` along a direction in the data against the derivative of Theorem 1's
    limit (implicit derivatives of the class max margins), t = 10 .. 1e10: the flow's
    derivative matches central differences of the flow at rtol 1e-11 at every time,
    and its gap to the limit's derivative closes monotonically, with `1/gap` still
    growing linearly in `log t` at the end (no floor)."""
    data, model, dX = implicit_bias_problem()
    assert np.all(np.asarray(nc.theory.class_max_margins(data).differentiable))
    ts = [10.0**e for e in range(1, 11)]

    def Q(x, rtol=None):
        kw = {} if rtol is None else {"rtol": rtol, "atol": rtol}
        d = nc.Dataset(x, data.y, 3)
        tr = nc.gradient_flow(model, d, t1=ts[-1], saveat=ts, max_steps=400_000, **kw)
        return jax.vmap(gram_of_normalized_weights)(tr.models.W, tr.models.V)

    q, dq = jax.jvp(Q, (data.x,), (dX,))  # forward mode at the defaults
    q_star, dq_star = jax.jvp(lambda x: predicted_gram(x, data.y), (data.x,), (dX,))
    eps = 1e-5
    fd = (Q(data.x + eps * dX, 1e-11) - Q(data.x - eps * dX, 1e-11)) / (2 * eps)
    q, dq, q_star, dq_star, fd = map(np.asarray, (q, dq, q_star, dq_star, fd))

    def rel(a, b):
        return np.linalg.norm(a - b, axis=(-2, -1)) / np.linalg.norm(b, axis=(-2, -1))

    assert np.all(rel(dq, fd) < 1e-5), rel(dq, fd)
    value_gap = rel(q, q_star)
    gap = rel(dq, dq_star)
    assert np.all(np.diff(value_gap) < 0) and np.all(np.diff(gap) < 0), (value_gap, gap)
    slopes = np.diff(1 / gap[::3]) / np.diff(np.log(np.asarray(ts)[::3]))
    assert np.all(slopes > 0) and slopes[-1] > 0.5 * slopes[-2], slopes
    print("t, value gap, derivative gap, vs finite differences")
    for row in zip(ts, value_gap, gap, rel(dq, fd)):
        print("{:.0e}  {:.3e}  {:.3e}  {:.1e}".format(*row))
