"""Data sets: validation, the orthogonally separable generator, MNIST, toy sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import datasets


def _cosines(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


@pytest.mark.parametrize(
    "k,sizes,dim,mu_s,mu_d",
    [(3, (10, 20, 30), 30, 0.5, 0.2), (2, 15, 12, 0.3, 0.9), (5, 8, 40, 0.8, 0.05)],
)
def test_orthogonally_separable_meets_assumption_1(getkey, k, sizes, dim, mu_s, mu_d):
    data = datasets.orthogonally_separable(
        getkey(), k, sizes, dim, mu_s=mu_s, mu_d=mu_d, norm_range=(0.5, 3.0)
    )
    x, y = np.asarray(data.x), np.asarray(data.y)
    assert x.shape[1] == dim
    expected_sizes = [sizes] * k if isinstance(sizes, int) else list(sizes)
    np.testing.assert_array_equal(np.bincount(y, minlength=k), expected_sizes)
    # Independent check of Assumption 1 on the raw cosines.
    cos = _cosines(x)
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    diff = y[:, None] != y[None, :]
    assert cos[same].min() >= mu_s - 1e-12
    assert cos[diff].max() <= -mu_d + 1e-12
    norms = np.linalg.norm(x, axis=1)
    assert norms.min() >= 0.5 - 1e-12 and norms.max() <= 3.0 + 1e-12
    ms, md = datasets.separability(data)
    assert ms == pytest.approx(cos[same].min()) and md == pytest.approx(-cos[diff].max())


def test_separability_closed_form():
    # Two classes at 120 degrees in the plane, each a single direction.
    x = np.array([[1.0, 0.0], [2.0, 0.0], [-0.5, np.sqrt(3) / 2], [-1.0, np.sqrt(3)]])
    ms, md = datasets.separability(nc.Dataset(x, [0, 0, 1, 1]))
    assert ms == pytest.approx(1.0) and md == pytest.approx(0.5)


def test_impossible_geometry_is_refused(getkey):
    with pytest.raises(ValueError, match="mu_d"):
        datasets.orthogonally_separable(getkey(), 4, 5, 40, mu_s=0.5, mu_d=0.4)
    with pytest.raises(ValueError, match="mu_s"):
        datasets.orthogonally_separable(getkey(), 3, 5, 30, mu_s=0.0, mu_d=0.1)
    with pytest.raises(ValueError, match="dim"):
        datasets.orthogonally_separable(getkey(), 3, 5, 7, mu_s=0.5, mu_d=0.1)
    with pytest.raises(ValueError, match="points_per_class"):
        datasets.orthogonally_separable(getkey(), 3, (5, 5), 30)
    with pytest.raises(ValueError, match="norm_range"):
        datasets.orthogonally_separable(getkey(), 3, 5, 30, norm_range=(2.0, 1.0))


def test_block_orthogonal(getkey):
    data = datasets.block_orthogonal(getkey())
    x, y = np.asarray(data.x), np.asarray(data.y)
    assert x.shape == (60, 30)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)
    for k in range(3):
        outside = np.delete(x[y == k], np.s_[10 * k : 10 * k + 10], axis=1)
        assert np.all(outside == 0)
    assert datasets.separability(data)[1] == pytest.approx(0.0)


def test_mnist_counts_and_centering():
    data = datasets.mnist(digits=(0, 1, 2))
    assert data.x.shape == (3147, 784)
    np.testing.assert_array_equal(np.bincount(np.asarray(data.y)), [980, 1135, 1032])
    np.testing.assert_allclose(np.asarray(data.x).mean(axis=0), 0.0, atol=1e-12)
    raw = datasets.mnist(digits=(0, 1), center=False, per_class=100)
    assert raw.x.shape == (200, 784)
    assert float(raw.x.min()) == 0.0 and float(raw.x.max()) == 1.0
    # labels follow the order of `digits`
    swapped = datasets.mnist(digits=(1, 0), center=False, per_class=100)
    np.testing.assert_array_equal(np.asarray(swapped.y), 1 - np.asarray(raw.y))


def test_mnist_bad_digits():
    with pytest.raises(ValueError, match="digits"):
        datasets.mnist(digits=(3,))
    with pytest.raises(ValueError, match="digits"):
        datasets.mnist(digits=(1, 12))


def test_iclr_toy():
    d = datasets.iclr_toy("mu_small")
    cos = float(d.x[0] @ d.x[1])
    assert cos == pytest.approx(np.sin(0.001))
    assert datasets.iclr_toy("orthogonal").num_classes == 2
    with pytest.raises(ValueError, match="unknown toy"):
        datasets.iclr_toy("spiral")


@pytest.mark.parametrize(
    "x,y,match",
    [
        (np.ones((3,)), [0, 1, 1], "shape"),
        (np.ones((3, 2)), [0, 1], "labels"),
        (np.array([[1.0, np.nan], [0, 1], [1, 1]]), [0, 1, 1], "non-finite"),
        (np.ones((3, 2)), [0, 1, -1], ">= 0"),
        (np.ones((3, 2)), [0.5, 1, 1], "integer"),
        (np.ones((3, 2)), [1, 1, 1], "two classes"),
        (np.ones((0, 2)), np.zeros(0, int), "non-empty"),
    ],
)
def test_dataset_validation(x, y, match):
    with pytest.raises(ValueError, match=match):
        nc.Dataset(x, y)


def test_dataset_num_classes():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        nc.Dataset(np.ones((3, 2)), [0, 1, 2], num_classes=2)
    d = nc.Dataset(np.ones((2, 2)), [1, 1], num_classes=2)
    assert d.num_classes == 2
    np.testing.assert_array_equal(d.class_sizes(), [0, 2])
    assert d.astype(jnp.float32).x.dtype == jnp.float32


def test_dataset_with_traced_points_checks_its_labels():
    """Differentiating with respect to the points traces `x`: the labels, concrete,
    are still checked and give `num_classes`."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    def first_class_mean(x, y):
        d = nc.Dataset(x, y)
        assert d.num_classes == 3
        return jnp.sum(d.x[d.y == 0])

    g = jax.grad(first_class_mean)(x, np.array([0, 2, 0]))
    np.testing.assert_array_equal(np.asarray(g), [[1, 1], [0, 0], [1, 1]])
    with pytest.raises(ValueError, match=">= 0"):
        jax.grad(first_class_mean)(x, np.array([0, 2, -1]))


@pytest.mark.parametrize("mu_s,mu_d", [(0.5, 0.2), (0.2, 0.45)])  # sphere, orthant
def test_orthogonally_separable_is_differentiable_in_the_geometry(mu_s, mu_d):
    """With traced `mu_s`, `mu_d` the points are built in `jax.numpy`: equal to the
    NumPy construction to rounding, with derivatives equal to central differences of
    it."""

    def points(mu_s, mu_d):
        return datasets.orthogonally_separable(jax.random.key(3), 3, 4, 15, mu_s, mu_d).x

    concrete = np.asarray(points(mu_s, mu_d))
    traced = np.asarray(jax.jit(points)(mu_s, mu_d))
    np.testing.assert_allclose(traced, concrete, rtol=0, atol=1e-15)
    jac = jax.jacfwd(points, argnums=(0, 1))(mu_s, mu_d)
    for i, (ds, dd) in enumerate([(1e-6, 0.0), (0.0, 1e-6)]):
        plus = np.asarray(points(mu_s + ds, mu_d + dd))
        fd = (plus - np.asarray(points(mu_s - ds, mu_d - dd))) / 2e-6
        # (on the orthant the points do not depend on mu_s: b = max(mu_s - a, 0) = 0)
        sphere = mu_d * 2 <= (1 + mu_s) / 2
        assert (np.max(np.abs(fd)) > 0.1) == (sphere or i == 1)
        np.testing.assert_allclose(np.asarray(jac[i]), fd, rtol=0, atol=1e-8)
