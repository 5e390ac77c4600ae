"""Data sets: orthogonally separable generators, MNIST, and the papers' toy examples.

All generators return a `Dataset`. Assumption 1 of Min, Zhu and Vidal (NeurIPS 2025):
there are `0 < mu_s <= 1` and `mu_d > 0` with

    <x_i/||x_i||, x_j/||x_j||> >= mu_s   if y_i = y_j,
    <x_i/||x_i||, x_j/||x_j||> <= -mu_d  if y_i != y_j.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._dataset import Dataset


__all__ = [
    "block_orthogonal",
    "iclr_toy",
    "max_mu_d",
    "mnist",
    "orthogonally_separable",
    "separability",
]


def max_mu_d(num_classes: int) -> float:
    """Largest `mu_d` that `K` classes can have: `1/(K-1)`.

    With one unit vector `u_k` per class, `0 <= ||sum_k u_k||^2 <= K - K(K-1) mu_d`, so
    `mu_d <= 1/(K-1)`. (The NeurIPS paper's footnote states the weaker `1/sqrt(K-1)`.)
    """
    return 1.0 / (num_classes - 1)


def _class_sizes(num_classes: int, points_per_class: int | Sequence[int]) -> list[int]:
    if isinstance(points_per_class, int | np.integer):
        sizes = [int(points_per_class)] * num_classes
    else:
        sizes = [int(s) for s in points_per_class]
        if len(sizes) != num_classes:
            raise ValueError(
                f"points_per_class has {len(sizes)} entries but num_classes is "
                f"{num_classes}"
            )
    if any(s < 1 for s in sizes):
        raise ValueError(f"every class needs at least one point, got sizes {sizes}")
    return sizes


def orthogonally_separable(
    key: PRNGKeyArray,
    num_classes: int = 3,
    points_per_class: int | Sequence[int] = 20,
    dim: int = 30,
    mu_s: float = 0.5,
    mu_d: float = 0.1,
    norm_range: tuple[float, float] = (1.0, 1.0),
    rotate: bool = True,
    dtype=None,
) -> Dataset:
    r"""K classes satisfying Assumption 1 with the requested `(mu_s, mu_d)`.

    Construction: a regular simplex `c_1..c_K` (`<c_k, c_l> = -1/(K-1)`), one shared
    direction `m_k` per class and a private subspace `P_k` of dimension
    `p = (dim - 2K) // K` per class, all mutually orthogonal. A unit point of class `k` is

        x = sqrt(a) c_k + sqrt(b) m_k + sqrt(c) g,   g uniform on the sphere of P_k,

    with `a = mu_d (K-1)`, `b = (1 + mu_s)/2 - a`, `c = (1 - mu_s)/2`. Then any two points
    of different classes have cosine exactly `-mu_d` and two points of the same class
    have cosine `a + b + c <g, g'> >= a + b - c = mu_s`. When `a > (1 + mu_s)/2` (large
    `mu_d`), `g` is drawn on the positive orthant of `P_k` instead, with
    `b = max(mu_s - a, 0)` and `c = 1 - a - b`, so that `<g, g'> >= 0` and the in-class
    cosines are `>= a + b >= mu_s`. Either way the requested `(mu_s, mu_d)` hold; the
    measured `separability` can only be larger. Points are scaled to norms uniform in
    `norm_range` and (if `rotate`) rotated by a random orthogonal matrix. With `p = 1`
    (e.g. `K = 3` in `dim = 9`) the sphere of `P_k` is two points, so each class has
    at most two distinct directions, and points repeat; pass a larger `dim` for
    distinct points.

    **Arguments:**

    - `key`: PRNG key.
    - `num_classes`: `K >= 2`.
    - `points_per_class`: an int or one size per class.
    - `dim`: `D`; must be at least `3K` when `mu_s < 1` (`2K` when `mu_s = 1`).
    - `mu_s`: within-class cosine lower bound, in `(0, 1]`.
    - `mu_d`: cross-class cosine bound, in `[0, 1/(K-1)]` (no data set can have more).
    - `norm_range`: `(X_min, X_max)`, `0 < X_min <= X_max`.
    - `rotate`: apply a random rotation (otherwise the blocks are axis-aligned).

    `mu_s` and `mu_d` may be traced (`jax.grad`, `jax.jvp`, `jax.vmap`, `jax.jit`):
    the points are then built in `jax.numpy` (equal to the NumPy construction to
    rounding) and are differentiable in both, for `mu_s < 1` (at `mu_s = 1` the
    private part's weight `sqrt(c)` has no derivative). Traced values are not checked,
    and `dim` must be at least `3K`. On the orthant branch the points do not depend on
    `mu_s`.

    **Raises:** `ValueError` for impossible requests, naming the parameter.
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    k = int(num_classes)
    sizes = _class_sizes(k, points_per_class)
    # Traced `mu_s`, `mu_d` or `key` (under `jax.grad`, `jax.jvp`, `jax.vmap`, `jax.jit`):
    # the same construction in `jax.numpy`, differentiable in `mu_s` and `mu_d`.
    # Concrete ones are checked and built in NumPy, in float64 (so the points do not
    # depend on the backend).
    traced = any(isinstance(v, jax.core.Tracer) for v in (mu_s, mu_d, key))
    xp = jnp if traced else np
    if not traced:
        if not 0.0 < mu_s <= 1.0:
            raise ValueError(f"mu_s must be in (0, 1], got {mu_s}")
        if not 0.0 <= mu_d <= max_mu_d(k) + 1e-15:
            raise ValueError(
                f"mu_d = {mu_d} is impossible for K = {k} classes: it must be in "
                f"[0, 1/(K-1)] = [0, {max_mu_d(k):.6g}]"
            )
    a = mu_d * (k - 1)
    # Private noise on the whole sphere of P_k when the budget allows it; otherwise on
    # its positive orthant, where <g, g'> >= 0 makes every in-class cosine >= a + b.
    orthant = a > (1.0 + mu_s) / 2.0
    b = xp.where(orthant, xp.maximum(mu_s - a, 0.0), (1.0 + mu_s) / 2.0 - a)
    c = xp.where(orthant, 1.0 - a - xp.maximum(mu_s - a, 0.0), (1.0 - mu_s) / 2.0)
    lo, hi = norm_range
    if not (0.0 < lo <= hi and np.isfinite(hi)):
        raise ValueError(f"norm_range must satisfy 0 < min <= max < inf, got {norm_range}")
    p = (dim - 2 * k) // k
    # Under tracing `c` is unknown: a private subspace is then required (mu_s < 1).
    if (traced or c > 0) and p < 1:
        raise ValueError(f"dim must be at least 3K = {3 * k} for mu_s < 1, got {dim}")
    if dim < 2 * k:
        raise ValueError(f"dim must be at least 2K = {2 * k}, got {dim}")
    if dtype is None:
        dtype = jnp.result_type(float)

    k_noise, k_norm, k_rot = jax.random.split(key, 3)
    n = sum(sizes)
    labels = np.repeat(np.arange(k), sizes)

    def draw(array):
        return array if traced else np.asarray(array, dtype=np.float64)

    # Simplex vertices in the first K coordinates: sqrt(K/(K-1)) (e_k - 1/K).
    simplex = np.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k)
    # The three parts of each point, then their weights sqrt(a), sqrt(b), sqrt(c).
    centre = np.zeros((n, dim))
    centre[:, :k] = simplex[labels]
    shared = np.zeros((n, dim))
    shared[np.arange(n), k + labels] = 1.0
    private = np.zeros((n, dim))
    if p >= 1:
        g = draw(jax.random.normal(k_noise, (n, p)))
        g = g / xp.linalg.norm(g, axis=1, keepdims=True)
        g = xp.where(orthant, xp.abs(g), g)
        # Class k's private coordinates [2K + k p, 2K + (k+1) p).
        rows = np.arange(n)[:, None]
        cols = 2 * k + labels[:, None] * p + np.arange(p)[None, :]
        if traced:
            private = jnp.zeros((n, dim), g.dtype).at[rows, cols].set(g)
        else:
            private[rows, cols] = g

    def root(v):  # sqrt, with derivative 0 (not NaN) where a weight is 0
        return xp.where(v > 0, xp.sqrt(xp.where(v > 0, v, 1.0)), 0.0)

    x = root(a) * centre + root(b) * shared + root(c) * private
    norms = draw(jax.random.uniform(k_norm, (n,), minval=lo, maxval=hi))
    if lo == hi:
        norms = np.full(n, lo)
    x = x / xp.linalg.norm(x, axis=1, keepdims=True) * norms[:, None]
    if rotate:
        q, r = xp.linalg.qr(draw(jax.random.normal(k_rot, (dim, dim))))
        q = q * xp.sign(xp.diag(r))[None, :]
        x = x @ q.T
    return Dataset(jnp.asarray(x, dtype=dtype), jnp.asarray(labels), k)


def block_orthogonal(
    key: PRNGKeyArray,
    num_classes: int = 3,
    points_per_class: int | Sequence[int] = 20,
    block_dim: int = 10,
    spread: float = 0.5,
    dtype=None,
) -> Dataset:
    r"""Classes on mutually orthogonal coordinate blocks (`mu_d = 0`).

    Class `k` lives on coordinates `[k b, (k+1) b)` of `D = K b`; a point is
    `|e_1 + spread * g / sqrt(b)|` (elementwise absolute value, `g` standard normal) on its
    block, normalized to unit length. With the defaults this is the synthetic problem of
    the project's sweep benchmarks (K = 3, 20 points per class, D = 30).
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    if int(block_dim) != block_dim or block_dim < 1:
        raise ValueError(f"block_dim must be a positive integer, got {block_dim}")
    if not np.isfinite(spread) or spread < 0:
        raise ValueError(f"spread must be finite and >= 0, got {spread}")
    k = int(num_classes)
    sizes = _class_sizes(k, points_per_class)
    if dtype is None:
        dtype = jnp.result_type(float)
    n = sum(sizes)
    labels = np.repeat(np.arange(k), sizes)
    g = np.asarray(jax.random.normal(key, (n, block_dim)), dtype=np.float64)
    e1 = np.zeros(block_dim)
    e1[0] = 1.0
    blocks = np.abs(e1 + spread * g / np.sqrt(block_dim))
    blocks = blocks / np.linalg.norm(blocks, axis=1, keepdims=True)
    x = np.zeros((n, k * block_dim))
    for cls in range(k):
        rows = labels == cls
        x[rows, cls * block_dim : (cls + 1) * block_dim] = blocks[rows]
    return Dataset(jnp.asarray(x, dtype=dtype), jnp.asarray(labels), k)


def separability(data: Dataset) -> tuple[float, float]:
    r"""Measured `(mu_s, mu_d)` of a data set (Assumption 1).

    `mu_s = min` cosine over pairs of distinct samples of the same class (1 if no class
    has two samples) and `mu_d = -max` cosine over pairs from different classes. The
    data are orthogonally separable iff both are positive.
    """
    x = np.asarray(data.x, dtype=np.float64)
    y = np.asarray(data.y)
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError("separability is undefined for a zero sample")
    u = x / norms[:, None]
    cos = u @ u.T
    same = y[:, None] == y[None, :]
    np.fill_diagonal(same, False)
    diff = y[:, None] != y[None, :]
    mu_s = float(cos[same].min()) if same.any() else 1.0
    if not diff.any():
        raise ValueError("separability needs samples from at least two classes")
    mu_d = float(-cos[diff].max())
    return mu_s, mu_d


@functools.cache
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    root = importlib.resources.files("neuralcollapse_jax") / "data" / "mnist"
    with (root / "t10k-images-idx3-ubyte.gz").open("rb") as f:
        raw = gzip.decompress(f.read())
    if int.from_bytes(raw[:4], "big") != 2051:
        raise ValueError("corrupt MNIST image file (bad magic number)")
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 784)
    with (root / "t10k-labels-idx1-ubyte.gz").open("rb") as f:
        raw = gzip.decompress(f.read())
    if int.from_bytes(raw[:4], "big") != 2049:
        raise ValueError("corrupt MNIST label file (bad magic number)")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    return images, labels


def mnist(
    digits: Sequence[int] = (0, 1, 2),
    center: bool = True,
    per_class: int | None = None,
    dtype=None,
) -> Dataset:
    r"""MNIST test-set digits, shipped with the package (CC BY-SA 3.0, LeCun et al.).

    Pixels are scaled to `[0, 1]`, images flattened to `D = 784`. Labels are the index
    of each digit in `digits` (so `digits=(0, 1)` gives label 1 for the digit 1: the
    positive class of the binary losses).

    **Arguments:**

    - `digits`: which digits, at least two, distinct, in 0..9.
    - `center`: subtract the mean image of the selected samples. (The papers center by
      the training-set mean; only the 10,000-image test set ships here.)
    - `per_class`: keep the first `per_class` images of each digit in file order (all
      if None). E.g. `mnist(per_class=100)` is the benchmark problem M300.
    - `dtype`: floating dtype (default: JAX's default float).
    """
    digits = tuple(int(d) for d in digits)
    if len(digits) < 2 or len(set(digits)) != len(digits):
        raise ValueError(f"digits must be at least two distinct digits, got {digits}")
    if any(not 0 <= d <= 9 for d in digits):
        raise ValueError(f"digits must be in 0..9, got {digits}")
    if per_class is not None and (int(per_class) != per_class or per_class < 1):
        raise ValueError(f"per_class must be a positive integer, got {per_class}")
    images, labels = _mnist_raw()
    keep = []
    for d in digits:
        idx = np.flatnonzero(labels == d)
        keep.append(idx if per_class is None else idx[:per_class])
    idx = np.sort(np.concatenate(keep))
    x = images[idx].astype(np.float64) / 255.0
    lookup = np.zeros(10, dtype=np.int32)
    lookup[list(digits)] = np.arange(len(digits))
    y = lookup[labels[idx]]
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    if dtype is None:
        dtype = jnp.result_type(float)
    return Dataset(jnp.asarray(x, dtype=dtype), jnp.asarray(y), len(digits))


def iclr_toy(name: str, dtype=None) -> Dataset:
    r"""The explicit 2-D examples of Min, Mallada and Vidal (ICLR 2024, App. A).

    - `"mu_large"`: two positive points `[1, 0]` and `[sin 0.1, cos 0.1]` (App. A.2).
    - `"mu_small"`: two positive points `[1, 0]` and `[sin 0.001, cos 0.001]`: smaller
      `mu`, slower alignment (App. A.2, Figs. 7-8).
    - `"orthogonal"`: `[1, 0]` and `[0, 1]`, both positive (App. A.3, Fig. 9).

    These sets hold positive samples only (label 1, `K = 2`, for `out_dim = 1` and the
    exponential or logistic loss).
    """
    angles = {"mu_large": 0.1, "mu_small": 0.001}
    if name in angles:
        a = angles[name]
        x = np.array([[1.0, 0.0], [np.sin(a), np.cos(a)]])
    elif name == "orthogonal":
        x = np.array([[1.0, 0.0], [0.0, 1.0]])
    else:
        raise ValueError(
            f"unknown toy set {name!r}; choose one of 'mu_large', 'mu_small', 'orthogonal'"
        )
    if dtype is None:
        dtype = jnp.result_type(float)
    return Dataset(jnp.asarray(x, dtype=dtype), jnp.ones(2, dtype=jnp.int32), 2)
