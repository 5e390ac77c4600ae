"""Max margins (KKT, scipy), Theorem 1's limit, assumption checks, time scales."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets, metrics, theory


@pytest.fixture(scope="module")
def data():
    base = datasets.orthogonally_separable(
        jax.random.key(3), 3, [5, 8, 11], 12, 0.4, 0.2, (0.5, 1.5)
    )
    return base


# ---------------------------------------------------------------- max margin


def test_max_margin_closed_forms():
    # One point: u = x/||x||, gamma = ||x||.
    mm = theory.max_margin(jnp.asarray([[3.0, 4.0]]))
    assert np.isclose(mm.gamma, 5.0) and np.allclose(mm.u, [0.6, 0.8])
    # Two orthogonal unit points (and a non-support point): the hull's closest point to
    # 0 is the midpoint, gamma = 1/sqrt(2).
    x = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    mm = theory.max_margin(x)
    assert np.isclose(mm.gamma, 1 / math.sqrt(2), rtol=1e-12)
    assert np.allclose(mm.u, [1 / math.sqrt(2)] * 2, atol=1e-12)
    assert np.allclose(mm.alpha, [0.5, 0.5, 0.0], atol=1e-12)
    # With a mask, the third point alone.
    mm = theory.max_margin(x, jnp.asarray([False, False, True]))
    assert np.isclose(mm.gamma, math.sqrt(8.0))


def _scipy_margin(x):
    """Hard-margin SVM through the origin, primal, by SLSQP: an independent method."""
    d = x.shape[1]
    res = minimize(
        lambda u: u @ u,
        x.mean(0) / np.linalg.norm(x.mean(0)) ** 2 * 2,
        jac=lambda u: 2 * u,
        constraints=[{"type": "ineq", "fun": lambda u: x @ u - 1.0, "jac": lambda u: x}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    assert res.success, res.message
    assert res.x.shape == (d,)
    # Polished on SLSQP's active set: the least-norm `u` with `x_A u = 1`, checked to be
    # the optimum (feasible, multipliers positive). SLSQP alone stops at about 1e-9
    # (SciPy 1.16 and later), too coarse for central differences at 1e-5.
    active = x @ res.x - 1.0 < 1e-6
    xa = x[active]
    lam = np.linalg.solve(xa @ xa.T, np.ones(len(xa)))
    u = xa.T @ lam
    assert np.all(lam > 0) and np.all(x @ u >= 1.0 - 1e-12)
    assert np.linalg.norm(u - res.x) < 1e-6 * np.linalg.norm(u)
    return 1.0 / np.linalg.norm(u), u / np.linalg.norm(u)


def test_class_max_margins_kkt_and_scipy(data):
    mm = theory.class_max_margins(data)
    x, y = np.asarray(data.x), np.asarray(data.y)
    assert mm.gamma.shape == (3,) and mm.u.shape == (3, 12) and mm.alpha.shape == (3, 24)
    assert np.all(np.asarray(mm.converged))
    for k in range(3):
        alpha = np.asarray(mm.alpha[k])
        u, gamma = np.asarray(mm.u[k]), float(mm.gamma[k])
        # Dual feasibility: a convex combination of the class's points only.
        assert np.all(alpha >= 0) and np.isclose(alpha.sum(), 1.0)
        assert np.all(alpha[y != k] == 0)
        p = alpha @ x
        # Stationarity: u is the normalized dual point; strong duality: gamma = ||p||.
        assert np.allclose(u, p / np.linalg.norm(p), atol=1e-12)
        assert np.isclose(gamma, np.linalg.norm(p), rtol=1e-10)
        # Primal feasibility and complementary slackness.
        margins = x[y == k] @ u
        assert np.all(margins >= gamma * (1 - 1e-10))
        support = alpha[y == k] > 1e-9
        assert support.any()
        np.testing.assert_allclose(margins[support], gamma, rtol=1e-10)
        # Independent second method.
        g_ref, u_ref = _scipy_margin(x[y == k])
        assert np.isclose(gamma, g_ref, rtol=1e-7)
        assert np.allclose(u, u_ref, atol=1e-6)


def test_max_margin_degenerate():
    # 0 in the convex hull: no positive margin.
    x = jnp.asarray([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    mm = theory.max_margin(x, max_steps=2000)
    assert not bool(mm.converged)
    assert not float(mm.gamma) > 1e-6 or np.isnan(float(mm.gamma))
    bad = nc.Dataset(jnp.concatenate([x, -x]), jnp.asarray([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="no positive margin"):
        theory.predicted_limit(bad, max_steps=2000)
    with pytest.raises(ValueError, match="empty"):
        theory.max_margin(x, jnp.zeros(3, dtype=bool))
    empty = nc.Dataset(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), jnp.asarray([0, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        theory.class_max_margins(empty)


def test_max_margin_float32(data):
    m64 = theory.class_max_margins(data)
    m32 = theory.class_max_margins(data.astype(jnp.float32))
    assert m32.gamma.dtype == jnp.float32
    np.testing.assert_allclose(m32.gamma, m64.gamma, rtol=1e-4)
    np.testing.assert_allclose(m32.u, m64.u, atol=1e-3)


def _two_point_margin(x1, x2):
    """Closed form: the minimum-norm point of the segment [x1, x2] (interior case)."""
    d = x2 - x1
    t = -(x1 @ d) / (d @ d)
    assert 0 < t < 1
    p = x1 + t * d
    return np.linalg.norm(p), p / np.linalg.norm(p)


def _central(f, x, dx, h):
    return [(a - b) / (2 * h) for a, b in zip(f(x + h * dx), f(x - h * dx))]


def test_max_margin_derivative_closed_form():
    """Two support points and a far third: the derivative of (gamma, u) in the points
    equals central differences of the closed form; forward equals reverse."""
    x = np.array([[1.0, 0.2, 0.1], [0.3, 1.1, 0.2], [3.0, 3.0, 2.0]])
    dx = np.random.default_rng(0).standard_normal(x.shape)
    dx[2] = 0.0  # (the closed form ignores the non-support point)
    mm = theory.max_margin(jnp.asarray(x))
    assert bool(mm.differentiable) and float(mm.alpha[2]) == 0.0

    def ours(x):
        m = theory.max_margin(x)
        return m.gamma, m.u

    _, (dg, du) = jax.jvp(ours, (jnp.asarray(x),), (jnp.asarray(dx),))
    ref_g, ref_u = _central(lambda x: _two_point_margin(x[0], x[1]), x, dx, 1e-6)
    # (Central differences are good to about eps/h = 1e-10 here.)
    scale = max(abs(ref_g), np.abs(ref_u).max())
    assert abs(float(dg) - ref_g) < 1e-8 * scale
    np.testing.assert_allclose(du, ref_u, atol=1e-8 * scale)
    # Reverse mode, and the dual weights: alpha_3 stays 0, the others sum to one.
    grad = jax.grad(lambda x: ours(x)[0])(jnp.asarray(x))
    assert np.isclose(float(jnp.sum(grad * dx)), float(dg), rtol=1e-12)
    _, dalpha = jax.jvp(lambda x: theory.max_margin(x).alpha, (jnp.asarray(x),), (dx,))
    assert float(dalpha[2]) == 0.0 and abs(float(jnp.sum(dalpha))) < 1e-14


def test_class_max_margin_derivatives_against_scipy():
    """Random points (several support vectors per class): the implicit derivatives of
    gamma_k and u_k against central differences of SciPy's SLSQP primal solution."""
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((20, 6))) + 0.3
    y = np.repeat([0, 1], 10)
    data = nc.Dataset(jnp.asarray(x), jnp.asarray(y))
    mm = theory.class_max_margins(data)
    assert np.all(np.asarray(mm.differentiable))
    assert np.sum(np.asarray(mm.alpha[0]) > 0) >= 3
    dx = rng.standard_normal(x.shape)

    def ours(x):
        m = theory.class_max_margins(nc.Dataset(x, data.y))
        return m.gamma, m.u

    _, (dg, du) = jax.jvp(ours, (data.x,), (jnp.asarray(dx),))
    for k in range(2):
        rows = y == k
        ref_g, ref_u = _central(lambda z: _scipy_margin(z), x[rows], dx[rows], 1e-5)
        assert abs(float(dg[k]) - ref_g) < 1e-6 * abs(ref_g), (k, float(dg[k]), ref_g)
        err = np.abs(np.asarray(du[k]) - ref_u).max() / np.abs(ref_u).max()
        assert err < 1e-6, (k, err)
    # Through the limit of Theorem 1: s_k and the predicted margin, jit and vmap.
    fn = jax.jit(lambda x: theory.predicted_limit(nc.Dataset(x, data.y)).s)
    _, ds = jax.jvp(fn, (data.x,), (jnp.asarray(dx),))
    ref_ds = jax.jvp(theory.margin_scales, (mm.gamma,), (dg,))[1]
    np.testing.assert_allclose(ds, ref_ds, rtol=1e-12)
    batch = jax.vmap(lambda x: theory.max_margin(x).gamma)
    grad = jax.grad(lambda x: theory.max_margin(x).gamma)
    grads = jax.vmap(grad)(data.x.reshape(2, 10, 6))
    single = grad(data.x[:10])
    np.testing.assert_allclose(grads[0], single, rtol=1e-12)
    np.testing.assert_allclose(batch(data.x.reshape(2, 10, 6)), mm.gamma, rtol=1e-12)


def test_max_margin_degenerate_derivative_reported(data):
    """With equal norms the generator puts every point of a class at the margin in a
    low-dimensional span: a perturbation changes the support, and `differentiable`
    says so. With unequal norms (the module's data) the support is regular."""
    assert np.all(np.asarray(theory.class_max_margins(data).differentiable))
    equal = datasets.orthogonally_separable(jax.random.key(3), 3, [5, 8, 11], 12, 0.4, 0.2)
    mm = theory.class_max_margins(equal)
    assert np.all(np.asarray(mm.converged))
    assert not np.any(np.asarray(mm.differentiable))
    # A tight point without weight: two copies of one point share the weight
    # arbitrarily (linearly dependent support), flagged too.
    x = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    assert not bool(theory.max_margin(x).differentiable)


# ---------------------------------------------------------------- Theorem 1 limit


def test_margin_scales():
    s = theory.margin_scales(jnp.asarray([1.0, 2.0, 4.0]))
    assert np.isclose(2 * jnp.sum(s**2), 1.0)
    inv = np.array([1.0, 0.5, 0.25])
    np.testing.assert_allclose(s, np.sqrt(inv / (2 * inv.sum())))
    np.testing.assert_allclose(theory.margin_scales(jnp.ones(4)), 1 / math.sqrt(8))


def _limit_model(limit, groups, out_dim, rng):
    """A network of Theorem 1's limit form: W_k = s_k u_k g_k^T, V_k = s_k e~_k g_k^T."""
    k = limit.s.shape[0]
    h = len(groups)
    g = np.zeros((k, h))
    for c in range(k):
        cols = np.flatnonzero(np.asarray(groups) == c)
        w = rng.uniform(0.2, 1.0, cols.size)
        g[c, cols] = w / np.linalg.norm(w)
    s, u = np.asarray(limit.s), np.asarray(limit.u)
    W = (u * s[:, None]).T @ g
    e = np.array([[-1.0, 1.0]]) if out_dim == 1 else np.asarray(nc.pseudo_labels(k))
    V = e @ (s[:, None] * g)
    return W, V


@pytest.mark.parametrize("binary", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_limit_distance_vanishes_at_the_predicted_limit(data, binary):
    rng = np.random.default_rng(0)
    if binary:
        keep = np.asarray(data.y) < 2
        d = nc.Dataset(data.x[keep], data.y[keep])
    else:
        d = data
    limit = theory.predicted_limit(d)
    k = d.num_classes
    groups = np.arange(9) % k
    W, V = _limit_model(limit, groups, 1 if binary else k, rng)
    # ||theta_bar|| = 1 by construction (sum_k 2 s_k^2 = 1).
    assert np.isclose(np.sum(W**2) + np.sum(V**2), 1.0)
    model = nc.TwoLayerReLU(jnp.asarray(17.0 * W), jnp.asarray(17.0 * V))
    out = theory.limit_distance(model, d, limit)
    for name in (
        "distance",
        "alignment",
        "norm_share_error",
        "self_duality",
        "orthogonality",
        "feature_error",
        "margin_error",
    ):
        assert abs(float(out[name])) < 1e-10, (name, out[name])
    np.testing.assert_allclose(out["norm_shares"], np.asarray(limit.s) ** 2, rtol=1e-10)
    np.testing.assert_allclose(out["cosines"], 1.0, atol=1e-12)
    # Measured by the metrics module, independently of limit_distance: NC2 = 0,
    # directional collapse, every class's minimum normalized margin equal to the
    # prediction.
    f = model.features(d.x)
    assert float(metrics.nc2(f, d.y, k)) < 1e-12
    np.testing.assert_allclose(metrics.directional_nc1(f, d.y, k), 0.0, atol=1e-12)
    margins = np.asarray(metrics.normalized_margins(model, d))
    m_star = float(theory.predicted_margin(limit, model.out_dim))
    for c in range(k):
        assert np.isclose(margins[np.asarray(d.y) == c].min(), m_star, rtol=1e-10)
    # A perturbed model is at a positive distance, and the recorder agrees under jit.
    pert = nc.TwoLayerReLU(model.W + 0.5 * rng.standard_normal(W.shape), model.V)
    rec = eqx.filter_jit(lambda r, m, dd: r(m, dd))(theory.LimitRecorder(limit), pert, d)
    direct = theory.limit_distance(pert, d, limit)
    assert float(rec["distance"]) > 1e-2
    for name in direct:
        np.testing.assert_allclose(rec[name], direct[name], rtol=1e-10)


def test_limit_distance_vmap(data):
    limit = theory.predicted_limit(data)
    rng = np.random.default_rng(1)
    Ws = jnp.asarray(rng.standard_normal((4, 12, 6)))
    Vs = jnp.asarray(rng.standard_normal((4, 3, 6)))
    out = jax.vmap(lambda W, V: theory.limit_distance(nc.TwoLayerReLU(W, V), data, limit))(
        Ws, Vs
    )
    for i in range(4):
        one = theory.limit_distance(nc.TwoLayerReLU(Ws[i], Vs[i]), data, limit)
        np.testing.assert_allclose(out["distance"][i], one["distance"], rtol=1e-10)


# ---------------------------------------------------------------- assumptions


def test_assumption1(data):
    c = theory.check_assumption1(data)
    mu_s, mu_d = datasets.separability(data)
    assert c.holds and np.isclose(c.slack, min(mu_s, mu_d))
    x = np.asarray(data.x).copy()
    y = np.asarray(data.y)
    x[0] = x[np.flatnonzero(y == 1)[0]]  # a class-0 point equal to a class-1 point
    c = theory.check_assumption1(nc.Dataset(x, y))
    assert not c.holds and c.slack < 0 and "cross-class cosine" in c.detail


def test_semi_local_and_balanced(data):
    model = nc.TwoLayerReLU.init(
        jax.random.key(0), 12, 12, 3, 1e-3, "semi_local", data=data
    )
    checks = {c.name.split(" (")[0]: c for c in theory.check_assumptions(model, data)}
    assert checks["Assumption 2"].holds and checks["Assumption 4"].holds
    # Swapping two output weights puts a neuron's v_j on the wrong class.
    V = np.asarray(model.V).copy()
    groups = np.asarray(metrics.neuron_groups(model))
    j = int(np.flatnonzero(groups == 0)[0])
    V[:, j] = np.roll(V[:, j], 1)
    bad = theory.check_semi_local(nc.TwoLayerReLU(model.W, jnp.asarray(V)), data)
    assert not bad.holds and bad.slack < 0 and f"[{j}" in bad.detail
    unbalanced = nc.TwoLayerReLU(model.W, 2.0 * model.V)
    assert not theory.check_balanced(unbalanced).holds


def test_data_condition_and_lemma2(data):
    mu_s, mu_d = datasets.separability(data)
    norms = np.linalg.norm(np.asarray(data.x), axis=1)
    lhs = norms.max() ** 2 / (norms.min() ** 2 * mu_d * mu_s**2)
    c = theory.check_data_condition(data)
    assert c.holds == (lhs < 3) and np.isclose(c.slack, 3 - lhs)
    tight = datasets.orthogonally_separable(jax.random.key(1), 3, 4, 12, 0.95, 0.48)
    assert theory.check_data_condition(tight).holds
    model = nc.TwoLayerReLU(jnp.full((12, 4), 0.01), jnp.full((3, 4), 0.02))
    assert np.isclose(theory.effective_eps(model), 0.02 * math.sqrt(3))
    bound = math.sqrt(3) / (16 * norms.max() * 2.0)
    assert np.isclose(theory.lemma2_eps_bound(data, 4), bound)
    assert theory.check_lemma2_eps(model, data).holds == (0.02 * math.sqrt(3) <= bound)


def test_nondegenerate_binary():
    x = jnp.asarray([[1.0, 0.2], [0.9, -0.1], [-1.0, 0.1]])
    y = jnp.asarray([1, 1, 0])
    d = nc.Dataset(x, y)
    W = jnp.asarray([[1.0, -1.0], [0.0, 0.3]])
    good = theory.check_nondegenerate(nc.TwoLayerReLU(W, jnp.asarray([[1.0, -1.0]])), d)
    assert good.holds and good.slack > 0
    no_minus = theory.check_nondegenerate(nc.TwoLayerReLU(W, jnp.asarray([[1.0, 1.0]])), d)
    assert not no_minus.holds and "N_- is empty" in no_minus.detail
    # A positive neuron exactly along x_bar_- violates the last condition.
    xm = np.asarray(x[2]) / np.linalg.norm(x[2])
    W2 = jnp.asarray(np.stack([xm, [-1.0, 0.3]], axis=1))
    W2 = W2.at[:, 1].set(jnp.asarray([-1.0, 0.0]))
    W3 = jnp.concatenate([W2, jnp.asarray([[1.0], [0.0]])], axis=1)
    aligned = theory.check_nondegenerate(
        nc.TwoLayerReLU(W3, jnp.asarray([[1.0, -1.0, 1.0]])), d
    )
    assert not aligned.holds and "aligned" in aligned.detail
    with pytest.raises(ValueError, match="binary"):
        theory.check_nondegenerate(nc.TwoLayerReLU(W, jnp.ones((3, 2))), d)


# ---------------------------------------------------------------- time scales


def test_alignment_horizon_and_iclr(data):
    n, xmax = data.num_samples, float(np.linalg.norm(np.asarray(data.x), axis=1).max())
    expected = math.log(1 / (math.sqrt(50) * 1e-4)) / (4 * n * xmax)
    assert np.isclose(theory.alignment_horizon(data, 50, 1e-4), expected)
    eps = jnp.asarray([1e-6, 1e-4, 1e-2])
    swept = jax.jit(jax.vmap(lambda e: theory.alignment_horizon(data, 50, e)))(eps)
    for e, t in zip(eps, swept):
        assert np.isclose(t, math.log(1 / (math.sqrt(50) * e)) / (4 * n * xmax))
    keep = np.asarray(data.y) < 2
    b = nc.Dataset(data.x[keep], data.y[keep])
    mu_s, mu_d = datasets.separability(b)
    assert np.isclose(theory.iclr_mu(b), min(mu_s, mu_d))
    xmin = float(np.linalg.norm(np.asarray(b.x), axis=1).min())
    t1 = 16 * math.log(b.num_samples) / (0.1 * math.sqrt(min(mu_s, mu_d)) * xmin)
    assert np.isclose(theory.iclr_t1(b, zeta=0.1, xi=0.3), t1)
    with pytest.raises(ValueError):
        theory.iclr_t1(b, zeta=0.0, xi=0.3)


def test_separation_time_sequences():
    ts = jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0])
    sep = jnp.asarray([False, True, False, True, True])
    assert float(theory.separation_time(ts, sep)) == 3.0
    assert float(theory.separation_time(ts, sep, persistent=False)) == 1.0
    assert np.isinf(theory.separation_time(ts, jnp.zeros(5, dtype=bool)))
    # Recorded as floats, with `inf` after a failed run: not separated there.
    rec = jnp.asarray([0.0, 1.0, 1.0, jnp.inf, jnp.inf])
    assert np.isinf(theory.separation_time(ts, rec))
    batch = jax.vmap(theory.separation_time, in_axes=(None, 0))(ts, jnp.stack([sep, ~sep]))
    np.testing.assert_array_equal(batch, [3.0, np.inf])
    # Batched arrays are read along their last axis, as the vmap reads them (the
    # argmax over all entries gave one time for the whole batch before).
    np.testing.assert_array_equal(
        theory.separation_time(ts, jnp.stack([sep, ~sep])), [3.0, np.inf]
    )
    per_run = jnp.stack([ts, 2 * ts])
    np.testing.assert_array_equal(
        theory.separation_time(per_run, jnp.stack([sep, sep])), [3.0, 6.0]
    )
    # One value per save time, or a clear error (it returned a time before).
    with pytest.raises(ValueError, match="one value of `separated` per save time"):
        theory.separation_time(ts, sep[:4])


def test_trajectory_separation_time():
    # Orthogonal classes e_1 (label 0), e_2 (label 1); a neuron rotates from active on
    # both classes to active on class 1 only.
    d = nc.Dataset(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), jnp.asarray([0, 1]))
    angles = np.array([0.25, 0.5, 0.75, 1.1, 1.2]) * np.pi / 2
    Ws = np.zeros((5, 2, 2))
    Ws[:, 0, 0], Ws[:, 1, 0] = 1.0, -0.5  # neuron 0: active on class 0 only
    Ws[:, 0, 1], Ws[:, 1, 1] = np.cos(angles), np.sin(angles)
    Vs = np.ones((5, 2, 2))
    models = nc.TwoLayerReLU(jnp.asarray(Ws), jnp.asarray(Vs))
    ts = jnp.arange(5.0)
    traj = nc.Trajectory(
        ts=ts,
        models=models,
        loss=jnp.zeros(5),
        records={},
        final=nc.TwoLayerReLU(jnp.asarray(Ws[-1]), jnp.asarray(Vs[-1])),
        stats={},
        status=jnp.asarray(0),
    )
    assert float(theory.trajectory_separation_time(traj, d)) == 3.0
    recorded = jax.vmap(
        lambda W, V: metrics.RECORDERS["separated"](nc.TwoLayerReLU(W, V), d)
    )(models.W, models.V)
    traj2 = nc.Trajectory(
        ts=ts,
        models=None,
        loss=jnp.zeros(5),
        records={"separated": recorded},
        final=traj.final,
        stats={},
        status=jnp.asarray(0),
    )
    assert float(theory.trajectory_separation_time(traj2)) == 3.0
    with pytest.raises(ValueError, match="no 'separated'"):
        theory.trajectory_separation_time(
            traj2.__class__(
                ts=ts,
                models=None,
                loss=jnp.zeros(5),
                records={},
                final=traj.final,
                stats={},
                status=jnp.asarray(0),
            )
        )
