"""Transversal crossings integrated inside the steps
(`SlidingReLU(crossings="locate", correct_crossings=True)`): the local error of a
step across a crossing against SciPy with the crossing located as an event, the
agreement with SciPy's DOP853 on a problem with crossings and no sliding (at the
save times inside steps too), the balance `||w_j||^2 - ||v_j||^2`, and bad input."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import crossing_problem
from test_events import _saved, _scipy_exponential
from test_sliding import _one_step, _step_map

import neuralcollapse_jax as nc
from neuralcollapse_jax import SlidingReLU


def _corrected():
    return SlidingReLU(crossings="locate", correct_crossings=True)


# Steps that end before each kink event: the references' method (no crossing is
# corrected there).
STEPS_END = SlidingReLU(crossings="locate")


@pytest.mark.parametrize("frac", [0.4, 0.8])
def test_a_step_across_a_crossing_is_fourth_order(frac):
    """One neuron, one transversal crossing at `frac` of the step: the stages keep
    the near side and the crossing is added after the step (terms to third order),
    so the local error falls like `dt^4`, against `dt` when the stages cross it
    themselves (measured orders 3.90, 3.95 at 40% and 3.72, 3.83 at 80%; third order
    before the third-order terms, `c` on its cubic and the field's curvature)."""
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
    assert np.all(corr > 3.5), errors
    assert errors["corr"][-1] < errors["plain"][-1] / 10_000, errors


@pytest.mark.parametrize("frac, at", [(0.4, 0.7), (0.8, 0.9)])
def test_dense_output_across_a_crossing_is_third_order(frac, at):
    """The same step, its dense output at `at` of the step, past the crossing at
    `frac`: the correction's higher-order parts grow from the crossing's time as
    the response to a jump does (by `(s - theta)^2` and `(s - theta)^3`, and the
    activations' part of the `V`-correction pair by pair), so the error inside the
    step falls like `dt^3` (measured 3.00, 2.99 at 40%, 70%; 2.98, 2.99 at 80%,
    90%). Ramped linearly from the step's start it fell like `dt^2` and was 120 to
    1000 times larger at `dt = 0.025`."""
    data, _, tc, exact = crossing_problem()
    solver = _corrected()
    term = diffrax.ODETerm(nc.vector_field("exponential", None))
    errors = []
    for dt in (0.1, 0.05, 0.025):
        t0 = tc - frac * dt
        y0 = exact(t0)
        model = nc.TwoLayerReLU(jnp.asarray(y0[:2])[:, None], jnp.asarray([[y0[2]]]))
        state = solver.init(term, t0, t0 + dt, model, data)
        _, _, dense, _, _ = solver.step(term, t0, t0 + dt, model, data, state, False)
        y = solver.interpolation_cls(t0=t0, t1=t0 + dt, **dense).evaluate(t0 + at * dt)
        got = np.concatenate([np.ravel(y.W), np.ravel(y.V)])
        errors.append(np.linalg.norm(got - exact(t0 + at * dt)))
    errors = np.array(errors)
    orders = np.log2(errors[:-1] / errors[1:])
    assert np.all(orders > 2.7), errors
    assert errors[-1] < 5e-7, errors


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


def test_a_step_rejected_for_its_crossing_is_retried_just_past_it():
    """One neuron crossing one kink (`crossing_problem`, reference SciPy on each
    smooth piece). The step over the crossing fails the error test for the
    crossing's error; the PID alone retried it to end before the crossing and took
    the crossing in a long step again, seven rejections and 32 steps for one
    crossing. Now the retry ends just past the crossing (its error falls as the cube
    of the part after it) and passes: measured 20 steps, 3 rejected, one of them
    retried past the crossing, 3.8e-9 from the exact flow at `T = 2`."""
    data, model, tc, exact = crossing_problem()
    ts = np.array([0.5 * tc, tc, 2.0])
    traj = nc.gradient_flow(model, data, t1=2.0, saveat=ts, loss="exponential")
    assert int(traj.status) == nc.Status.SUCCESS
    assert int(traj.stats["crossings_located"]) == 1
    assert int(traj.stats["event_retries_past"]) == 1
    assert int(traj.stats["num_rejected_steps"]) <= 4
    assert int(traj.stats["num_steps"]) <= 24
    ref = np.stack([exact(t) for t in ts])
    err = np.linalg.norm(_saved(traj) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() < 1e-7, err


def test_a_differentiated_solve_starts_the_crossings_at_its_steps_starts():
    """In a solve that is differentiated (`for_derivatives`) a step failed by its
    corrected crossings is retried to end just before the first of them, which the
    next step starts with its jump term exact (a crossing at the end of a long step,
    where the retry just past it puts it, has a less accurate derivative). On the
    one-neuron problem the crossing is started, not corrected, and the flow is as
    exact as without a transform (measured 1.4e-9 both)."""
    data, model, tc, exact = crossing_problem()
    ts = np.array([0.5 * tc, tc, 2.0])
    solver = SlidingReLU(crossings="locate", correct_crossings=True).for_derivatives()
    traj = nc.gradient_flow(
        model, data, t1=2.0, saveat=ts, loss="exponential", solver=solver
    )
    assert int(traj.status) == nc.Status.SUCCESS
    assert int(traj.stats["crossings_started"]) == 1
    assert int(traj.stats["crossings_located"]) == 0
    ref = np.stack([exact(t) for t in ts])
    err = np.linalg.norm(_saved(traj) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() < 1e-7, err


def test_a_differentiated_solve_takes_about_the_steps_of_the_plain_one():
    """Orthogonally separable data with many crossings (`benchmarks/bench_grad.py`'s
    problem, `T = 30`): the differentiated solve retries steps to end before their
    corrected crossings and starts them, in about the steps of the plain solve
    (measured 145 against 135 with these save times; with the one save time of
    the benchmark 139 against 132, and 205 when the PID alone retried those steps,
    to end well before the crossings, and took them in a long step again), with
    the plain solve's values within the tolerance (measured 2.7e-9 apart)."""
    data = nc.datasets.orthogonally_separable(jax.random.PRNGKey(0), 3, 5, 10, 0.5, 0.2)
    model = nc.TwoLayerReLU.init(jax.random.PRNGKey(1), 10, 10, 3, 1e-2)
    solver = SlidingReLU(crossings="locate", correct_crossings=True)
    ts = np.linspace(0.0, 30.0, 7)
    runs = [
        nc.gradient_flow(model, data, t1=30.0, saveat=ts, solver=s)
        for s in (solver, solver.for_derivatives())
    ]
    plain, differentiated = runs
    assert all(int(r.status) == nc.Status.SUCCESS for r in runs)
    assert int(differentiated.stats["event_retries_past"]) >= 1
    assert int(differentiated.stats["crossings_started"]) >= 1
    steps = [int(r.stats["num_steps"]) for r in runs]
    assert steps[1] <= 1.15 * steps[0], steps
    a, b = _saved(plain), _saved(differentiated)
    err = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert err.max() < 1e-7, err


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


def _every_step(model, data, solver, controller):
    # `(ends, W, stats)`: the ends of the accepted steps of the exponential-loss flow
    # to `T = 4` with `solver` and `controller`, and `W` there.
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(nc.vector_field("exponential", None)),
        solver,
        0.0,
        4.0,
        None,
        model,
        args=data,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(steps=True),
        max_steps=4096,
    )
    keep = np.isfinite(np.asarray(sol.ts))
    return np.asarray(sol.ts)[keep], np.asarray(sol.ys.W)[keep], sol.stats


def test_steps_end_at_the_save_times():
    """With `correct_crossings=True` the controller ends steps at the times it is
    given (`gradient_flow` gives its save times): each is a step's end, exactly;
    without them, steps end elsewhere. The default solver's controller takes none."""
    model, data, _ = _no_sliding_problem()
    solver = _corrected()
    ts = np.linspace(0.0, 4.0, 17)
    ends = {}
    for name, step_ts in (("free", None), ("save", ts)):
        controller = solver.controller(1e-8, 1e-10, step_ts=step_ts)
        ends[name] = _every_step(model, data, solver, controller)[0]
    assert all(np.any(ends["save"] == s) for s in ts[1:])
    assert not all(np.any(ends["free"] == s) for s in ts[1:])
    # (A cut step is followed by the PI controller's growth from it: at most about a
    # step more per cut; measured 74 steps against 59 for 16 cuts.)
    assert len(ends["save"]) <= len(ends["free"]) + len(ts), ends
    plain = SlidingReLU(crossings="locate").controller(1e-8, 1e-10, step_ts=ts)
    assert plain.step_ts is None


def _many_crossings_problem():
    # As above, with more samples and neurons: 32 crossings by `T = 4`, several in
    # one step at loose tolerances, none slides.
    rng = np.random.default_rng(7)
    X = np.abs(rng.normal(size=(12, 3))) + 0.3 * rng.normal(size=(12, 3))
    W = rng.normal(size=(3, 8)) * 0.5
    v = np.array([0.5, -0.4, 0.3, -0.6, 0.45, -0.35, 0.55, -0.5])
    return nc.TwoLayerReLU(W, v[None, :]), nc.Dataset(X, np.ones(12, int), 2), X


def _sign_changes_per_step(solver, rtol):
    # Integrates the problem above with `solver`, saving every step's end; returns the
    # number of pairs `(i, j)` whose `z_ij` changed sign inside each accepted step,
    # with the statistics. (Not counted: a pair that a step ended just before, which
    # the next step starts at its beginning, `|z|` there under 1% of its change.)
    model, data, X = _many_crossings_problem()
    _, W, stats = _every_step(model, data, solver, solver.controller(rtol, 1e-12))
    Z = np.einsum("nd,tdh->tnh", X, W)
    Z = np.concatenate([(X @ np.asarray(model.W))[None], Z])
    inside = np.abs(Z[:-1]) > 0.01 * np.abs(Z[1:] - Z[:-1])
    return np.sum(((Z[1:] > 0) != (Z[:-1] > 0)) & inside, axis=(1, 2)), stats


def test_a_step_corrects_at_most_crossing_limit_crossings():
    """A step that holds more crossings than `crossing_limit` is retried to end
    before the next one: no accepted step changes more signs of `z` (counted from
    the saved steps, not from the solver's statistics); without the limit some step
    changes several. The result still agrees with SciPy."""
    free, _ = _sign_changes_per_step(_corrected(), 1e-5)
    assert free.max() >= 2, free
    limited, stats = _sign_changes_per_step(
        SlidingReLU(crossings="locate", correct_crossings=True, crossing_limit=1), 1e-5
    )
    assert limited.max() == 1, (limited, free)
    assert int(stats["num_rejected_steps"]) > 0
    model, data, X = _many_crossings_problem()
    ts = np.linspace(0.0, 4.0, 9)
    solver = SlidingReLU(crossings="locate", correct_crossings=True, crossing_limit=1)
    traj = nc.gradient_flow(
        model, data, t1=4.0, saveat=ts, loss="exponential", rtol=1e-7, solver=solver
    )
    ref = _scipy_exponential(model, X, ts)
    err = np.linalg.norm(_saved(traj) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() < 2e-6, err


def test_a_crossing_limit_under_vmap_and_in_float32():
    """With a limit of one crossing a step (its retries and shortened steps taken by
    some elements of the batch and not others), `vmap` over output-weight scales
    equals single calls; in float32 the run is within 1e-5 of float64."""
    model, data, _ = _many_crossings_problem()
    solver = SlidingReLU(crossings="locate", correct_crossings=True, crossing_limit=1)
    ts = np.array([0.0, 2.0])

    def run(scale, m=model, d=data, rtol=1e-6):
        m = nc.TwoLayerReLU(m.W, m.V * scale)
        return nc.gradient_flow(
            m, d, t1=2.0, saveat=ts, loss="exponential", rtol=rtol, solver=solver
        ).final.W

    scales = np.array([1.0, 0.8])
    batched = jax.jit(jax.vmap(run))(scales)
    for k, s in enumerate(scales):
        np.testing.assert_allclose(np.asarray(batched[k]), np.asarray(run(s)), rtol=1e-10)
    m32 = nc.TwoLayerReLU(*(jnp.asarray(a, jnp.float32) for a in (model.W, model.V)))
    W32 = run(1.0, m32, data.astype(jnp.float32), 1e-5)
    assert W32.dtype == jnp.float32
    W64 = np.asarray(run(1.0))
    assert np.max(np.abs(np.asarray(W32) - W64)) < 1e-5 * np.max(np.abs(W64))


@pytest.mark.slow
def test_derivatives_with_a_crossing_limit_match_scipy():
    """With a limit of one crossing a step (retried and shortened steps throughout),
    reverse-mode derivatives along the initial parameters and the data match central
    differences of SciPy's flow with its crossings located."""
    from test_derivatives import _check

    model, data, _ = _many_crossings_problem()
    solver = SlidingReLU(crossings="locate", correct_crossings=True, crossing_limit=1)
    _check(data, model, 4.0, "exponential", nc.DEFAULT_RTOL, 1e-5, solver=solver)


def test_crossings_beyond_the_limit():
    """`beyond_first` against a sort: the pairs later than the `count`-th by time,
    ties with it kept."""
    from neuralcollapse_jax._sliding import beyond_first

    rng = np.random.default_rng(3)
    theta = rng.uniform(size=(40, 7))
    theta[5, :3] = theta[9, 0]  # ties
    mask = rng.uniform(size=(40, 7)) < 0.5
    mask[5, :3] = mask[9, 0] = True
    order = np.sort(theta[mask])
    tie = int(np.searchsorted(order, theta[9, 0])) + 1
    for count in (1, 5, tie, order.size - 1, order.size, 500):
        got = np.asarray(beyond_first(jnp.asarray(mask), jnp.asarray(theta), count))
        want = mask & (theta > order[count - 1]) if count <= order.size else 0 * mask
        np.testing.assert_array_equal(got, want.astype(bool))
    assert np.sum(np.asarray(beyond_first(jnp.asarray(mask), jnp.asarray(theta), tie))) == (
        order.size - tie - 3
    )


def test_bad_input():
    with pytest.raises(ValueError, match="correct_crossings needs crossings='locate'"):
        SlidingReLU(crossings="land", correct_crossings=True)
    with pytest.raises(ValueError, match="crossing_limit must be a positive integer"):
        SlidingReLU(crossings="locate", correct_crossings=True, crossing_limit=0)
    for name in ("crossing_safety", "derivative_safety"):
        for bad in (0.0, -1.0, float("inf"), "3"):
            with pytest.raises(ValueError, match=f"{name} must be a positive number"):
                SlidingReLU(**{name: bad})
    # Its controller does not shorten steps before transversal crossings.
    controller = _corrected().controller(1e-6, 1e-8)
    assert isinstance(controller, nc.EventController) and controller.transversal == 0.0
    assert SlidingReLU(crossings="locate").controller(1e-6, 1e-8).transversal == 0.25


def _two_crossings_of_one_neuron(C0, C1, x2):
    """Near-side cubics of two pairs of one neuron crossing in one step (the first
    at 0.2 of it), `c` linear over the step from `C0` to `C1`."""
    from scipy.optimize import brentq

    from neuralcollapse_jax._sliding_modes import _hermite

    x = np.array([[1.0, 0.0], x2])
    # near-side cubics (values and slopes at the ends of the step, in step units)
    Z0 = np.array([[-0.2], [-0.5]])
    Z1 = np.array([[0.8], [0.1]])
    m0 = np.array([[1.0], [0.1]])
    m1 = np.array([[1.0], [1.5]])
    jsign = np.array([[-1.0], [-1.0]])  # both cross from the inactive side
    p = lambda t, i: float(_hermite(t, Z0[i, 0], m0[i, 0], Z1[i, 0], m1[i, 0]))  # noqa: E731
    theta0 = np.array([[brentq(lambda t: p(t, i), 0.0, 1.0, xtol=1e-15)] for i in (0, 1)])
    crossed = np.array([[True], [True]])
    args = (crossed, theta0, Z0, Z1, m0, m1, np.array(C0), np.array(C1), jsign, x)
    return args, p, theta0


def test_crossing_times_follow_a_shift_on_a_curved_interpolant():
    """Two crossings of one neuron in one step: the first (at 0.2 of the step)
    switches a term of the neuron's equation, which moves the second pair's `z` by
    `dt <x_2, x_1> (+-1) int_{t_1}^t c_1`. The second crossing time is the root of
    its near-side cubic plus that shift, here a fifth of the step away from the
    near-side root where the cubic is curved, with `c_1` changing by a third over the
    step; against SciPy's `brentq` on the same function. (Moved along the slope at
    the near-side root alone, it was off by 1e-2; with `c_1` frozen at the first
    crossing's time, by 1.1e-2 here.)"""
    from scipy.optimize import brentq

    from neuralcollapse_jax._sliding_modes import crossing_times

    dt = 0.5
    C0, C1 = [[-0.9], [-0.3]], [[-1.2], [-0.3]]
    args, p, theta0 = _two_crossings_of_one_neuron(C0, C1, [0.8, 0.6])
    th, across, turned, _ = crossing_times(*map(jnp.asarray, args), dt)
    th = np.asarray(th)
    t1 = theta0[0, 0]
    c = lambda s: C0[0][0] + (C1[0][0] - C0[0][0]) * s  # noqa: E731
    moved = lambda t: -(c(t1) + c(max(t, t1))) / 2 * max(t - t1, 0.0)  # noqa: E731
    exact = brentq(lambda t: p(t, 1) + dt * 0.8 * moved(t), 0.0, 1.0, xtol=1e-15)
    frozen = brentq(lambda t: p(t, 1) - dt * 0.8 * c(t1) * max(t - t1, 0.0), 0.0, 1.0)
    assert abs(exact - theta0[1, 0]) > 0.05 and abs(exact - frozen) > 1e-2
    assert th[0, 0] == pytest.approx(t1, abs=1e-14)
    assert th[1, 0] == pytest.approx(exact, abs=1e-6), (th, exact, theta0)
    assert np.all(np.asarray(across)) and not np.any(np.asarray(turned))


def test_a_crossing_held_back_by_an_earlier_one_is_dropped():
    """The same two pairs, the second sample now pointing against the first: the
    first crossing's switched term pulls the second pair's `z` back, and its near
    side's crossing (at 0.85 of the step) does not happen in the step (SciPy finds
    no root of the moved `z` there). It is not counted as crossed: counted, its
    far-side Jacobian acted on the response to the first crossing for the rest of
    the step (586 times the tolerance in one step of the orthogonally separable
    set)."""
    from neuralcollapse_jax._sliding_modes import crossing_times

    dt = 0.5
    C = [[-0.9], [-0.3]]
    args, p, theta0 = _two_crossings_of_one_neuron(C, C, [-0.8, 0.6])
    th, across, turned, _ = crossing_times(*map(jnp.asarray, args), dt)
    moved = lambda t: p(t, 1) - dt * 0.8 * 0.9 * max(t - theta0[0, 0], 0.0)  # noqa: E731
    assert p(1.0, 1) > 0 and moved(1.0) < 0  # the near side crossed, the moved z did not
    assert np.all(np.array([moved(t) for t in np.linspace(0, 1, 1001)]) < 0)
    assert np.asarray(across).tolist() == [[True], [False]]
    assert not np.any(np.asarray(turned))
    assert float(np.asarray(th)[0, 0]) == pytest.approx(theta0[0, 0], abs=1e-14)


def test_a_crossing_turned_back_by_an_earlier_one_is_an_entry():
    """Two pairs of one neuron crossing upwards from the inactive side, `c < 0`
    (their kinks attract from above). The second pair's own jump alone lets it
    through (near-side slope 0.6 per step, far side 0.3), but the first crossing,
    at 0.2 of the step, slows it to 0.24 at its moved crossing (0.533), where its
    own jump turns it back (far side -0.06): both sides push it to its kink, so it
    slides from there. It is reported as turned back, not crossed. (On MNIST-60 at
    `rtol 1e-6` such a pair, taken as a crossing, slid for half the step in the
    reference instead: its neuron ended 4e-5 off in relative terms.)"""
    from scipy.optimize import brentq

    from neuralcollapse_jax._sliding_modes import crossing_times

    dt = 0.5
    x = np.array([[1.0, 0.0], [0.8, 0.6]])
    Z0, Z1 = np.array([[-0.2], [-0.2]]), np.array([[0.8], [0.4]])
    m0 = m1 = np.array([[1.0], [0.6]])  # linear near sides
    C = np.array([[-0.9], [-0.6]])
    jsign = np.ones((2, 1))  # from the inactive side, no leak
    crossed = np.array([[True], [True]])
    theta0 = np.array([[0.2], [1.0 / 3.0]])
    args = (crossed, theta0, Z0, Z1, m0, m1, C, C, jsign, x)
    th, across, turned, _ = crossing_times(*map(jnp.asarray, args), dt)
    # By hand: the moved z of the second pair, its root, and the velocities there.
    moved = lambda t: -0.2 + 0.6 * t + dt * (x[1] @ x[0]) * C[0, 0] * max(t - 0.2, 0.0)  # noqa: E731
    t2 = brentq(moved, 0.0, 1.0, xtol=1e-15)
    slope = 0.6 + dt * (x[1] @ x[0]) * C[0, 0]
    own = dt * C[1, 0] * (x[1] @ x[1])
    assert 0.6 + own > 0 and slope > 0 and slope + own < 0
    assert float(np.asarray(th)[1, 0]) == pytest.approx(t2, abs=1e-12)
    assert np.asarray(turned).tolist() == [[False], [True]]
    assert np.asarray(across).tolist() == [[True], [False]]
    # Without the first crossing, the second goes through.
    alone = (np.array([[False], [True]]), *args[1:])
    _, across_alone, turned_alone, _ = crossing_times(*map(jnp.asarray, alone), dt)
    assert np.asarray(turned_alone).tolist() == [[False], [False]]
    assert np.asarray(across_alone).tolist() == [[False], [True]]


def test_an_exit_between_two_crossings_is_located_at_the_first():
    """One neuron with one sliding sample `x_s = (1, 0)` (`G^{-1} = 1`) and two
    corrected crossings of samples along it: the first, at 0.3 of the step, moves the
    sliding coefficient `eta` by `-<x_s, x_a> a_a = +2`, the second, at 0.7, by -2.
    At both ends of the step the weight is inside its box (violations -1 below and
    -5 above), but between the crossings it is out below (+1, by hand): the exit is
    at the first crossing, with that violation. In the other order the crossings
    keep it inside (-3 below and above between them), and a free slot reports
    nothing."""
    from neuralcollapse_jax._sliding_modes import Mode, exits_between_crossings

    x = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.5, 0.0]])  # x_s, x_a, x_b
    xs = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])  # one neuron, two slots
    ginv = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
    mode = Mode(mask=jnp.asarray([[True], [False], [False]]), xs=xs, ginv=ginv)
    used = jnp.asarray([[True, False]])
    lo = jnp.asarray([[-1.0, -1.0]])
    hi = jnp.asarray([[-5.0, -5.0]])  # far from the upper bound
    crossed = jnp.asarray([[False], [True], [True]])
    amount = jnp.asarray([[0.0], [-2.0], [4.0]])  # -<x_s, x_b> 4 = -2
    for order, expected in (((0.3, 0.7), (0.3, 1.0)), ((0.7, 0.3), (np.inf, 0.0))):
        theta = jnp.asarray([[np.inf], [order[0]], [order[1]]])
        t, g = exits_between_crossings(
            mode, used, lo, hi, lo, hi, x, crossed, theta, amount
        )
        assert float(t[0, 0]) == pytest.approx(expected[0], abs=1e-15)
        assert float(g[0, 0]) == pytest.approx(expected[1], abs=1e-15)
        assert np.isinf(float(t[0, 1])) and float(g[0, 1]) == 0.0


def test_an_exit_after_the_last_crossing_is_located_in_that_stretch():
    """The setting of the test above with one crossing, at 0.3 of the step, that moves
    `eta` by -1 (deeper inside), and the weight out below at the step's end (+1): the
    smooth part runs from -1 to +2 (the end less the jump), so the weight is inside
    just after the crossing (-1.1) and leaves in the stretch after it, at `0.3 + 0.7
    1.1 / 2.1` (by hand), with the violation at the end. (The stretch after the last
    crossing was not searched.)"""
    from neuralcollapse_jax._sliding_modes import Mode, exits_between_crossings

    x = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])  # x_s, x_a
    xs = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
    ginv = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
    mode = Mode(mask=jnp.asarray([[True], [False]]), xs=xs, ginv=ginv)
    used = jnp.asarray([[True, False]])
    crossed = jnp.asarray([[False], [True]])
    amount = jnp.asarray([[0.0], [1.0]])  # -<x_s, x_a> 1 = -1
    theta = jnp.asarray([[np.inf], [0.3]])
    lo0, lo1 = jnp.asarray([[-1.0, -1.0]]), jnp.asarray([[1.0, -1.0]])
    hi = jnp.asarray([[-5.0, -5.0]])
    t, g = exits_between_crossings(mode, used, lo0, hi, lo1, hi, x, crossed, theta, amount)
    assert float(t[0, 0]) == pytest.approx(0.3 + 0.7 * 1.1 / 2.1, abs=1e-15)
    assert float(g[0, 0]) == pytest.approx(1.0, abs=1e-15)
    assert np.isinf(float(t[0, 1]))


def test_an_exit_that_a_crossing_brings_about_is_located_at_it():
    """`exit_events` on one neuron with one sliding sample `x_s = (1, 0)` (`c = -5`,
    `eta = -1` at the start: weight 0.2) and one corrected crossing at 0.9 of the step
    that moves `eta` by +2, with no drift: the weight leaves below at the crossing
    (`eta = +1` at the end, the violation 1 by hand), and the exit is there, costing
    the violation times the rest of the step. The linear interpolant of the
    violation between the step's ends puts it at 0.5; taken as the earlier of the
    two, it ended the step there (before the crossing) in a retry, again and again
    as the crossing receded with the steps (11 retries for one exit on MNIST-60)."""
    from neuralcollapse_jax._sliding_modes import Field, Mode, exit_events

    x = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])  # x_s, x_a
    xs = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
    ginv = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
    mode = Mode(mask=jnp.asarray([[True], [False]]), xs=xs, ginv=ginv)
    idx = jnp.asarray([[0, -1]])

    def field(eta):  # eta = -<x_s, a>
        zero = jnp.zeros((2, 1))
        C = jnp.asarray([[-5.0], [1.0]])
        return Field(
            dW=zero, dV=jnp.zeros((1, 1)), Z=zero, C=C, A=jnp.asarray([[-eta], [0.0]])
        )

    crossed = jnp.asarray([[False], [True]])
    theta_c = jnp.asarray([[np.inf], [0.9]])
    amount = jnp.asarray([[0.0], [-2.0]])  # -<x_s, x_a> (-2) = +2
    theta, cost = exit_events(
        idx,
        mode,
        field(-1.0),
        field(1.0),
        x,
        0.0,
        0.0,
        jnp.asarray(1.0),
        jnp.zeros(1),
        (crossed, theta_c, amount),
    )
    assert float(theta[0, 0]) == pytest.approx(0.9, abs=1e-15)
    assert float(cost[0, 0]) == pytest.approx(1.0 * 0.1, abs=1e-15)
    assert np.isinf(float(theta[1, 0])) and float(cost[1, 0]) == 0.0


@pytest.fixture(scope="module")
def mnist60():
    """MNIST-60 (20 test digits each of 0, 1, 2, centered, `h = 50`, std 1e-3), its
    save times to `T = 2`, and the default solver (steps end at every event) at
    `rtol 1e-11` there."""
    data = nc.datasets.mnist(per_class=20)
    model = nc.TwoLayerReLU.init(jax.random.key(0), data.dim, 50, 3, 1e-3)
    ts = np.linspace(0.0, 2.0, 6)
    ref = nc.gradient_flow(model, data, t1=2.0, saveat=ts, rtol=1e-11, solver=STEPS_END)
    return data, model, ts, _saved(ref)


@pytest.mark.slow
@pytest.mark.parametrize("rtol, bound", [(None, 2e-7), (1e-6, 2e-6)])
def test_mnist60_within_the_target(mnist60, rtol, bound):
    """MNIST-60 to `T = 2`: 1,292 crossings corrected inside the steps, 253 entries
    into sliding. At the default tolerance within 2e-7 of the reference at every
    save time (measured 2.3e-8; the issue's target is 1e-6), and at `rtol 1e-6`
    within 2e-6 (measured 5.4e-7). Before a crossing that another crossing of its
    neuron brings about inside a step was located (and a neuron's crossing times
    followed their shifts on the cubic), the default tolerance gave 1.6e-6. At `rtol
    1e-6` it was 6.5e-5 before two mends: a pair that a started entry's shift put
    across its kink was corrected as a crossing on top of the stages that had it
    across already, and a pair that an earlier crossing of its neuron turned back
    at its kink was taken as a crossing (it slides)."""
    data, model, ts, ref = mnist60
    traj = nc.gradient_flow(model, data, t1=2.0, saveat=ts, rtol=rtol, solver=_corrected())
    assert int(traj.status) == nc.Status.SUCCESS
    assert int(traj.stats["crossings_located"]) > 1000
    assert int(traj.stats["crossings_started"]) == 0
    err = np.linalg.norm(_saved(traj) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() < bound, err


@pytest.mark.slow
def test_ncjax_run_problem_at_its_save_times():
    """The problem `ncjax run` solves with no options (90 points, `h = 50`, to `T =
    1e4`, 50 save times on a log scale), at the default tolerance: about 1,670
    crossings corrected inside steps of up to 27 crossings. Its steps end at the
    save times, so the values there are steps' ends: within 2e-8 of the default
    solver at `rtol 1e-11` at every save time (measured 3.8e-9). Saved from the
    dense output of crowded steps they were 7.9e-8 off."""
    from neuralcollapse_jax import _cli_run

    cfg = _cli_run.RunConfig.from_dict(dict(_cli_run.DEFAULT_RUN))
    data, model = _cli_run.build_problem(cfg)
    flow = cfg.flow
    ts = nc.log_times(flow.t1, flow.num_saves, t_min=flow.t1 * flow.t_min_ratio)
    ref = nc.gradient_flow(model, data, t1=flow.t1, saveat=ts, rtol=1e-11, solver=STEPS_END)
    traj = nc.gradient_flow(model, data, t1=flow.t1, saveat=ts, solver=_corrected())
    assert int(traj.status) == nc.Status.SUCCESS
    assert int(traj.stats["crossings_located"]) > 1000
    err = np.linalg.norm(_saved(traj) - _saved(ref), axis=1) / np.linalg.norm(
        _saved(ref), axis=1
    )
    assert err.max() < 2e-8, err


@pytest.mark.long
def test_a_corrected_step_differentiates_through_its_crossing():
    """The Jacobian of one step across a crossing (at 40% of it), forward and reverse
    mode: equal to central differences of the same step map (measured 4e-10; 8 dt off
    when the crossing times were held fixed and the jump term added at the end of the
    step, untransported), and within `O(dt^3)` of the Jacobian of the exact flow map
    (central differences of SciPy's DOP853 with the crossing located as an event;
    measured 3.3e-3, 4.5e-4, 5.9e-5 at `dt` 0.1, 0.05, 0.025; second order, 7.4e-2,
    1.9e-2, 4.9e-3, with the correction to second order only)."""
    from problems import neuron_field
    from scipy.integrate import solve_ivp

    data, _, tc, exact = crossing_problem()
    X = np.asarray(data.x)
    sides = [neuron_field(X, np.ones(2), np.array(a)) for a in ([1.0, 0.0], [1.0, 1.0])]
    tight = dict(method="DOP853", rtol=1e-13, atol=1e-15)

    def flow(y0, T):
        event = lambda t, y: (X @ y[:2])[1]  # noqa: E731
        event.terminal = True
        before = solve_ivp(sides[0], (0.0, T), y0, events=event, **tight)
        t_c, y_c = before.t_events[0][0], before.y_events[0][0]
        return solve_ivp(sides[1], (t_c, T), y_c, **tight).y[:, -1]

    eps = 1e-6
    errors = []
    for dt in (0.1, 0.05, 0.025):
        t0 = tc - 0.4 * dt
        y0 = np.asarray(exact(t0))
        step = _step_map(_corrected(), data, t0, dt)
        rev = np.asarray(jax.jacrev(step)(jnp.asarray(y0)))
        forward = _step_map(_corrected(), data, t0, dt, diffrax.ForwardMode())
        fwd = np.asarray(jax.jacfwd(forward)(jnp.asarray(y0)))
        np.testing.assert_allclose(fwd, rev, rtol=1e-10, atol=1e-12)
        basis = np.eye(3)
        same = np.stack(
            [(step(y0 + eps * e) - step(y0 - eps * e)) / (2 * eps) for e in basis], 1
        )
        assert np.abs(rev - same).max() < 1e-7 * np.abs(same).max(), (dt, rev - same)
        true = np.stack(
            [(flow(y0 + eps * e, dt) - flow(y0 - eps * e, dt)) / (2 * eps) for e in basis],
            1,
        )
        errors.append(np.abs(rev - true).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 2.7), errors


def test_gradient_through_a_crossing_matches_scipy():
    """One neuron crosses one kink (at t = 1.48), at the default tolerance: the
    gradient in the initial parameters and in the data against central differences
    of SciPy's flow, at `T = 2` and just after the crossing, `T = 1.6` (measured
    1.1e-7 and 1.1e-8 at `T = 2`, 1.8e-7 and 1.7e-9 at `T = 1.6`, where the
    differences agree to 1.5e-7; 4.2e-4 in the parameters before the crossing times
    carried their derivatives through the correction, and 2.5e-5 at `T = 1.6` with
    the correction to second order only); forward mode equals reverse mode."""
    from test_derivatives import _check, _directions, _objective

    data, model, _, _ = crossing_problem()
    _check(data, model, 2.0, "exponential", nc.DEFAULT_RTOL, 1e-6, solver=_corrected())
    # (Just after the crossing the differences agree to 1.5e-7 only.)
    _check(data, model, 1.6, "exponential", nc.DEFAULT_RTOL, 2e-6, solver=_corrected())
    dW, dV, dX, uW, uV = _directions(model, data.x)
    J = _objective(data, 2.0, uW, uV, "exponential", solver=_corrected())
    x = jnp.asarray(data.x)
    g = jax.grad(J, argnums=(0, 1, 2))(model.W, model.V, x)
    _, tangent = jax.jvp(
        J, (model.W, model.V, x), (jnp.asarray(dW), jnp.asarray(dV), jnp.asarray(dX))
    )
    along = sum(float(jnp.sum(gi * di)) for gi, di in zip(g, (dW, dV, dX)))
    np.testing.assert_allclose(float(tangent), along, rtol=1e-9)


@pytest.mark.slow
def test_gradient_through_sliding_matches_finite_differences():
    """Orthogonally separable data where three pairs enter sliding and leave it
    before `T = 8`, and samples on one ray cross together: the gradient in the
    initial parameters at the default tolerance against central differences of the
    default solver at `rtol 1e-11`, stable across steps (measured 1.3e-6; 4.6e-4
    when simultaneous crossings of one neuron shifted each other in the derivative
    by the rounding of their times)."""
    from test_derivatives import _central, _directions, _objective

    data = nc.datasets.orthogonally_separable(jax.random.key(0), 3, 5, 10, 0.5, 0.2)
    model = nc.TwoLayerReLU.init(jax.random.key(1), 10, 10, 3, 1e-2)
    dW, dV, _, uW, uV = _directions(model, data.x)
    x = jnp.asarray(data.x)
    stats = nc.gradient_flow(model, data, t1=8.0, saveat=[8.0], solver=_corrected()).stats
    assert int(stats["sliding_entries"]) > 0 and int(stats["sliding_exits"]) > 0
    J = _objective(data, 8.0, uW, uV, "cross_entropy", solver=_corrected())
    g = jax.grad(J, argnums=(0, 1))(model.W, model.V, x)
    ad = float(jnp.sum(g[0] * dW) + jnp.sum(g[1] * dV))
    J_ref = jax.jit(
        _objective(data, 8.0, uW, uV, "cross_entropy", rtol=1e-11, solver=STEPS_END)
    )
    coarse, fine = (_central(J_ref, model, x, (dW, dV, 0.0 * x), e) for e in (1e-6, 1e-7))
    assert abs(coarse - fine) <= 1e-5 * abs(fine)
    assert abs(ad - fine) <= 1e-5 * abs(fine), (ad, fine)


@pytest.mark.long
def test_gradient_with_exits_at_crossings_matches_finite_differences():
    """MNIST digits (4 each of 0, 1, 2, width 10, `T = 2`): 11 entries into sliding
    and 7 exits, some of them at a crossing of the neuron (the crossing makes the
    neuron's sliding weights jump out of their box). The gradient at the defaults
    along the initial parameters and along the data, against the median of central
    differences of the default solver at `rtol 1e-12` at four steps, which agree to
    1e-5 (measured 1.2e-6 and 8.7e-6; 3.7e-6 and 1.1e-5 with the differentiated
    solve's steps sized for the value only, `derivative_safety=1`; 2e-2 when the exit's
    jump term was missing)."""
    from test_derivatives import _central, _directions, _objective

    data = nc.datasets.mnist(per_class=4)
    model = nc.TwoLayerReLU.init(jax.random.key(0), 784, 10, 3, 1e-2)
    T = 2.0
    stats = nc.gradient_flow(model, data, t1=T, saveat=[T], solver=_corrected()).stats
    assert int(stats["sliding_entries"]) >= 10 and int(stats["sliding_exits"]) >= 5
    dW, dV, dX, uW, uV = _directions(model, data.x)
    x = jnp.asarray(data.x)
    J = _objective(data, T, uW, uV, "cross_entropy", solver=_corrected())
    g = jax.jit(jax.grad(J, argnums=(0, 1, 2)))(model.W, model.V, x)
    J_ref = jax.jit(
        _objective(data, T, uW, uV, "cross_entropy", rtol=1e-12, solver=STEPS_END)
    )
    along = [
        (float(jnp.sum(g[0] * dW) + jnp.sum(g[1] * dV)), (dW, dV, 0.0 * dX), 1e-5),
        (float(jnp.sum(g[2] * dX)), (0.0 * dW, 0.0 * dV, dX), 1e-4),
    ]
    for ad, direction, bound in along:
        fds = np.array(
            [_central(J_ref, model, x, direction, e) for e in (4e-6, 2e-6, 1e-6, 5e-7)]
        )
        mid = float(np.median(fds))
        assert np.sum(np.abs(fds - mid) <= 1e-5 * abs(mid)) >= 3, fds
        assert abs(ad - mid) <= bound * abs(mid), (ad, fds)


@pytest.mark.slow
def test_derivative_in_the_horizon_and_batched_gradients():
    """One neuron past its crossing: the derivative in `t1` (reverse and forward
    mode) is the velocity of the exact flow at `t1` (the far-side field at SciPy's
    state; measured 2e-8 relative), and `vmap` of gradients over init scales equals
    single calls."""
    from problems import neuron_field

    data, model, tc, exact = crossing_problem()
    T = 2.0
    assert tc < T

    def J(t1, scale=1.0):
        m = nc.TwoLayerReLU(model.W * scale, model.V * scale)
        traj = nc.gradient_flow(
            m, data, t1=t1, saveat=[t1], loss="exponential", solver=_corrected()
        )
        return jnp.sum(traj.final.W) + jnp.sum(traj.final.V)

    velocity = neuron_field(np.asarray(data.x), np.ones(2), np.array([1.0, 1.0]))(
        T, exact(T)
    )
    # One compiled gradient in both `t1` and the scale serves the derivative in `t1`
    # and the single calls over scales (the scale passed as an array of the scales'
    # type, so that all calls share one compilation).
    scales = jnp.array([0.9, 1.1])
    d_both = jax.jit(jax.grad(J, argnums=(0, 1)))
    reverse = float(d_both(T, jnp.ones_like(scales[0]))[0])
    forward = float(jax.jvp(J, (T,), (1.0,))[1])
    np.testing.assert_allclose(reverse, float(np.sum(velocity)), rtol=1e-6)
    np.testing.assert_allclose(forward, reverse, rtol=1e-9)
    batched = np.asarray(jax.jit(jax.vmap(lambda s: d_both(T, s)[1]))(scales))
    single = np.array([float(d_both(T, s)[1]) for s in scales])
    np.testing.assert_allclose(batched, single, rtol=1e-9)
