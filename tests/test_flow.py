"""The exact gradient flow: accuracy against an independent integrator, the
conservation law, jit/vmap, status reporting, and input validation."""

import logging
import os
import subprocess
import sys
import warnings

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets


T1 = 40.0
TS = np.concatenate([[0.0], np.geomspace(1e-2, T1, 12)])


@pytest.fixture(scope="module")
def small_problem():
    key = jax.random.key(0)
    return datasets.orthogonally_separable(
        key, 3, (4, 5, 6), 12, mu_s=0.5, mu_d=0.2, norm_range=(0.5, 1.5)
    )


def _flat(model):
    return np.concatenate([np.ravel(model.W), np.ravel(model.V)])


def _scipy_reference(model, data, ts, loss="cross_entropy"):
    """DOP853 at rtol 1e-13 on the same (regular, relu'(0) = 0) vector field."""
    flat, unravel = ravel_pytree(model)
    field = jax.jit(lambda y: -ravel_pytree(nc.gradient(unravel(y), data, loss))[0])
    scale = float(np.sqrt(np.mean(np.asarray(flat) ** 2)))
    sol = solve_ivp(
        lambda t, y: np.asarray(field(jnp.asarray(y))),
        (0.0, ts[-1]),
        np.asarray(flat),
        method="DOP853",
        rtol=1e-13,
        atol=1e-16 * scale,
        t_eval=ts,
    )
    assert sol.success
    return sol.y.T


def _default_call_within_1e6_of_scipy(model, data):
    """The default call to `T1`, checked at every save time `TS` against SciPy's
    DOP853 (relative error at most 1e-6); returns it."""
    traj = nc.gradient_flow(model, data, t1=T1, saveat=TS)
    assert int(traj.status) == nc.Status.SUCCESS
    ref = _scipy_reference(model, data, TS)
    for k in range(len(TS)):
        ours = _flat(traj.model_at(k))
        err = np.linalg.norm(ours - ref[k]) / np.linalg.norm(ref[k])
        assert err <= 1e-6, (TS[k], err)
    return traj


@pytest.mark.parametrize(
    "eps",
    [
        pytest.param(1e-1, marks=pytest.mark.slow),
        pytest.param(1e-3, marks=pytest.mark.slow),
        1e-5,
        pytest.param(1e-8, marks=pytest.mark.slow),
    ],
)
def test_accuracy_against_scipy_dop853(small_problem, eps):
    """Default tolerances, float64: relative error <= 1e-6 at every save time."""
    model = nc.TwoLayerReLU.init(jax.random.key(1), 12, 8, 3, eps)
    traj = _default_call_within_1e6_of_scipy(model, small_problem)
    # the flow went somewhere: the loss fell by orders of magnitude
    assert traj.loss[-1] < 1e-2 * traj.loss[0]


def test_conservation_of_balance(small_problem):
    """Along the flow, ||w_j||^2 - ||v_j||^2 is constant for every neuron (Du et al.).

    The regular field at `rtol 1e-9` (the default solver and tolerance when the bound
    was set; conservation through kink events is tested in `test_events.py`)."""
    model = nc.TwoLayerReLU.init(jax.random.key(2), 12, 8, 3, 1e-2)
    ts = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 30)])
    traj = nc.gradient_flow(
        model, small_problem, t1=1e3, saveat=ts, rtol=1e-9, solver="regular"
    )
    W, V = np.asarray(traj.models.W), np.asarray(traj.models.V)
    balance = np.sum(W**2, axis=1) - np.sum(V**2, axis=1)  # (T, h)
    size = np.sum(W**2, axis=1) + np.sum(V**2, axis=1)
    drift = np.abs(balance - balance[0]) / size
    assert size[-1].max() > 1e4 * size[0].max()  # the weights grew a lot
    assert drift.max() < 1e-7, drift.max()


def test_jit_and_vmap_over_scales_and_seeds_match_single_runs(small_problem):
    scales = jnp.array([1e-1, 1e-4, 1e-7])
    keys = jax.random.split(jax.random.key(4), 3)
    ts = jnp.asarray(TS)

    def run(key, scale):
        model = nc.TwoLayerReLU.init(key, 12, 8, 3, scale)
        # The regular field at `rtol 1e-9` (the defaults before `events`; `events`
        # under `vmap` is tested in `test_events.py`).
        return nc.gradient_flow(
            model,
            small_problem,
            t1=T1,
            saveat=ts,
            save_params=True,
            solver="regular",
            rtol=1e-9,
        )

    batched = jax.jit(jax.vmap(run))(keys, scales)
    successes = 0
    for b in range(3):
        single = run(keys[b], float(scales[b]))
        assert int(batched.status[b]) == int(single.status)
        if int(single.status) != nc.Status.SUCCESS:
            continue
        successes += 1
        # Batched matrix products may round differently in the last bit, and the
        # adaptive controller turns that into slightly different step sequences: the
        # runs agree to within the solver's accuracy (relative 1e-6), not bit for bit.
        for k in range(len(TS)):
            a = _flat(nc.TwoLayerReLU(batched.models.W[b, k], batched.models.V[b, k]))
            ref = _flat(single.model_at(k))
            assert np.linalg.norm(a - ref) <= 1e-6 * np.linalg.norm(ref)
        np.testing.assert_allclose(batched.loss[b], single.loss, rtol=1e-7)
        steps_b, steps_s = (
            int(batched.stats["num_steps"][b]),
            int(single.stats["num_steps"]),
        )
        assert abs(steps_b - steps_s) <= 0.05 * steps_s
    assert successes >= 2


def test_no_recompile_across_values(small_problem, caplog):
    """t1, tolerances and save times are traced: new values reuse the compiled solve."""
    model = nc.TwoLayerReLU.init(jax.random.key(4), 12, 8, 3, 1e-3)
    model2 = nc.TwoLayerReLU.init(jax.random.key(5), 12, 8, 3, 1e-6)
    nc.gradient_flow(model, small_problem, t1=5.0, saveat=np.linspace(0, 5, 4))
    jax.config.update("jax_log_compiles", True)  # JAX logs every compilation
    try:
        with caplog.at_level(logging.WARNING):
            nc.gradient_flow(
                model,
                small_problem,
                t1=7.0,
                saveat=np.linspace(0, 7, 4),
                rtol=1e-7,
                atol=1e-12,
            )
            nc.gradient_flow(
                model2, small_problem, t1=6.0, saveat=np.linspace(0, 6, 4), rtol=1e-7
            )
            compiled = [r.getMessage() for r in caplog.records]
            jax.jit(lambda v: 2 * v)(jnp.ones(3))  # a new program is logged
            assert any("<lambda>" in r.getMessage() for r in caplog.records)
    finally:
        jax.config.update("jax_log_compiles", False)
    assert [m for m in compiled if m.startswith("Compiling ")] == []


def test_binary_exponential_flow_against_scipy(getkey):
    data = datasets.orthogonally_separable(getkey(), 2, (5, 7), 10, 0.4, 0.3)
    model = nc.TwoLayerReLU.init(getkey(), 10, 6, 1, 1e-4)
    ts = np.array([0.0, 1.0, 5.0, 20.0])
    traj = nc.gradient_flow(model, data, t1=20.0, saveat=ts, loss="exponential")
    ref = _scipy_reference(model, data, ts, "exponential")
    for k in range(len(ts)):
        err = np.linalg.norm(_flat(traj.model_at(k)) - ref[k]) / np.linalg.norm(ref[k])
        assert err <= 1e-6


def test_records_and_memory_light_saving(small_problem):
    model = nc.TwoLayerReLU.init(jax.random.key(6), 12, 8, 3, 1e-3)
    record = {"norm_W": lambda m, d: jnp.linalg.norm(m.W), "f0": lambda m, d: m(d.x)[0]}
    light = nc.gradient_flow(
        model, small_problem, t1=T1, saveat=TS, record=record, save_params=False
    )
    full = nc.gradient_flow(model, small_problem, t1=T1, saveat=TS)
    assert light.models is None
    assert light.records["f0"].shape == (len(TS), 3)
    np.testing.assert_allclose(
        light.records["norm_W"], jnp.linalg.norm(full.models.W, axis=(1, 2)), rtol=1e-12
    )
    np.testing.assert_allclose(light.final.W, full.final.W, rtol=1e-12)
    np.testing.assert_allclose(full.final.W, full.models.W[-1], rtol=1e-12)


def test_max_steps_is_reported_not_raised(small_problem):
    model = nc.TwoLayerReLU.init(jax.random.key(7), 12, 8, 3, 1e-3)
    with pytest.warns(RuntimeWarning, match="max_steps reached"):
        traj = nc.gradient_flow(model, small_problem, t1=T1, saveat=TS, max_steps=5)
    assert int(traj.status) == nc.Status.MAX_STEPS
    # Traced (under jit or vmap) there is no warning: the status is the report.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        jitted = jax.jit(
            lambda m: nc.gradient_flow(m, small_problem, t1=T1, saveat=TS, max_steps=5)
        )(model)
    assert int(jitted.status) == nc.Status.MAX_STEPS
    assert "max_steps" in traj.message()
    assert not bool(traj.ok)
    assert np.isinf(np.asarray(traj.loss[-1]))  # unsaved times are marked


def test_nonfinite_is_reported(getkey):
    # Margins of -1e4 overflow the exponential loss: exp(1e4) = inf in float64.
    data = datasets.orthogonally_separable(getkey(), 2, (3, 3), 8, 0.5, 0.5)
    model = nc.TwoLayerReLU.init(getkey(), 8, 4, 1, 1.0)
    big = nc.TwoLayerReLU(model.W * 100.0, -100.0 * jnp.abs(model.V) * 1e2)
    assert not np.isfinite(float(nc.loss(big, data, "exponential")))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        traj = nc.gradient_flow(
            big, data, t1=1.0, saveat=np.array([0.0, 1.0]), loss="exponential", max_steps=50
        )
    assert int(traj.status) == nc.Status.NONFINITE
    assert "non-finite" in traj.message()


_CACHEABLE = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import neuralcollapse_jax as nc

X = np.array([[1.0, 0.0], [np.cos(1.2), np.sin(1.2)]])
data = nc.Dataset(X, np.array([1, 1]), 2)
model = nc.TwoLayerReLU(jnp.asarray([[0.6], [-0.45]]), jnp.asarray([[0.5]]))
run = jax.jit(
    lambda ts: nc.gradient_flow(model, data, t1=2.0, saveat=ts, loss="exponential")
)
ts = jnp.asarray([0.5, 2.0])
assert "callback" not in run.lower(ts).as_text()
print(int(run(ts).status))
for bad in ([1.0, 0.5], [0.5, 3.0], [-0.5, 1.0]):
    traj = run(jnp.asarray(bad))
    print(int(traj.status), bool(np.all(np.isinf(np.asarray(traj.loss)))))
"""


def test_under_eqx_on_error_nan_the_program_has_no_host_callback_and_bad_save_times_fail():
    """With `EQX_ON_ERROR=nan` (docs page *Getting started*, *Compilation*: it lets
    JAX's persistent cache keep the compiled program, which it does not for a
    program with host callbacks), the flow's program has no host callback, and save
    times traced under an outer `jax.jit` that are out of order, past `t1` or
    negative fail the run (`Status.FAILED`), which Diffrax's check no longer raises
    on. (Equinox reads the variable when it is imported: a new process.)"""
    env = dict(os.environ, EQX_ON_ERROR="nan")
    out = subprocess.run(
        [sys.executable, "-c", _CACHEABLE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    assert lines[0] == str(nc.Status.SUCCESS)
    failed = f"{nc.Status.FAILED}"
    assert lines[1:] == [failed, "True"] * 3


def test_float32_default_call_takes_the_float32_tolerance():
    """In float32 the default `rtol` is `DEFAULT_RTOL_FLOAT32` (the float64 default,
    `1e-8`, lies below float32's resolution: on MNIST digits a float32 call there
    stopped at `max_steps`). Checked against the float64 flow from the same start."""
    assert nc.default_rtol(jnp.float32) == nc.DEFAULT_RTOL_FLOAT32 == 1e-5
    assert nc.default_rtol(jnp.float64) == nc.DEFAULT_RTOL == 1e-8
    # 30 digits, h = 12, to T = 30: in float32 at `rtol 1e-8` this call stopped at
    # 50,000 steps (49,849 sliding entries); at the float32 default it takes 354.
    data = nc.datasets.mnist(per_class=10)
    model = nc.TwoLayerReLU.init(jax.random.key(0), 784, 12, 3, 1e-3)
    ts = np.linspace(0.0, 30.0, 6)
    ref = nc.gradient_flow(model, data, t1=30.0, saveat=ts)
    cast = jax.tree.map(lambda a: a.astype(jnp.float32), model)
    traj = nc.gradient_flow(
        cast, data.astype(jnp.float32), t1=30.0, saveat=ts, max_steps=5000
    )
    assert int(traj.status) == nc.Status.SUCCESS
    assert traj.final.W.dtype == jnp.float32
    got, want = (
        np.concatenate(
            [
                np.asarray(t.models.W, np.float64).reshape(6, -1),
                np.asarray(t.models.V, np.float64).reshape(6, -1),
            ],
            axis=1,
        )
        for t in (traj, ref)
    )
    err = np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1))
    # Measured: 6.5e-5.
    assert err < 1e-3, err


def test_float32_works(small_problem):
    data = small_problem.astype(jnp.float32)
    model = nc.TwoLayerReLU.init(jax.random.key(9), 12, 8, 3, 1e-3, dtype=jnp.float32)
    traj = nc.gradient_flow(model, data, t1=T1, saveat=TS, rtol=1e-5)
    assert traj.models.W.dtype == jnp.float32
    assert int(traj.status) == 0
    ref = _scipy_reference(
        nc.TwoLayerReLU(model.W.astype(jnp.float64), model.V.astype(jnp.float64)),
        small_problem,
        TS,
    )
    err = np.linalg.norm(_flat(traj.model_at(-1)) - ref[-1]) / np.linalg.norm(ref[-1])
    assert err < 1e-3


@pytest.mark.slow
def test_explicit_solver(small_problem):
    model = nc.TwoLayerReLU.init(jax.random.key(10), 12, 8, 3, 1e-3)
    # At `rtol 1e-9` (the default when the bound was set; the default is now `1e-8`).
    kw = dict(t1=T1, saveat=TS, rtol=1e-9)
    a = nc.gradient_flow(model, small_problem, solver=diffrax.Dopri5(), **kw)
    b = nc.gradient_flow(model, small_problem, solver=diffrax.Tsit5(), **kw)
    np.testing.assert_allclose(a.final.W, b.final.W, rtol=1e-5, atol=1e-9)
    assert int(a.stats["grad_evals"]) > int(a.stats["num_steps"])


@pytest.mark.parametrize(
    "solver", ["regular", pytest.param("diffrax", marks=pytest.mark.slow)]
)
def test_grad_evals_count_is_exact(small_problem, solver):
    """Count vector-field calls through a host callback and compare (the regular
    solver and a plain Diffrax one, with the automatic initial step; the sliding
    solver's count is tested in `test_sliding.py`)."""
    calls = []
    model = nc.TwoLayerReLU.init(jax.random.key(11), 12, 8, 3, 1e-2)
    field = nc.vector_field("cross_entropy", "sum")
    solver = diffrax.Tsit5() if solver == "diffrax" else "regular"

    def counting(t, y, args):
        jax.debug.callback(lambda: calls.append(1), ordered=True)
        return field(t, y, args)

    traj = nc.gradient_flow(
        model, small_problem, t1=2.0, saveat=np.array([0.0, 2.0]), solver=solver
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(counting),
        nc.UnrolledERK(diffrax.Tsit5()) if solver == "regular" else solver,
        0.0,
        2.0,
        None,
        model,
        args=small_problem,
        stepsize_controller=diffrax.PIDController(
            rtol=nc.DEFAULT_RTOL, atol=nc.default_atol(model, nc.DEFAULT_RTOL)
        ),
        max_steps=10_000,
    )
    assert int(sol.stats["num_steps"]) == int(traj.stats["num_steps"])
    assert int(traj.stats["grad_evals"]) == len(calls)


def test_bad_inputs(small_problem):
    model = nc.TwoLayerReLU.init(jax.random.key(12), 12, 8, 3, 1e-3)
    flow = lambda **kw: nc.gradient_flow(model, small_problem, **{"t1": 1.0, **kw})
    with pytest.raises(ValueError, match="t1"):
        flow(t1=-1.0)
    with pytest.raises(ValueError, match="t1"):
        flow(t1=float("inf"))
    with pytest.raises(ValueError, match="increasing"):
        flow(saveat=np.array([0.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match=r"\[0, t1\]"):
        flow(saveat=np.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="rtol"):
        flow(rtol=0.0)
    with pytest.raises(ValueError, match="atol"):
        flow(atol=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        flow(max_steps=0)
    with pytest.raises(ValueError, match="unknown loss"):
        flow(loss="hinge")
    with pytest.raises(ValueError, match="dimension"):
        nc.gradient_flow(
            nc.TwoLayerReLU.init(jax.random.key(0), 5, 8, 3, 1e-3), small_problem, t1=1.0
        )
    bad = nc.TwoLayerReLU(model.W.at[0, 0].set(jnp.nan), model.V)
    with pytest.raises(ValueError, match="non-finite"):
        nc.gradient_flow(bad, small_problem, t1=1.0)
    with pytest.raises(ValueError, match="Dataset"):
        nc.gradient_flow(model, (small_problem.x, small_problem.y), t1=1.0)
    with pytest.raises(ValueError, match="rtol must be a positive finite number"):
        flow(rtol="1e-6")
    # A float32 model on float64 data (or the reverse) is named, not left to fail
    # inside the solver's branches with a type error.
    model32 = jax.tree.map(lambda a: a.astype(jnp.float32), model)
    with pytest.raises(ValueError, match="W float32, V float32, the data x float64"):
        nc.gradient_flow(model32, small_problem, t1=1.0)
    with pytest.raises(ValueError, match="one floating dtype"):
        nc.gradient_descent(model32, small_problem, learning_rate=1e-2, steps=10)
    with pytest.raises(ValueError, match="one floating dtype"):
        nc.gradient_flow(model, small_problem.astype(jnp.float32), t1=1.0)


def test_the_zero_network_is_a_fixed_point(small_problem):
    # Every z_ij and every output is zero, so the gradient vanishes and the flow
    # stays at zero, where the sum cross-entropy of n samples over K classes is
    # n log K. (The default absolute tolerance, rtol times the initial RMS entry, was
    # zero there: every step's error ratio was 0/0 and every step was rejected.)
    zero = nc.TwoLayerReLU(jnp.zeros((12, 8)), jnp.zeros((3, 8)))
    n = small_problem.x.shape[0]
    for solver in (None, "regular"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            traj = nc.gradient_flow(zero, small_problem, t1=T1, saveat=TS, solver=solver)
        assert int(traj.status) == nc.Status.SUCCESS
        np.testing.assert_allclose(traj.loss, n * np.log(3.0), rtol=1e-14)
        assert not np.any(np.asarray(traj.models.W))
        assert not np.any(np.asarray(traj.models.V))
    assert float(nc.default_atol(zero, 1e-8)) == 1e-8
    model = nc.TwoLayerReLU.init(jax.random.key(12), 12, 8, 3, 1e-3)
    rms = np.sqrt(np.mean(_flat(model) ** 2))
    np.testing.assert_allclose(float(nc.default_atol(model, 1e-8)), 1e-8 * rms, rtol=1e-14)


def test_euler_takes_fixed_steps_and_is_gradient_descent(small_problem):
    # Diffrax's Euler has no error estimate: without dt0 the call names the fix
    # (it raised Diffrax's RuntimeError from inside the controller before); with
    # dt0 it takes fixed steps, which are the steps of gradient descent (Optax SGD).
    model = nc.TwoLayerReLU.init(jax.random.key(12), 12, 8, 3, 0.3)
    with pytest.raises(ValueError, match="no error estimate.*dt0"):
        nc.gradient_flow(model, small_problem, t1=1.0, solver="euler")
    lr = 0.01
    flow = nc.gradient_flow(
        model, small_problem, t1=1.0, saveat=[0.25, 1.0], solver="euler", dt0=lr
    )
    gd = nc.gradient_descent(
        model, small_problem, learning_rate=lr, steps=100, save_steps=[25, 100]
    )
    assert int(flow.stats["num_steps"]) == 100
    np.testing.assert_allclose(flow.models.W, gd.models.W, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(flow.models.V, gd.models.V, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(flow.loss, gd.loss, rtol=1e-12)


def test_model_at_takes_one_index_in_range(small_problem):
    model = nc.TwoLayerReLU.init(jax.random.key(12), 12, 8, 3, 0.3)
    traj = nc.gradient_flow(model, small_problem, t1=1.0, saveat=[0.0, 1.0])
    np.testing.assert_array_equal(traj.model_at(0).W, model.W)
    np.testing.assert_allclose(traj.model_at(-1).W, traj.final.W, rtol=1e-14, atol=1e-15)
    # JAX clamps an index out of range: model_at(5) gave the last model before.
    with pytest.raises(IndexError):
        traj.model_at(5)
    with pytest.raises(ValueError, match="one save index"):
        traj.model_at(np.array([0, 1]))


def test_log_times():
    ts = nc.log_times(100.0, 5)
    assert ts[0] == 0.0 and ts[-1] == 100.0 and len(ts) == 6
    assert np.all(np.diff(ts) > 0)
    with pytest.raises(ValueError, match="t1"):
        nc.log_times(0.0)


@pytest.mark.parametrize("solver", [None, pytest.param("sliding", marks=pytest.mark.slow)])
def test_row_space_reduction_is_the_same_flow(solver):
    """With rank(X) < D, integrating in the row space of X gives the full-space flow:
    the saved parameters, loss and records agree with a full-space run to the
    tolerance, the part of W outside the row space stays at its initial value, and
    ||w_j||^2 - ||v_j||^2 is conserved."""
    # three classes in D = 10 whose samples span 6 dimensions
    data = datasets.orthogonally_separable(jax.random.key(3), 3, 20, dim=10)
    model = nc.TwoLayerReLU.init(jax.random.key(4), 10, 8, 3, 1e-2)
    Q = np.asarray(nc.row_space_basis(data))
    assert Q.shape == (10, 6)
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-12)
    assert np.linalg.matrix_rank(np.asarray(data.x)) == 6
    ts = nc.log_times(5.0, 10)
    rec = {"w2": lambda m, d: jnp.sum(m.W**2)}
    kw = dict(t1=5.0, saveat=ts, rtol=1e-10, solver=solver, record=rec)
    full = nc.gradient_flow(model, data, **kw)
    red = nc.gradient_flow(model, data, row_space=True, **kw)
    assert int(full.status) == 0 and int(red.status) == 0
    W_full, W_red = np.asarray(full.models.W), np.asarray(red.models.W)
    scale = np.abs(W_full).max(axis=(1, 2), keepdims=True)
    assert np.max(np.abs(W_red - W_full) / scale) < 1e-6
    np.testing.assert_allclose(red.loss, full.loss, rtol=1e-6)
    np.testing.assert_allclose(red.records["w2"], full.records["w2"], rtol=1e-6)
    P = np.eye(10) - Q @ Q.T  # the part outside the row space does not move
    W0 = np.asarray(model.W)
    assert np.max(np.abs(P @ W_red - P @ W0)) < 1e-14 * np.abs(W0).max() * 100
    V = np.asarray(red.models.V)
    balance = np.sum(W_red**2, axis=1) - np.sum(V**2, axis=1)
    np.testing.assert_allclose(balance, balance[:1].repeat(len(ts), 0), atol=1e-9)
    assert red.stats["grad_evals"] < 1.5 * full.stats["grad_evals"]


def test_row_space_default_reduces_only_low_rank_concrete_data():
    """`row_space=None` (the default) integrates in the row space when the rank is at
    most half the dimension (the same computation as `row_space=True`, bit for bit),
    in the full space otherwise and for traced data (as `row_space=False`)."""
    from neuralcollapse_jax._flow import ROW_SPACE_RATIO, row_space_default

    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    # 12 samples in D = 10 spanning 4 dimensions (0.4 <= ROW_SPACE_RATIO), and 6
    low = jax.random.normal(k1, (12, 4)) @ jax.random.normal(k2, (4, 10))
    high = jax.random.normal(k1, (12, 6)) @ jax.random.normal(k3, (6, 10))
    y = jnp.arange(12) % 3
    assert 4 <= ROW_SPACE_RATIO * 10 < 6
    model = nc.TwoLayerReLU.init(jax.random.key(4), 10, 6, 3, 1e-2)
    kw = dict(t1=0.5, saveat=jnp.array([0.1, 0.5]))
    for x, reduced in ((low, True), (high, False)):
        data = nc.Dataset(x, y, 3)
        basis = row_space_default(data)
        assert (basis is not None) == reduced
        default = nc.gradient_flow(model, data, **kw)
        same = nc.gradient_flow(model, data, row_space=reduced, **kw)
        assert int(default.status) == 0
        np.testing.assert_array_equal(
            np.asarray(default.models.W), np.asarray(same.models.W)
        )
        if reduced:
            reduced_run = default

    # the full space rounds differently (that both are the same flow to the tolerance
    # is `test_row_space_reduction_is_the_same_flow`)
    full = nc.gradient_flow(model, nc.Dataset(low, y, 3), row_space=False, **kw)
    assert not np.array_equal(np.asarray(reduced_run.models.W), np.asarray(full.models.W))

    @jax.jit
    def traced(x):
        assert row_space_default(nc.Dataset(x, y, 3)) is None
        return nc.gradient_flow(model, nc.Dataset(x, y, 3), **kw)

    np.testing.assert_allclose(traced(low).loss, full.loss, rtol=1e-7)


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


@pytest.mark.slow
def test_row_space_data_are_reduced_once_not_in_the_traced_call():
    """Data closed over by a jitted call are reduced to the row space in NumPy, once:
    the traced call holds no product of the data with the basis (two constants, which
    XLA would fold at every compilation: over a second for 300 MNIST digits), and gives
    the eager call's numbers: to rounding with steps that end at the crossings, and
    to within the tolerance with the default, whose accept-or-retry decisions
    (a corrected crossing's time against a step's end) can turn on rounding (here
    213 steps each, 2.8e-11 of the largest weight apart; 181 and 199 steps, 1.3e-9
    apart, before the events of these data were resolved: docs page *Sliding*)."""
    k1, k2 = jax.random.split(jax.random.key(3))
    x = jax.random.normal(k1, (12, 4)) @ jax.random.normal(k2, (4, 30))  # rank 4
    data = nc.Dataset(x, jnp.arange(12) % 3, 3)
    model = nc.TwoLayerReLU.init(jax.random.key(4), 30, 6, 3, 1e-2)
    kw = dict(t1=0.5, saveat=[0.5])
    jaxpr = jax.make_jaxpr(lambda m: nc.gradient_flow(m, data, **kw).loss)(model)
    products = [
        [tuple(v.aval.shape) for v in e.invars]
        for e in _eqns(jaxpr.jaxpr)
        if e.primitive.name == "dot_general"
    ]
    assert products  # (the check below sees the products of the call)
    assert [(12, 30), (30, 4)] not in products
    for solver, bound in ((nc.SlidingReLU(crossings="locate"), 1e-12), (None, 1e-8)):
        kw["solver"] = solver
        jitted = jax.jit(lambda m: nc.gradient_flow(m, data, **kw).models.W)(model)
        eager = nc.gradient_flow(model, data, **kw).models.W
        err = np.abs(np.asarray(jitted) - np.asarray(eager)).max()
        assert err <= bound * np.abs(np.asarray(eager)).max(), (solver, err)


@pytest.mark.slow
def test_row_space_full_rank_and_traced_data():
    """Full-rank data: nothing changes, bit for bit. Traced data: a clear error."""
    x = jax.random.normal(jax.random.key(5), (30, 10), dtype=jnp.float64)
    data = nc.Dataset(x, jnp.arange(30) % 3)
    assert nc.row_space_basis(data).shape == (10, 10)
    model = nc.TwoLayerReLU.init(jax.random.key(4), 10, 8, 3, 1e-2)
    kw = dict(t1=5.0, saveat=nc.log_times(5.0, 5), rtol=1e-8)
    a = nc.gradient_flow(model, data, **kw)
    b = nc.gradient_flow(model, data, row_space=True, **kw)
    np.testing.assert_array_equal(np.asarray(a.models.W), np.asarray(b.models.W))

    @jax.jit
    def traced(x):
        return nc.gradient_flow(model, nc.Dataset(x, data.y, 3), row_space=True, **kw)

    with pytest.raises(ValueError, match="row_space=True needs concrete data"):
        traced(data.x)


def test_auto_rule_matches_the_measured_separability(getkey):
    """`classes_orthogonal` (blocks of rows, early exit) against `datasets.separability`
    (cosines of the whole Gram matrix): orthogonal classes iff `mu_s >= 0` and
    `mu_d >= 0`. Data of more than one block of rows (1024), with a violating pair that
    only the last, shorter block holds, exercise the block loop."""
    cases = [
        datasets.orthogonally_separable(getkey(), 3, (4, 5, 6), 12, 0.5, 0.2),
        datasets.orthogonally_separable(getkey(), 2, 7, 6, 0.1, 0.05),
        datasets.block_orthogonal(getkey(), points_per_class=5, block_dim=3),  # mu_d = 0
        nc.datasets.mnist((0, 1, 2), per_class=5),  # centered
        nc.datasets.mnist((0, 1), per_class=5, center=False),  # all products > 0
    ]
    for k in range(4):  # noisy clouds around orthogonal class centres
        x = jax.random.normal(getkey(), (9, 4), dtype=jnp.float64) * 0.3 + jnp.repeat(
            jnp.eye(4)[:3], 3, axis=0
        )
        cases.append(nc.Dataset(x, jnp.arange(9) // 3, 3))
    # 1030 rows: classes on disjoint positive coordinates (orthogonal, mu_d = 0); then
    # the last two rows (one class) made to point apart along an extra coordinate that
    # no other row uses, so that theirs is the only pair with a negative product.
    rng = np.random.default_rng(0)
    n = 1030
    y = np.arange(n) % 3
    y[-1] = y[-2]
    x = np.zeros((n, 7))
    for c in range(2):
        x[np.arange(n), 2 * y + c] = rng.uniform(0.5, 1.0, n)
    apart = x.copy()
    apart[-2, 6], apart[-1, 6] = 2.0, -2.0  # product <= 2 - 4 < 0
    for big in (x, apart):
        cases.append(nc.Dataset(jnp.asarray(big), jnp.asarray(y), 3))
    verdicts = []
    for data in cases:
        mu_s, mu_d = datasets.separability(data)
        want = mu_s >= 0 and mu_d >= 0
        assert nc.classes_orthogonal(data) == want
        # One default for all data: the located sliding solver.
        assert nc.auto_solver(data) == "events"
        verdicts.append(want)
    assert verdicts[:5] == [True, True, True, False, False]
    assert verdicts[-2:] == [True, False]
    # one class of two orthogonal points (mu_s = 0; separability needs two classes)
    assert nc.classes_orthogonal(nc.datasets.iclr_toy("orthogonal"))


@pytest.mark.slow
def test_default_solver_is_auto(small_problem):
    """The default picks `events` (the sliding solver with located kink events) on
    MNIST, on separable data and on traced data, and runs exactly what the explicit
    choice runs."""
    mnist = nc.datasets.mnist((0, 1, 2), per_class=4)
    model = nc.TwoLayerReLU.init(jax.random.key(3), mnist.dim, 6, 3, 1e-3)
    kw = dict(t1=0.5, saveat=np.array([0.0, 0.5]), rtol=1e-6)
    auto = nc.gradient_flow(model, mnist, **kw)
    events = nc.gradient_flow(model, mnist, solver="events", **kw)
    assert "crossings_located" in auto.stats
    np.testing.assert_array_equal(np.asarray(auto.final.W), np.asarray(events.final.W))
    assert int(auto.stats["grad_evals"]) == int(events.stats["grad_evals"])

    m = nc.TwoLayerReLU.init(jax.random.key(4), 12, 8, 3, 1e-3)
    auto = nc.gradient_flow(m, small_problem, t1=T1, saveat=TS)
    events = nc.gradient_flow(m, small_problem, t1=T1, saveat=TS, solver="events")
    assert "crossings_located" in auto.stats
    np.testing.assert_array_equal(np.asarray(auto.models.W), np.asarray(events.models.W))

    traced = jax.jit(lambda x: nc.gradient_flow(model, nc.Dataset(x, mnist.y, 3), **kw))
    out = traced(mnist.x)
    assert "crossings_located" in out.stats
    with pytest.raises(ValueError, match="unknown solver"):
        nc.gradient_flow(m, small_problem, t1=1.0, solver="automatic")


def test_the_solve_holds_the_datas_transpose_from_transpose_from_samples_on(getkey):
    """`solve_args` stores `X^T` for `TRANSPOSE_FROM` samples and more, on CPU, and
    `transposed` reads it (equal to `x.T`); below, the data go in as they are."""
    from neuralcollapse_jax import _flow
    from neuralcollapse_jax._dataset import WithTranspose, transposed

    n = _flow.TRANSPOSE_FROM
    x = jax.random.normal(getkey(), (n, 4))
    y = jnp.arange(n) % 3
    big, small = nc.Dataset(x, y), nc.Dataset(x[:-1], y[:-1])
    args = _flow.solve_args(big)
    assert isinstance(args, WithTranspose) == (jax.default_backend() == "cpu")
    assert not isinstance(_flow.solve_args(small), WithTranspose)
    stored = WithTranspose(big)
    np.testing.assert_array_equal(transposed(stored), np.asarray(x).T)
    np.testing.assert_array_equal(transposed(small), np.asarray(x[:-1]).T)
    assert stored.num_classes == big.num_classes and stored.x is big.x


def test_with_the_transpose_stored_the_default_call_matches_scipy(
    small_problem, transpose_stored
):
    """The default call with the data's transpose in the solve's `args`: relative
    error at most 1e-6 at every save time against SciPy's DOP853 (as
    `test_accuracy_against_scipy_dop853`)."""
    from neuralcollapse_jax import _flow
    from neuralcollapse_jax._dataset import WithTranspose

    assert isinstance(_flow.solve_args(small_problem), WithTranspose)
    model = nc.TwoLayerReLU.init(jax.random.key(1), 12, 8, 3, 1e-5)
    traj = _default_call_within_1e6_of_scipy(model, small_problem)
    assert int(traj.stats["crossings_located"] + traj.stats["crossings_started"]) > 0


def test_with_the_transpose_stored_vmap_over_data_equals_single_calls(transpose_stored):
    """`jax.vmap` over data sets (traced data: the transpose is formed per run inside
    the batched solve) against single calls, within the tolerance."""
    datas = [
        datasets.orthogonally_separable(jax.random.key(k), 3, 4, 9, 0.5, 0.2)
        for k in (0, 5)
    ]
    y = datas[0].y
    assert all(np.array_equal(d.y, y) for d in datas)
    model = nc.TwoLayerReLU.init(jax.random.key(1), 9, 6, 3, scale=0.1)

    def run(x):
        return nc.gradient_flow(model, nc.Dataset(x, y, 3), t1=1.0, saveat=[1.0]).final

    batched = jax.jit(jax.vmap(run))(jnp.stack([d.x for d in datas]))
    for b, d in enumerate(datas):
        single = _flat(run(d.x))
        got = _flat(nc.TwoLayerReLU(batched.W[b], batched.V[b]))
        assert np.linalg.norm(got - single) <= 1e-6 * np.linalg.norm(single)
