"""Neural-collapse diagnostics against independent computations and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets, metrics


K, H, PER = 3, 7, (4, 6, 9)


def _rng(key):
    return np.random.default_rng(int(jax.random.key_data(key).ravel()[-1]))


def _random(key, sizes=PER, h=H, dtype=jnp.float64):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    feats = _rng(key).uniform(size=(labels.size, h))
    return jnp.asarray(feats, dtype=dtype), jnp.asarray(labels), len(sizes)


def _model(key, d, h, k, scale=1.0, balanced=False):
    """A random model built with numpy (cheap in eager mode)."""
    rng = _rng(key)
    W = rng.standard_normal((d, h))
    V = rng.standard_normal((k, h))
    if balanced:
        V = V / np.linalg.norm(V, axis=0) * np.linalg.norm(W, axis=0)
    return nc.TwoLayerReLU(jnp.asarray(scale * W), jnp.asarray(scale * V))


# ---------------------------------------------------------------- references (numpy)


def _ref_means(f, y, k):
    return np.stack([f[y == c].mean(0) for c in range(k)])


def _ref_nc1(f, y, k):
    f, y = np.asarray(f), np.asarray(y)
    mu = _ref_means(f, y, k)
    within = sum(np.sum((f[y == c] - mu[c]) ** 2) / np.sum(y == c) for c in range(k))
    between = np.sum((mu - mu.mean(0)) ** 2)
    return within / between


def _ref_nc1_papyan(f, y, k):
    f, y = np.asarray(f), np.asarray(y)
    n, h = f.shape
    mu = _ref_means(f, y, k)
    sw = np.zeros((h, h))
    for i in range(n):
        d = f[i] - mu[y[i]]
        sw += np.outer(d, d) / n
    mg = f.mean(0)
    sb = sum(np.outer(mu[c] - mg, mu[c] - mg) for c in range(k)) / k
    return np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / k


def _ref_nc2(f, y, k):
    mu = _ref_means(np.asarray(f), np.asarray(y), k)
    u = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    g = u @ u.T
    return np.linalg.norm(g / np.linalg.norm(g) - np.eye(k) / np.sqrt(k))


def _etf(k, dim, rng):
    """K unit vectors with pairwise cosines -1/(K-1), randomly rotated in R^dim."""
    e = np.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return np.concatenate([e, np.zeros((k, dim - k))], axis=1) @ q


# ---------------------------------------------------------------- NC1


def test_nc1_against_numpy(getkey):
    f, y, k = _random(getkey())
    assert np.isclose(metrics.nc1(f, y, k), _ref_nc1(f, y, k), rtol=1e-12)
    assert np.isclose(metrics.nc1_papyan(f, y, k), _ref_nc1_papyan(f, y, k), rtol=1e-9)


def test_nc1_exact_collapse_is_zero(getkey):
    means = jnp.asarray(_rng(getkey()).standard_normal((K, H)))
    y = jnp.asarray(np.repeat(np.arange(K), PER))
    f = means[y]
    assert abs(float(metrics.nc1(f, y, K))) < 1e-28
    assert abs(float(metrics.nc1_papyan(f, y, K))) < 1e-28
    np.testing.assert_allclose(metrics.directional_nc1(f, y, K), 0.0, atol=1e-15)


def test_nc1_invariances(getkey):
    f, y, k = _random(getkey())
    perm = np.array([2, 0, 1])
    y2 = jnp.asarray(perm)[y]
    for fn in (metrics.nc1, metrics.nc1_papyan, metrics.nc2, metrics.nc2_etf):
        base = fn(f, y, k)
        assert np.isclose(fn(37.5 * f, y, k), base, rtol=1e-10), fn.__name__
        assert np.isclose(fn(f, y2, k), base, rtol=1e-10), fn.__name__
        order = np.random.default_rng(0).permutation(f.shape[0])
        assert np.isclose(fn(f[order], y[order], k), base, rtol=1e-10), fn.__name__


def test_directional_nc1_parallel_features(getkey):
    # Features of a class are positive multiples of one direction: cosines are 1 but
    # the (length-sensitive) trace-ratio NC1 is not 0.
    dirs = jnp.asarray(_rng(getkey()).uniform(size=(K, H)))
    y = jnp.asarray(np.repeat(np.arange(K), PER))
    lengths = jnp.asarray(_rng(getkey()).uniform(0.5, 2.0, y.size))
    f = lengths[:, None] * dirs[y]
    np.testing.assert_allclose(metrics.within_class_cosines(f, y, K), 1.0, atol=1e-14)
    np.testing.assert_allclose(metrics.directional_nc1(f, y, K), 0.0, atol=1e-14)
    assert metrics.nc1(f, y, K) > 1e-3
    # Independent: mean cosine per class by numpy.
    g, _, _ = _random(getkey())
    cos = np.asarray(metrics.within_class_cosines(g, y, K))
    mu = _ref_means(np.asarray(g), np.asarray(y), K)[np.asarray(y)]
    ref = (
        np.sum(np.asarray(g) * mu, 1)
        / np.linalg.norm(g, axis=1)
        / np.linalg.norm(mu, axis=1)
    )
    np.testing.assert_allclose(cos, ref, rtol=1e-12)


# ---------------------------------------------------------------- NC2


def test_nc2_against_numpy(getkey):
    f, y, k = _random(getkey())
    assert np.isclose(metrics.nc2(f, y, k), _ref_nc2(f, y, k), rtol=1e-12)


def test_nc2_orthogonal_frame_and_etf():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(K), PER)
    # Orthogonal class means of different lengths: NC2 = 0.
    frame = np.eye(H)[:K] * np.array([[1.0], [3.0], [0.2]])
    f = jnp.asarray(frame[y])
    assert float(metrics.nc2(f, jnp.asarray(y), K)) < 1e-15
    assert float(metrics.class_orthogonality(f, jnp.asarray(y), K)) == 0.0
    # Equal-norm orthogonal means, centred, form an exact simplex ETF: nc2_etf = 0
    # whatever the class sizes.
    f1 = jnp.asarray(np.eye(H)[:K][y])
    assert float(metrics.nc2_etf(f1, jnp.asarray(y), K)) < 1e-14
    # A simplex ETF of unit means: closed form sqrt(2 - 2 sqrt((K-1)/K)) for nc2, 0 for
    # the ETF distance.
    for k in (2, 3, 5):
        yk = np.repeat(np.arange(k), 3)
        e = _etf(k, 8, rng)
        fk, yk = jnp.asarray(e[yk]), jnp.asarray(yk)
        expected = math.sqrt(2 - 2 * math.sqrt((k - 1) / k))
        assert np.isclose(metrics.nc2(fk, yk, k), expected, rtol=1e-12)
        assert float(metrics.nc2_etf(fk, yk, k)) < 1e-13
        assert float(metrics.etf_distance(jnp.asarray(e))) < 1e-13
        assert np.isclose(metrics.class_orthogonality(fk, yk, k), -1 / (k - 1))


# ---------------------------------------------------------------- NC3, NC4


def test_nc3_self_dual_limit():
    # V = E~ diag(s) Phi with orthonormal class directions: NC3 = 0 for equal s and
    # equals the independent value ||E~ diag(s)/||.|| - E~/sqrt(K)|| otherwise.
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(K), PER)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    phi = np.abs(q[:K]) * 0  # placeholder replaced below by non-negative orthonormal rows
    phi = np.zeros((K, H))
    for c in range(K):
        phi[c, 2 * c : 2 * c + 2] = [0.6, 0.8]
    lengths = rng.uniform(0.5, 2.0, y.size)
    f = jnp.asarray(lengths[:, None] * phi[y])
    e = np.asarray(nc.pseudo_labels(K))
    for s in (np.ones(K), np.array([0.5, 0.3, 0.2])):
        V = jnp.asarray(e @ np.diag(s) @ phi)
        m = e @ np.diag(s)
        expected = np.linalg.norm(m / np.linalg.norm(m) - e / np.sqrt(K))
        assert np.isclose(metrics.nc3(f, jnp.asarray(y), K, V), expected, atol=1e-14)
    assert float(metrics.nc3(f, jnp.asarray(y), K, jnp.asarray(e @ phi))) < 1e-14
    # Binary: V = s_+ phi_+ - s_- phi_- with equal s gives 0 (label 1 = +).
    yb = jnp.asarray(np.repeat([0, 1], [3, 4]))
    fb = jnp.asarray(phi[:2][np.asarray(yb)] * 2.0)
    vb = jnp.asarray((phi[1] - phi[0])[None, :])
    assert float(metrics.nc3(fb, yb, 2, vb)) < 1e-14
    assert metrics.nc3(fb, yb, 2, -vb) > 1.0
    with pytest.raises(ValueError, match="outputs"):
        metrics.nc3(f, jnp.asarray(y), K, jnp.zeros((2, H)))


def test_nc4_against_numpy(getkey):
    f, y, k = _random(getkey())
    V = jnp.asarray(_rng(getkey()).standard_normal((k, H)))
    fn, yn = np.asarray(f), np.asarray(y)
    mu = _ref_means(fn, yn, k)
    pred = np.argmax(fn @ np.asarray(V).T, 1)
    ncc = np.argmin(((fn[:, None] - mu[None]) ** 2).sum(-1), 1)
    assert np.isclose(metrics.nc4(f, y, k, V), np.mean(pred != ncc))
    # A self-dual classifier on collapsed features agrees everywhere.
    phi = np.eye(H)[:k]
    fc = jnp.asarray(phi[yn])
    assert (
        float(metrics.nc4(fc, y, k, jnp.asarray(np.asarray(nc.pseudo_labels(k)) @ phi)))
        == 0
    )


# ---------------------------------------------------------------- degenerate cases


def test_degenerate_cases(getkey):
    f, y, _ = _random(getkey())
    # Empty class: K = 4 with no sample of class 3.
    for fn in (metrics.nc1, metrics.nc1_papyan, metrics.nc2, metrics.nc2_etf):
        assert np.isnan(fn(f, y, 4)), fn.__name__
    assert np.isnan(metrics.nc3(f, y, 4, jnp.ones((4, H))))
    d = metrics.directional_nc1(f, y, 4)
    assert np.all(np.isfinite(d[:3])) and np.isnan(d[3])
    # Dead network: all features zero.
    z = jnp.zeros_like(f)
    for fn in (metrics.nc1, metrics.nc1_papyan, metrics.nc2, metrics.nc2_etf):
        assert np.isnan(fn(z, y, K)), fn.__name__
    assert np.isnan(metrics.nc3(z, y, K, jnp.ones((K, H))))
    assert np.isnan(metrics.nc4(z, y, K, jnp.ones((K, H))))
    assert np.isnan(metrics.stable_rank(jnp.zeros((3, 4))))
    # Single-point class: well defined, equal to the numpy reference.
    f1, y1, k1 = _random(getkey(), sizes=(1, 5, 4))
    assert np.isclose(metrics.nc1(f1, y1, k1), _ref_nc1(f1, y1, k1), rtol=1e-12)
    assert np.isfinite(metrics.nc2(f1, y1, k1))
    # Zero features of one sample: cosine 0 (not collapsed), not NaN.
    f2 = f.at[0].set(0.0)
    assert float(metrics.within_class_cosines(f2, y, K)[0]) == 0.0


# ---------------------------------------------------------------- weights, activations


def test_stable_rank_and_groups(getkey):
    a = jnp.asarray(_rng(getkey()).standard_normal((6, 4)))
    s = np.linalg.svd(np.asarray(a), compute_uv=False)
    assert np.isclose(metrics.stable_rank(a), np.sum(s**2) / s[0] ** 2, rtol=1e-12)
    assert np.isclose(metrics.stable_rank(jnp.outer(jnp.arange(1.0, 7), jnp.ones(4))), 1.0)
    assert np.isclose(metrics.stable_rank(jnp.eye(5)), 5.0)
    # Groups by argmax of <e~_k, v_j>, checked against the explicit pseudo-labels.
    model = _model(getkey(), 5, 9, K)
    e = np.asarray(nc.pseudo_labels(K))
    ref = np.argmax(e.T @ np.asarray(model.V), axis=0)
    np.testing.assert_array_equal(metrics.neuron_groups(model), ref)
    sr = metrics.group_stable_ranks(model)
    for c in range(K):
        cols = np.asarray(model.W)[:, ref == c]
        if cols.shape[1]:
            sv = np.linalg.svd(cols, compute_uv=False)
            assert np.isclose(sr[c], np.sum(sv**2) / sv[0] ** 2)
        else:
            assert np.isnan(sr[c])
    # Binary: group 1 = positive output weight.
    mb = _model(getkey(), 5, 9, 1)
    np.testing.assert_array_equal(metrics.neuron_groups(mb), np.asarray(mb.V[0] > 0))


def test_alignment_activity_margins(getkey):
    data = datasets.orthogonally_separable(getkey(), 3, [3, 4, 5], 12, 0.5, 0.2)
    model = _model(getkey(), 12, 6, 3)
    x, y, W = np.asarray(data.x), np.asarray(data.y), np.asarray(model.W)
    xbar = np.stack([x[y == c].sum(0) for c in range(3)])
    xbar /= np.linalg.norm(xbar, axis=1, keepdims=True)
    ref = xbar @ (W / np.linalg.norm(W, axis=0))
    np.testing.assert_allclose(metrics.neuron_alignment(model, data), ref, rtol=1e-12)
    act = (x @ W) > 0
    ref_act = np.stack([act[y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(metrics.activity(model, data), ref_act)
    summ = metrics.activation_summary(model, data)
    classes = (ref_act > 0).sum(0)
    assert int(summ["num_dead"]) == np.sum(classes == 0)
    assert int(summ["num_mixed"]) == np.sum(classes >= 2)
    assert bool(summ["separated"]) == bool(
        np.all(classes <= 1) and all((ref_act[c] == 1).any() for c in range(3))
    )
    # Margins: explicit loops.
    f = np.asarray(model(data.x))
    norm2 = np.sum(W**2) + np.sum(np.asarray(model.V) ** 2)
    ref_m = [(f[i, y[i]] - np.max(np.delete(f[i], y[i]))) / norm2 for i in range(len(y))]
    np.testing.assert_allclose(metrics.normalized_margins(model, data), ref_m, rtol=1e-12)
    # Scale invariance of the normalized margin (2-homogeneity).
    scaled = nc.TwoLayerReLU(3.0 * model.W, 3.0 * model.V)
    np.testing.assert_allclose(metrics.normalized_margins(scaled, data), ref_m, rtol=1e-12)


def test_binary_cones():
    # 1-D style example: x_+ = e_1, x_- = e_2 (orthogonal) in R^2.
    data = nc.Dataset(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), jnp.asarray([1, 0]))
    W = jnp.asarray([[1.0, 0.0, -1.0, 1.0], [-1.0, 1.0, -1.0, 1.0]])
    model = nc.TwoLayerReLU(W, jnp.ones((1, 4)))
    summ = metrics.activation_summary(model, data)
    # Neuron 0 in S_+, neuron 1 in S_-, neuron 2 in S_dead, neuron 3 mixed.
    np.testing.assert_array_equal(summ["exact"], [1, 1])
    assert int(summ["num_dead"]) == 1 and int(summ["num_mixed"]) == 1
    assert not bool(summ["separated"])
    assert bool(metrics.is_separated(nc.TwoLayerReLU(W[:, :3], jnp.ones((1, 3))), data))


# ---------------------------------------------------------------- jit, vmap, float32


@pytest.mark.slow
def test_jit_vmap_float32(getkey):
    f, y, k = _random(getkey())
    batch = jnp.stack([f, 2 * f, f**2])
    for fn in (metrics.nc1, metrics.nc1_papyan, metrics.nc2, metrics.nc2_etf):
        jitted = jax.jit(fn, static_argnums=2)
        vals = jax.jit(jax.vmap(fn, in_axes=(0, None, None)), static_argnums=2)(batch, y, k)
        ref = [jitted(b, y, k) for b in batch]
        np.testing.assert_allclose(vals, ref, rtol=1e-10)
        v32 = jitted(f.astype(jnp.float32), y, k)
        assert v32.dtype == jnp.float32
        assert np.isclose(v32, ref[0], rtol=1e-4)
    data = datasets.orthogonally_separable(getkey(), 3, 4, 12, 0.5, 0.2)
    model = _model(getkey(), 12, 6, 3)
    for name, fn in metrics.RECORDERS.items():
        out = jax.jit(fn)(model, data)
        m32 = jax.tree.map(lambda a: a.astype(jnp.float32), model)
        out32 = jax.jit(fn)(m32, data.astype(jnp.float32))
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out32)):
            np.testing.assert_allclose(
                np.asarray(a, np.float64),
                np.asarray(b, np.float64),
                rtol=1e-4,
                atol=1e-5,
                err_msg=name,
            )


def test_recorder_names():
    assert set(metrics.recorder("nc1", "nc2")) == {"nc1", "nc2"}
    assert metrics.recorder("nc1")["nc1"] is metrics.RECORDERS["nc1"]
    with pytest.raises(ValueError, match="unknown diagnostics"):
        metrics.recorder("nc9")


# ---------------------------------------------------------------- along the flow


@pytest.mark.slow
def test_recording_along_flow_matches_saved_models(getkey):
    data = datasets.orthogonally_separable(getkey(), 3, [4, 5, 6], 12, 0.5, 0.2)
    model = _model(getkey(), 12, 8, 3, 1e-2, balanced=True)
    ts = nc.log_times(20.0, 15)
    rec = metrics.standard_recorders() | metrics.recorder("balance", "alignment")
    light = nc.gradient_flow(model, data, t1=20.0, saveat=ts, record=rec, save_params=False)
    full = nc.gradient_flow(model, data, t1=20.0, saveat=ts, save_params=True)
    assert light.models is None
    assert int(light.status) == 0 and int(full.status) == 0
    for name, fn in rec.items():
        ref = jax.jit(jax.vmap(lambda W, V: fn(nc.TwoLayerReLU(W, V), data)))(
            full.models.W, full.models.V
        )
        for a, b in zip(jax.tree.leaves(light.records[name]), jax.tree.leaves(ref)):
            assert a.shape[0] == ts.size
            np.testing.assert_allclose(
                np.asarray(a, np.float64),
                np.asarray(b, np.float64),
                rtol=1e-9,
                atol=1e-12,
                err_msg=name,
            )
    # The balance ||w_j||^2 - ||v_j||^2 is conserved by the flow (0 for a balanced init,
    # while the norms grow by orders of magnitude).
    growth = light.records["weight_norm"][-1] / light.records["weight_norm"][0]
    assert growth > 10
    assert (
        np.max(np.abs(light.records["balance"]))
        < 1e-8 * light.records["weight_norm"][-1] ** 2
    )
    # Memory: the records hold O(K h) numbers per save time, no parameters.
    size = sum(x.size for x in jax.tree.leaves(light.records))
    assert size < ts.size * (3 * 8 * 2 + 8 + 40)


def test_recording_along_descent(getkey):
    data = datasets.orthogonally_separable(getkey(), 3, [4, 5, 6], 12, 0.5, 0.2)
    model = _model(getkey(), 12, 8, 3, 1e-2, balanced=True)
    traj = nc.gradient_descent(
        model,
        data,
        learning_rate=0.05,
        steps=50,
        record=metrics.recorder("nc1", "balance"),
        save_params=True,
    )
    ref = jax.jit(
        jax.vmap(
            lambda W, V: metrics.nc1(nc.TwoLayerReLU(W, V).features(data.x), data.y, 3)
        )
    )(traj.models.W, traj.models.V)
    np.testing.assert_allclose(traj.records["nc1"], ref, rtol=1e-10)


# ---------------------------------------------------------------- (model, data) form


FEATURE_METRICS = (
    "class_means",
    "nc1",
    "nc1_papyan",
    "within_class_cosines",
    "directional_nc1",
    "nc2",
    "nc2_etf",
    "class_orthogonality",
)


@pytest.mark.parametrize("out_dim", [3, pytest.param(1, marks=pytest.mark.slow)])
def test_model_form_equals_feature_form(getkey, out_dim):
    k = 3 if out_dim == 3 else 2
    sizes = [3, 4, 5][:k]
    data = datasets.orthogonally_separable(getkey(), k, sizes, 12, 0.5, 0.2)
    model = _model(getkey(), 12, 6, out_dim)
    f = model.features(data.x)  # relu(W^T x_i): the same features, so equal results
    f_np = np.maximum(np.asarray(data.x) @ np.asarray(model.W), 0.0)
    np.testing.assert_allclose(f, f_np, rtol=1e-14)
    for name in FEATURE_METRICS:
        fn = getattr(metrics, name)
        for a, b in zip(
            jax.tree.leaves(fn(model, data)), jax.tree.leaves(fn(f, data.y, k)), strict=True
        ):
            np.testing.assert_array_equal(a, b, err_msg=name)
    for fn in (metrics.nc3, metrics.nc4):
        assert fn(model, data) == fn(f, data.y, k, model.V)
    # Keyword calls of the feature form keep working.
    assert metrics.nc1(features=f, labels=data.y, num_classes=k) == metrics.nc1(
        f, data.y, k
    )


def test_model_form_bad_calls(getkey):
    data = datasets.orthogonally_separable(getkey(), 3, [3, 4, 5], 12, 0.5, 0.2)
    model = _model(getkey(), 12, 6, 3)
    f = model.features(data.x)
    with pytest.raises(ValueError, match="needs num_classes"):
        metrics.nc1(f, data.y)
    with pytest.raises(ValueError, match="Dataset as second argument"):
        metrics.nc1(model, data.y)
    with pytest.raises(ValueError, match="do not pass num_classes"):
        metrics.nc2(model, data, 3)
    with pytest.raises(ValueError, match="takes V from the model"):
        metrics.nc3(model, data, V=model.V)
    with pytest.raises(ValueError, match="needs the classifier V"):
        metrics.nc4(f, data.y, 3)
    with pytest.raises(ValueError, match="call it as"):
        metrics.nc1(f, data)


def test_summary_has_every_metric(getkey):
    data = datasets.orthogonally_separable(getkey(), 3, [3, 4, 5], 12, 0.5, 0.2)
    model = _model(getkey(), 12, 6, 3)
    s = metrics.summary(model, data)
    assert set(s) == {
        "nc1",
        "nc1_papyan",
        "directional_nc1",
        "nc2",
        "nc2_etf",
        "orthogonality",
        "nc3",
        "nc4",
        "min_margin",
        "separated",
    }
    f = np.maximum(np.asarray(data.x) @ np.asarray(model.W), 0.0)
    y = np.asarray(data.y)
    np.testing.assert_allclose(s["nc1"], _ref_nc1(f, y, 3), rtol=1e-12)
    np.testing.assert_allclose(s["nc1_papyan"], _ref_nc1_papyan(f, y, 3), rtol=1e-9)
    np.testing.assert_allclose(s["nc2"], _ref_nc2(f, y, 3), rtol=1e-12)
    for key, fn in (
        ("directional_nc1", metrics.directional_nc1),
        ("nc2_etf", metrics.nc2_etf),
        ("orthogonality", metrics.class_orthogonality),
        ("nc3", metrics.nc3),
        ("nc4", metrics.nc4),
        ("min_margin", metrics.min_normalized_margin),
        ("separated", metrics.is_separated),
    ):
        np.testing.assert_allclose(s[key], fn(model, data), rtol=1e-12, err_msg=key)
    assert s["separated"].dtype == bool and s["directional_nc1"].shape == (3,)
    # Under vmap over a batch of models (e.g. the saved models of a trajectory).
    batch = nc.TwoLayerReLU(
        jnp.stack([model.W, 2 * model.W]), jnp.stack([model.V, model.V])
    )
    sb = jax.vmap(lambda m: metrics.summary(m, data))(batch)
    np.testing.assert_allclose(sb["nc1"][0], s["nc1"], rtol=1e-12)
    with pytest.raises(ValueError, match="outputs"):
        metrics.summary(_model(getkey(), 12, 6, 4), data)
