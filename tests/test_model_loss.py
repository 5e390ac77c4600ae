"""The network, its initializations, and the losses against the papers' equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets


def _data(key, k=3, sizes=(4, 5, 6), dim=12):
    return datasets.orthogonally_separable(
        key, k, sizes, dim, mu_s=0.5, mu_d=0.2, norm_range=(0.5, 2.0)
    )


def test_forward_matches_sum_over_neurons(getkey):
    model = nc.TwoLayerReLU.init(getkey(), 5, 7, 3, 1.0)
    x = jax.random.normal(getkey(), (11, 5))
    W, V = np.asarray(model.W), np.asarray(model.V)
    expected = np.zeros((11, 3))
    for j in range(7):  # f(x) = sum_j v_j relu(<w_j, x>)
        expected += np.maximum(np.asarray(x) @ W[:, j], 0)[:, None] * V[:, j][None, :]
    np.testing.assert_allclose(model(x), expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(model.features(x), np.maximum(np.asarray(x) @ W, 0))


def test_relu_derivative_at_zero_is_zero_and_leak():
    g = jax.grad(lambda z: nc.activation(z))(0.0)
    assert g == 0.0
    assert jax.grad(lambda z: nc.activation(z, 0.1))(-1.0) == pytest.approx(0.1)
    assert jax.grad(lambda z: nc.activation(z, 0.1))(2.0) == 1.0


def test_init_scales_are_standard_deviations(getkey):
    m = nc.TwoLayerReLU.init(getkey(), 200, 300, 4, 1e-3)
    assert m.W.shape == (200, 300) and m.V.shape == (4, 300)
    assert float(jnp.std(m.W)) == pytest.approx(1e-3, rel=0.02)
    lecun = nc.TwoLayerReLU.init(getkey(), 200, 300, 4, 1e-3, init="lecun")
    assert float(jnp.std(lecun.W)) == pytest.approx(1e-3 / np.sqrt(200), rel=0.02)
    assert float(jnp.std(lecun.V)) == pytest.approx(1e-3 / np.sqrt(300), rel=0.05)


@pytest.mark.parametrize("out_dim", [1, 3])
def test_balanced_init(getkey, out_dim):
    m = nc.TwoLayerReLU.init(getkey(), 10, 20, out_dim, 1e-2, init="balanced")
    np.testing.assert_allclose(
        jnp.linalg.norm(m.W, axis=0), jnp.linalg.norm(m.V, axis=0), rtol=1e-12
    )


def test_semi_local_init_draws_from_data(getkey):
    data = _data(getkey())
    m = nc.TwoLayerReLU.init(getkey(), 12, 30, 3, 1e-3, init="semi_local", data=data)
    u = np.asarray(data.x / jnp.linalg.norm(data.x, axis=1, keepdims=True))
    E = np.asarray(nc.pseudo_labels(3))
    for j in range(30):
        w = np.asarray(m.W[:, j]) / 1e-3
        i = int(np.argmax(u @ w))
        np.testing.assert_allclose(w, u[i], atol=1e-12)
        np.testing.assert_allclose(
            np.asarray(m.V[:, j]) / 1e-3, E[:, int(data.y[i])], atol=1e-12
        )
    # balanced: ||w_j|| = ||v_j|| (the columns of E~ are unit vectors)
    np.testing.assert_allclose(jnp.linalg.norm(m.W, axis=0), jnp.linalg.norm(m.V, axis=0))


def test_pseudo_labels_simplex():
    E = np.asarray(nc.pseudo_labels(4))
    G = E.T @ E
    np.testing.assert_allclose(np.diag(G), 1.0, rtol=1e-14)
    off = G[~np.eye(4, dtype=bool)]
    np.testing.assert_allclose(off, -1 / 3, rtol=1e-13)


def test_init_is_vmappable_over_scale(getkey):
    key = getkey()
    scales = jnp.array([1e-1, 1e-4, 1e-8])
    batch = jax.vmap(lambda s: nc.TwoLayerReLU.init(key, 6, 5, 2, s))(scales)
    single = nc.TwoLayerReLU.init(key, 6, 5, 2, 1e-4)
    np.testing.assert_allclose(batch.W[1], single.W, rtol=1e-15, atol=0)


def test_augment():
    x = jnp.arange(6.0).reshape(3, 2)
    xa = nc.augment(x)
    np.testing.assert_array_equal(xa[:, -1], 1.0)
    # a hidden bias is the last input weight
    W = jnp.array([[1.0], [2.0], [-3.0]])
    model = nc.TwoLayerReLU(W, jnp.ones((1, 1)))
    np.testing.assert_allclose(model(xa)[:, 0], jnp.maximum(x @ W[:2, 0] - 3.0, 0))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_cross_entropy_value_and_gradient_match_paper_equations(getkey):
    """NeurIPS 2025 App. C.1: dw_j/dt = sum_i xi_ij <y_i - yhat_i, v_j> x_i and
    dv_j/dt = sum_i (y_i - yhat_i) relu(<x_i, w_j>), with yhat = softmax(f)."""
    data = _data(getkey())
    model = nc.TwoLayerReLU.init(getkey(), 12, 9, 3, 0.7)
    x, W, V = np.asarray(data.x), np.asarray(model.W), np.asarray(model.V)
    Y = np.eye(3)[np.asarray(data.y)]
    f = np.maximum(x @ W, 0) @ V.T
    expected = -np.sum(Y * np.log(_softmax(f)))
    assert float(nc.loss(model, data)) == pytest.approx(expected, rel=1e-13)
    assert float(nc.loss(model, data, reduction="mean")) == pytest.approx(
        expected / data.num_samples, rel=1e-13
    )
    R = Y - _softmax(f)
    xi = (x @ W > 0).astype(float)
    dW = np.zeros_like(W)
    dV = np.zeros_like(V)
    for j in range(W.shape[1]):
        for i in range(x.shape[0]):
            dW[:, j] += xi[i, j] * (R[i] @ V[:, j]) * x[i]
            dV[:, j] += R[i] * max(x[i] @ W[:, j], 0.0)
    grad = nc.gradient(model, data)
    np.testing.assert_allclose(-grad.W, dW, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(-grad.V, dV, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ["exponential", "logistic", "square"])
def test_binary_losses_match_closed_forms(getkey, name):
    data = _data(getkey(), k=2, sizes=(5, 7))
    model = nc.TwoLayerReLU.init(getkey(), 12, 6, 1, 0.8)
    x, W, V = np.asarray(data.x), np.asarray(model.W), np.asarray(model.V)
    s = 2.0 * np.asarray(data.y) - 1.0  # label 1 -> +1, label 0 -> -1
    f = (np.maximum(x @ W, 0) @ V.T)[:, 0]
    if name == "exponential":
        value, dldf = np.exp(-s * f), -s * np.exp(-s * f)
    elif name == "logistic":
        value, dldf = 2 * np.log1p(np.exp(-s * f)), -2 * s / (1 + np.exp(s * f))
    else:
        value, dldf = 0.5 * (f - s) ** 2, f - s
    assert float(nc.loss(model, data, name)) == pytest.approx(value.sum(), rel=1e-13)
    xi = (x @ W > 0).astype(float)
    dW = -(x.T @ (xi * dldf[:, None] * V[0][None, :]))
    dV = -(dldf @ np.maximum(x @ W, 0))[None, :]
    grad = nc.gradient(model, data, name)
    np.testing.assert_allclose(-grad.W, dW, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(-grad.V, dV, rtol=1e-11, atol=1e-13)


def test_logistic_gradient_at_zero_output_is_the_label(getkey):
    data = _data(getkey(), k=2, sizes=(3, 3))
    f = jnp.zeros((6, 1))
    g = jax.grad(lambda f: jnp.sum(nc.per_sample_loss("logistic", f, data.y, 2)))(f)
    np.testing.assert_allclose(-g[:, 0], data.signs(), rtol=1e-14)


def test_square_loss_multiclass(getkey):
    data = _data(getkey())
    model = nc.TwoLayerReLU.init(getkey(), 12, 6, 3, 0.5)
    f = np.asarray(model(data.x))
    Y = np.eye(3)[np.asarray(data.y)]
    assert float(nc.loss(model, data, "square")) == pytest.approx(
        0.5 * np.sum((f - Y) ** 2), rel=1e-13
    )


def test_bad_model_and_loss_inputs(getkey):
    with pytest.raises(ValueError, match="same width"):
        nc.TwoLayerReLU(jnp.ones((3, 4)), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="leak"):
        nc.TwoLayerReLU(jnp.ones((3, 4)), jnp.ones((2, 4)), leak=1.5)
    with pytest.raises(ValueError, match="floating"):
        nc.TwoLayerReLU(jnp.ones((3, 4), int), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="unknown init"):
        nc.TwoLayerReLU.init(getkey(), 3, 4, 2, 0.1, init="xavier")
    with pytest.raises(ValueError, match="scale"):
        nc.TwoLayerReLU.init(getkey(), 3, 4, 2, -0.1)
    with pytest.raises(ValueError, match="scale"):
        nc.TwoLayerReLU.init(getkey(), 3, 4, 2, float("nan"))
    with pytest.raises(ValueError, match="width"):
        nc.TwoLayerReLU.init(getkey(), 3, 0, 2, 0.1)
    with pytest.raises(ValueError, match="needs the data"):
        nc.TwoLayerReLU.init(getkey(), 3, 4, 2, 0.1, init="semi_local")
    data = _data(getkey())
    model = nc.TwoLayerReLU.init(getkey(), 12, 4, 3, 0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        nc.loss(model, data, "hinge")
    with pytest.raises(ValueError, match="binary"):
        nc.loss(model, data, "exponential")
    with pytest.raises(ValueError, match="reduction"):
        nc.loss(model, data, reduction="max")
    with pytest.raises(ValueError, match="out_dim"):
        nc.loss(nc.TwoLayerReLU.init(getkey(), 12, 4, 2, 0.1), data)


def test_cross_entropy_keeps_precision_for_tiny_losses():
    """Late in the flow the loss falls below float resolution; the gradient must not
    round to zero. Closed form: l = log(1 + S), S = sum_{k != y} exp(f_k - f_y)."""
    f = jnp.array([[60.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, 45.0, -3.0]])
    y = jnp.array([0, 1, 1])
    per = nc.per_sample_loss("cross_entropy", f, y, 3)
    grad = jax.grad(lambda f: jnp.sum(nc.per_sample_loss("cross_entropy", f, y, 3)))(f)
    fn = np.asarray(f)
    for i, yi in enumerate(np.asarray(y)):
        d = fn[i] - fn[i, yi]
        e = np.exp(np.where(np.arange(3) == yi, -np.inf, d))
        S = e.sum()
        assert float(per[i]) == pytest.approx(np.log1p(S), rel=1e-14)
        expected = e / (1 + S)
        expected[yi] = -S / (1 + S)
        np.testing.assert_allclose(grad[i], expected, rtol=1e-13, atol=0)
    assert float(per[0]) > 0 and float(grad[0, 0]) < 0  # not rounded away


@pytest.mark.parametrize(
    "name, cls, out_dim, k",
    [
        ("cross_entropy", nc.CrossEntropy, 3, 3),
        pytest.param("exponential", nc.Exponential, 1, 2, marks=pytest.mark.slow),
        pytest.param("logistic", nc.Logistic, 1, 2, marks=pytest.mark.slow),
        pytest.param("square", nc.Square, 3, 3, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("reduction", ["sum", pytest.param("mean", marks=pytest.mark.slow)])
def test_loss_names_and_objects_agree(getkey, name, cls, out_dim, k, reduction):
    """A name with a reduction and the loss object give the same loss, gradient and
    flow bit for bit; `as_loss` returns objects as given."""
    data = _data(getkey(), k=k, sizes=(4, 5, 6)[:k])
    model = nc.TwoLayerReLU.init(getkey(), 12, 6, out_dim, 0.5)
    obj = cls(reduction=reduction)
    assert nc.as_loss(name, reduction) == obj
    assert nc.as_loss(obj) is obj and nc.as_loss(obj, reduction) is obj
    assert obj.name == name and name in nc.LOSS_NAMES
    assert float(nc.loss(model, data, name, reduction)) == float(nc.loss(model, data, obj))
    g_name = nc.gradient(model, data, name, reduction)
    g_obj = nc.gradient(model, data, obj)
    np.testing.assert_array_equal(g_name.W, g_obj.W)
    np.testing.assert_array_equal(g_name.V, g_obj.V)
    kw = dict(t1=1.0, saveat=np.array([0.0, 1.0]), rtol=1e-6, solver="regular")
    a = nc.gradient_flow(model, data, loss=name, reduction=reduction, **kw)
    b = nc.gradient_flow(model, data, loss=obj, **kw)
    np.testing.assert_array_equal(a.final.W, b.final.W)
    gd = dict(learning_rate=1e-2, steps=5, save_steps=np.array([0, 5]))
    c = nc.gradient_descent(model, data, loss=name, reduction=reduction, **gd)
    d = nc.gradient_descent(model, data, loss=obj, **gd)
    np.testing.assert_array_equal(c.final.W, d.final.W)


def test_as_loss_bad_input():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        nc.as_loss("hinge")
    with pytest.raises(ValueError, match="unknown loss"):
        nc.as_loss(3)
    with pytest.raises(ValueError, match="reduction"):
        nc.as_loss("square", "max")
    with pytest.raises(ValueError, match="reduction"):
        nc.Square(reduction="max")
    with pytest.raises(ValueError, match="conflicts"):
        nc.as_loss(nc.Square(reduction="sum"), "mean")
    with pytest.raises(ValueError, match="binary"):
        nc.Logistic().check(3, 3)
    with pytest.raises(ValueError, match="out_dim = K = 3"):
        nc.CrossEntropy().check(1, 3)
    with pytest.raises(ValueError, match="K = 2"):
        nc.Square().check(1, 3)


def test_loss_objects_against_hand_formulas(getkey):
    """Per-sample values, the reduced value (with and without weights) and the output
    residual `-dL/df` of each loss object, against closed forms in NumPy."""
    f3 = np.asarray(jax.random.normal(getkey(), (6, 3)))
    f1 = np.asarray(jax.random.normal(getkey(), (6, 1)))
    y3 = np.array([0, 1, 2, 2, 1, 0])
    y2 = np.array([0, 1, 1, 0, 1, 0])
    s = 2.0 * y2 - 1.0
    w = np.array([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])
    Y = np.eye(3)[y3]
    p = _softmax(f3)
    cases = [
        # (loss, f, y, K, per-sample l, dl/df)
        (nc.CrossEntropy(), f3, y3, 3, -np.log(np.sum(p * Y, axis=1)), p - Y),
        (
            nc.Exponential(),
            f1,
            y2,
            2,
            np.exp(-s * f1[:, 0]),
            (-s * np.exp(-s * f1[:, 0]))[:, None],
        ),
        (
            nc.Logistic(),
            f1,
            y2,
            2,
            2 * np.log1p(np.exp(-s * f1[:, 0])),
            (-2 * s / (1 + np.exp(s * f1[:, 0])))[:, None],
        ),
        (nc.Square(), f3, y3, 3, 0.5 * np.sum((f3 - Y) ** 2, axis=1), f3 - Y),
        (nc.Square(), f1, y2, 2, 0.5 * (f1[:, 0] - s) ** 2, f1 - s[:, None]),
    ]
    for loss, f, y, k, per, dldf in cases:
        data = nc.Dataset(np.zeros((6, 2)), y, k)
        fj = jnp.asarray(f)
        np.testing.assert_allclose(loss.per_sample(fj, jnp.asarray(y), k), per, rtol=1e-13)
        assert float(loss.value(fj, data.y, k)) == pytest.approx(per.sum(), rel=1e-13)
        np.testing.assert_allclose(loss.residual(fj, data), -dldf, rtol=1e-12, atol=1e-15)
        mean = type(loss)(reduction="mean")
        assert float(mean.value(fj, data.y, k)) == pytest.approx(per.mean(), rel=1e-13)
        weighted = float(mean.value(fj, data.y, k, jnp.asarray(w)))
        assert weighted == pytest.approx(np.sum(w * per) / w.sum(), rel=1e-13)
        np.testing.assert_allclose(
            mean.residual(fj, data), -dldf / len(y), rtol=1e-12, atol=1e-15
        )
