r"""Neural-collapse diagnostics of a two-layer ReLU network.

Every function here is a pure function of arrays of fixed shape (class sums are one-hot
matrix products, never boolean indexing), so it works under `jax.jit` and `jax.vmap` and
can be recorded along a run with `gradient_flow(..., record=...)` or
`gradient_descent(..., record=...)`, which store the values at the save times through
Diffrax's `SaveAt(fn=...)` without keeping the parameters.

Notation (Min, Zhu and Vidal, NeurIPS 2025): features `phi_i = phi(x_i) = relu(W^T x_i)`
(rows of `features`, shape `(n, h)`), class means `phi_k = mean_{i in I_k} phi_i`, their
mean `phi_bar = sum_k phi_k / K`, class-mean directions `phi_k/||phi_k||`, classifier
`V` of shape `(K_out, h)`, pseudo-labels `E~ = sqrt(K/(K-1)) (I - 11^T/K)`.

**Public API** (names are stable):

- Class statistics: `class_means`, `class_directions`.
- NC1: `nc1` (the NeurIPS paper's trace ratio, App. B.2), `nc1_papyan`
  (`tr(Sigma_W Sigma_B^+)/K`), `within_class_cosines`, `directional_nc1`.
- NC2: `nc2` (distance of the class-mean directions to an orthogonal frame),
  `nc2_etf` (distance of the centred class means to a simplex ETF), `etf_distance`
  (the same for any set of rows, e.g. the classifier `V`), `class_orthogonality`.
- NC3: `nc3` (projected self-duality, target `E~/sqrt(K)`: see its docstring).
- NC4: `nc4` (nearest-class-centre mismatch).
- Weights: `stable_rank`, `spectral_norm_sq`, `weight_norm`, `neuron_groups`,
  `group_masks`, `group_stable_ranks`, `neuron_alignment`, `balance`.
- Activations: `activity`, `activation_summary`, `is_separated`.
- Margins: `normalized_margins`, `min_normalized_margin`.
- All at once: `summary(model, data)`, a dict of every NC metric, the smallest
  normalized margin and the separation state.
- Recording: `RECORDERS` (name -> `fn(model, data)`), `recorder(*names)`,
  `standard_recorders()`; pass the result as `record=` to `gradient_flow` or
  `gradient_descent`.

**Two call forms.** The functions of features (`class_means`, NC1-NC4,
`within_class_cosines`, `directional_nc1`, `class_orthogonality`) take either the
features, `nc1(features, labels, num_classes)` (`nc3` and `nc4` also the classifier
`V`), or a model and a data set, `nc1(model, data)`, which measures the hidden features
`relu(W^T x_i)` of `data.x` under `model` (and its classifier `model.V`). The two forms
give the same values.

**Degenerate cases.** Inside `jit`/`vmap` no exception can be raised, so an undefined
value is `NaN`, with one meaning throughout: *the quantity does not exist for these
features*. An empty class gives a `NaN` class mean, hence `NaN` for every metric that
uses all class means (NC1, NC2, NC3, `nc1_papyan`), while per-class results are `NaN`
only for that class. A class whose features are all zero has no mean direction: `NaN`
for `nc2`, `nc3`. A dead network (all features zero) gives `NaN` for NC1-NC4. A class
with a single sample is fine (zero within-class scatter). `nc1` is `inf` when the class
means coincide but the within-class scatter does not vanish.

**Precision.** Tested in float64; everything also runs in float32 (values then carry
float32 rounding, about `1e-6` relative).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._dataset import Dataset
from ._model import TwoLayerReLU, pseudo_labels


__all__ = [
    "RECORDERS",
    "activation_summary",
    "activity",
    "balance",
    "class_directions",
    "class_means",
    "class_orthogonality",
    "directional_nc1",
    "etf_distance",
    "group_masks",
    "group_stable_ranks",
    "is_separated",
    "min_normalized_margin",
    "nc1",
    "nc1_papyan",
    "nc2",
    "nc2_etf",
    "nc3",
    "nc4",
    "neuron_alignment",
    "neuron_groups",
    "normalized_margins",
    "recorder",
    "spectral_norm_sq",
    "stable_rank",
    "standard_recorders",
    "summary",
    "weight_norm",
    "within_class_cosines",
]


# ----------------------------------------------------------------------------------
# Class statistics
# ----------------------------------------------------------------------------------


def _one_hot(labels: Int[Array, " n"], num_classes: int, dtype) -> Float[Array, "n K"]:
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def _dead(features: Float[Array, "n h"]) -> Bool[Array, ""]:
    return jnp.all(features == 0)


def _nan_if(cond, value):
    return jnp.where(cond, jnp.nan, value)


def _resolve(features, labels, num_classes, name: str):
    """`(model or None, features, labels, K)` from either call form, `(model, data)`
    or `(features, labels, num_classes)`."""
    if isinstance(features, TwoLayerReLU):
        if not isinstance(labels, Dataset):
            raise ValueError(
                f"{name}(model, data) needs a Dataset as second argument, got "
                f"{type(labels).__name__}"
            )
        if num_classes is not None:
            raise ValueError(
                f"{name}(model, data) takes the number of classes from the data; "
                "do not pass num_classes"
            )
        return features, features.features(labels.x), labels.y, labels.num_classes
    if isinstance(labels, Dataset):
        raise ValueError(
            f"{name} got a Dataset as second argument but a {type(features).__name__} "
            "as first: call it as (model, data) or (features, labels, num_classes)"
        )
    if num_classes is None:
        raise ValueError(
            f"{name}(features, labels, num_classes) needs num_classes (or call it as "
            f"{name}(model, data))"
        )
    return None, features, labels, num_classes


def _feature_args(features, labels, num_classes, name: str):
    return _resolve(features, labels, num_classes, name)[1:]


def _classifier_args(features, labels, num_classes, V, name: str):
    model, features, labels, num_classes = _resolve(features, labels, num_classes, name)
    if model is not None:
        if V is not None:
            raise ValueError(f"{name}(model, data) takes V from the model; do not pass V")
        V = model.V
    elif V is None:
        raise ValueError(f"{name}(features, labels, num_classes, V) needs the classifier V")
    return features, labels, num_classes, V


def _unit_rows(m: Float[Array, "K p"]) -> Float[Array, "K p"]:
    """Rows divided by their norms; a zero row becomes `NaN` (it has no direction)."""
    norms = jnp.linalg.norm(m, axis=-1, keepdims=True)
    return m / jnp.where(norms > 0, norms, jnp.nan)


def class_means(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> tuple[Float[Array, "K h"], Float[Array, " K"]]:
    r"""Class means `phi_k = sum_{i in I_k} phi_i / |I_k|` and class sizes `|I_k|`.

    **Arguments:**

    - `features`: one row per sample, shape `(n, h)`.
    - `labels`: integer labels in `[0, K)`, shape `(n,)`.
    - `num_classes`: `K`.

    **Returns:**

    `(means, counts)` of shapes `(K, h)` and `(K,)`; the mean of an empty class is `NaN`.

    **Call forms:** `class_means(features, labels, num_classes)`, or `class_means(model,
    data)`: the features `relu(W^T x_i)` of `data` under `model`.
    """
    features, labels, num_classes = _feature_args(
        features, labels, num_classes, "class_means"
    )
    oh = _one_hot(labels, num_classes, features.dtype)
    counts = jnp.sum(oh, axis=0)
    sums = oh.T @ features
    means = sums / jnp.where(counts > 0, counts, jnp.nan)[:, None]
    return means, counts


def class_directions(data: Dataset) -> Float[Array, "K D"]:
    r"""Unit class directions `x_bar_k = x_k/||x_k||`, `x_k = sum_{i in I_k} x_i`.

    The attractors of the alignment phase (NeurIPS 2025 Sec. 4; ICLR 2024 `x_+-`).
    `NaN` for an empty class or a class summing to zero.
    """
    oh = _one_hot(data.y, data.num_classes, data.x.dtype)
    return _unit_rows(oh.T @ data.x)


# ----------------------------------------------------------------------------------
# NC1
# ----------------------------------------------------------------------------------


def nc1(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    r"""NC1 of Min, Zhu and Vidal (NeurIPS 2025, App. B.2): a trace ratio.

    `NC1 = [sum_k sum_{i in I_k} ||phi_i - phi_k||^2 / |I_k|] /
    [sum_k ||phi_k - phi_bar||^2]` with `phi_bar = sum_k phi_k / K`. Zero under exact
    within-class collapse; invariant under scaling of the features and relabelling of
    the classes.

    **Returns:**

    A scalar; `NaN` if a class is empty or all features vanish, `inf` if the class means
    coincide while the within-class scatter does not vanish.

    **Call forms:** `nc1(features, labels, num_classes)`, or `nc1(model, data)`: the
    features `relu(W^T x_i)` of `data` under `model`.
    """
    features, labels, num_classes = _feature_args(features, labels, num_classes, "nc1")
    means, counts = class_means(features, labels, num_classes)
    diff = features - means[labels]
    per_sample = jnp.sum(diff**2, axis=-1)
    oh = _one_hot(labels, num_classes, features.dtype)
    within = jnp.sum((oh.T @ per_sample) / counts)
    centre = jnp.mean(means, axis=0, keepdims=True)
    between = jnp.sum((means - centre) ** 2)
    return _nan_if(_dead(features), within / between)


def nc1_papyan(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    r"""NC1 of Papyan, Han and Donoho (2020): `tr(Sigma_W Sigma_B^+) / K`.

    `Sigma_W = (1/n) sum_i (phi_i - phi_{y_i})(phi_i - phi_{y_i})^T`,
    `Sigma_B = (1/K) sum_k (phi_k - phi_G)(phi_k - phi_G)^T` with the global mean
    `phi_G = mean_i phi_i` (the mean of the class means for balanced classes), and `^+`
    the Moore-Penrose pseudo-inverse at the numerical rank. Computed without forming
    `h x h` matrices: with `D` the `(n, h)` within-class deviations and `M` the `(K, h)`
    centred class means, `Sigma_B^+ = K pinv(M) pinv(M)^T`, so the value is
    `||D pinv(M)||_F^2 / n`.

    **Returns:**

    A scalar; `NaN` if a class is empty, all features vanish, or `M = 0`.

    **Call forms:** `nc1_papyan(features, labels, num_classes)`, or `nc1_papyan(model,
    data)`: the features `relu(W^T x_i)` of `data` under `model`.
    """
    features, labels, num_classes = _feature_args(
        features, labels, num_classes, "nc1_papyan"
    )
    means, _ = class_means(features, labels, num_classes)
    n = features.shape[0]
    deviations = features - means[labels]
    centred = means - jnp.mean(features, axis=0, keepdims=True)
    degenerate = _dead(features) | jnp.all(centred == 0) | jnp.any(jnp.isnan(means))
    safe = jnp.where(degenerate, jnp.eye(*centred.shape, dtype=centred.dtype), centred)
    value = jnp.sum((deviations @ jnp.linalg.pinv(safe)) ** 2) / n
    return _nan_if(degenerate, value)


def within_class_cosines(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, " n"]:
    r"""`cos(phi_i, phi_{y_i})`: the cosine of each feature with its class mean.

    All equal to 1 under within-class *directional* collapse, which is what Theorem 1 of
    the NeurIPS paper predicts (features of a class are parallel, with different lengths).
    A zero feature has cosine 0 (it points nowhere: not collapsed); a class with zero mean
    gives `NaN`.

    **Call forms:** `within_class_cosines(features, labels, num_classes)`, or
    `within_class_cosines(model, data)`: the features `relu(W^T x_i)` of `data` under
    `model`.
    """
    features, labels, num_classes = _feature_args(
        features, labels, num_classes, "within_class_cosines"
    )
    means, _ = class_means(features, labels, num_classes)
    mu = means[labels]
    nf = jnp.linalg.norm(features, axis=-1)
    nm = jnp.linalg.norm(mu, axis=-1)
    dot = jnp.sum(features * mu, axis=-1)
    cos = dot / jnp.where(nf > 0, nf, 1.0) / jnp.where(nm > 0, nm, jnp.nan)
    return jnp.where(nf > 0, cos, jnp.where(nm > 0, 0.0, jnp.nan))


def directional_nc1(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, " K"]:
    r"""Per class `1 - mean_{i in I_k} cos(phi_i, phi_k)`: 0 under directional collapse.

    `NaN` for an empty class or a class whose features all vanish.

    **Call forms:** `directional_nc1(features, labels, num_classes)`, or
    `directional_nc1(model, data)`: the features `relu(W^T x_i)` of `data` under `model`.
    """
    features, labels, num_classes = _feature_args(
        features, labels, num_classes, "directional_nc1"
    )
    cos = within_class_cosines(features, labels, num_classes)
    oh = _one_hot(labels, num_classes, features.dtype)
    counts = jnp.sum(oh, axis=0)
    return 1.0 - (oh.T @ cos) / jnp.where(counts > 0, counts, jnp.nan)


# ----------------------------------------------------------------------------------
# NC2
# ----------------------------------------------------------------------------------


def nc2(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    r"""NC2 of Min, Zhu and Vidal (NeurIPS 2025, App. B.2): orthogonal-frame distance.

    `NC2 = || G/||G||_F - I/sqrt(K) ||_F` with `G = Phi Phi^T` the Gram matrix of the
    class-mean directions `phi_k/||phi_k||` (rows of `Phi`). Zero exactly when the class
    means are mutually orthogonal (the limit of Theorem 1), whatever their lengths. For
    unit class means forming a simplex ETF it is `sqrt(2 - 2 sqrt((K-1)/K))`.

    **Returns:**

    A scalar; `NaN` if a class is empty or has zero mean features.

    **Call forms:** `nc2(features, labels, num_classes)`, or `nc2(model, data)`: the
    features `relu(W^T x_i)` of `data` under `model`.
    """
    features, labels, num_classes = _feature_args(features, labels, num_classes, "nc2")
    means, _ = class_means(features, labels, num_classes)
    phi = _unit_rows(means)
    g = phi @ phi.T
    k = num_classes
    target = jnp.eye(k, dtype=features.dtype) / jnp.sqrt(k)
    return jnp.linalg.norm(g / jnp.linalg.norm(g) - target)


def etf_distance(rows: Float[Array, "K p"]) -> Float[Array, ""]:
    r"""Distance of `K` vectors (rows) to a simplex ETF, as used by Zhu et al. (2021).

    `|| M M^T/||M M^T||_F - (I - 11^T/K)/sqrt(K-1) ||_F`. Zero exactly when the rows have
    equal norms and pairwise cosines `-1/(K-1)`. Zhu et al. apply it to the classifier
    rows (`etf_distance(model.V)`); `nc2_etf` applies it to centred class means. `NaN` if
    all rows vanish.
    """
    k = rows.shape[0]
    g = rows @ rows.T
    gn = jnp.linalg.norm(g)
    target = (jnp.eye(k, dtype=rows.dtype) - 1.0 / k) / jnp.sqrt(k - 1.0)
    return jnp.linalg.norm(g / jnp.where(gn > 0, gn, jnp.nan) - target)


def nc2_etf(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    r"""Simplex-ETF distance of the centred class means (Papyan et al. 2020; Zhu et al.).

    `etf_distance(phi_k - phi_bar)` with `phi_bar` the mean of the class means (equal to
    the global mean for balanced classes; with it, orthogonal class means of equal norm
    give exactly an ETF whatever the class sizes). `NaN` for an empty class or a dead
    network.

    **Call forms:** `nc2_etf(features, labels, num_classes)`, or `nc2_etf(model, data)`: the
    features `relu(W^T x_i)` of `data` under `model`.
    """
    features, labels, num_classes = _feature_args(features, labels, num_classes, "nc2_etf")
    means, _ = class_means(features, labels, num_classes)
    centred = means - jnp.mean(means, axis=0, keepdims=True)
    return _nan_if(_dead(features), etf_distance(centred))


def class_orthogonality(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
) -> Float[Array, ""]:
    r"""`max_{k != l} cos(phi_k, phi_l)`: 0 when the class features are orthogonal.

    For ReLU features (non-negative) the class means are orthogonal exactly when every
    feature of one class is orthogonal to every feature of another, the inter-class
    separation of Theorem 1. `NaN` for an empty class or a class with zero mean.

    **Call forms:** `class_orthogonality(features, labels, num_classes)`, or
    `class_orthogonality(model, data)`: the features `relu(W^T x_i)` of `data` under
    `model`.
    """
    features, labels, num_classes = _feature_args(
        features, labels, num_classes, "class_orthogonality"
    )
    means, _ = class_means(features, labels, num_classes)
    phi = _unit_rows(means)
    k = num_classes
    cos = phi @ phi.T
    return jnp.max(jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, cos))


# ----------------------------------------------------------------------------------
# NC3, NC4
# ----------------------------------------------------------------------------------


def _self_dual_target(out_dim: int, num_classes: int, dtype) -> Float[Array, "K_out K"]:
    if out_dim == 1:
        if num_classes != 2:
            raise ValueError("a classifier with one output needs K = 2 classes")
        # Binary: f = v^T phi, label 1 is the sign +1; V Phi^+ -> [-s_-, s_+] (Theorem 1).
        return jnp.asarray([[-1.0, 1.0]], dtype=dtype) / jnp.sqrt(2.0)
    if out_dim != num_classes:
        raise ValueError(f"the classifier has {out_dim} outputs but K = {num_classes}")
    return pseudo_labels(num_classes, dtype) / jnp.sqrt(num_classes)


def nc3(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
    V: Float[Array, "K_out h"] | None = None,
) -> Float[Array, ""]:
    r"""NC3 of Min, Zhu and Vidal: projected self-duality, with target `E~/sqrt(K)`.

    `NC3 = || V Phi^+ / ||V Phi^+||_F - E~/sqrt(K) ||_F`, `Phi` the `(K, h)` matrix of
    class-mean directions `phi_k/||phi_k||` (rows) and `^+` the pseudo-inverse.

    The paper (App. B.2) prints the target `E~/sqrt(K-1)`, whose Frobenius norm is
    `sqrt(K/(K-1)) != 1`: a unit-norm matrix can never reach it, so the printed metric
    cannot vanish. Its evident intent is the unit-norm `E~/sqrt(K) = (I - 11^T/K)/
    sqrt(K-1)`, the target of Zhu et al. (2021), used here. In the limit of Theorem 1,
    `V Phi^+ = E~ diag(s)`, so NC3 vanishes exactly when the class scales `s_k` are equal
    (for unequal ones, `theory.limit_distance` measures the distance to the predicted
    `E~ diag(s)`).

    Binary classifier (`K_out = 1`, `K = 2`): the target is `[-1, 1]/sqrt(2)` (the
    columns are the classes `-` (label 0) and `+` (label 1)): Theorem 1's
    `V = s_+ phi_+^T - s_- phi_-^T` with equal scales.

    **Returns:**

    A scalar; `NaN` for an empty class or a class with zero mean features.

    **Raises:** `ValueError` if `V` has neither `K` rows nor one row with `K = 2`.

    **Call forms:** `nc3(features, labels, num_classes, V)`, or `nc3(model, data)`: the
    features `relu(W^T x_i)` of `data` under `model`, and its classifier `model.V`.
    """
    features, labels, num_classes, V = _classifier_args(
        features, labels, num_classes, V, "nc3"
    )
    target = _self_dual_target(V.shape[-2], num_classes, features.dtype)
    means, _ = class_means(features, labels, num_classes)
    phi = _unit_rows(means)
    bad = jnp.any(jnp.isnan(phi))
    safe = jnp.where(bad, jnp.eye(*phi.shape, dtype=phi.dtype), phi)
    p = V @ jnp.linalg.pinv(safe)
    pn = jnp.linalg.norm(p)
    value = jnp.linalg.norm(p / jnp.where(pn > 0, pn, jnp.nan) - target)
    return _nan_if(bad, value)


def nc4(
    features: Float[Array, "n h"] | TwoLayerReLU,
    labels: Int[Array, " n"] | Dataset,
    num_classes: int | None = None,
    V: Float[Array, "K_out h"] | None = None,
) -> Float[Array, ""]:
    r"""NC4: fraction of samples where the classifier and the nearest class centre differ.

    Prediction `argmax_k (V phi_i)_k` (for `K_out = 1`: class 1 iff `v^T phi_i > 0`)
    against `argmin_k ||phi_i - phi_k||` (Papyan et al. 2020). 0 when they agree on every
    sample. Empty classes are never the nearest centre. `NaN` for a dead network.

    **Call forms:** `nc4(features, labels, num_classes, V)`, or `nc4(model, data)`: the
    features `relu(W^T x_i)` of `data` under `model`, and its classifier `model.V`.
    """
    features, labels, num_classes, V = _classifier_args(
        features, labels, num_classes, V, "nc4"
    )
    logits = features @ V.T
    if V.shape[-2] == 1:
        pred = (logits[:, 0] > 0).astype(jnp.int32)
    else:
        pred = jnp.argmax(logits, axis=-1)
    means, _ = class_means(features, labels, num_classes)
    d2 = jnp.sum((features[:, None, :] - means[None, :, :]) ** 2, axis=-1)
    d2 = jnp.where(jnp.isnan(d2), jnp.inf, d2)
    ncc = jnp.argmin(d2, axis=-1)
    value = jnp.mean((pred != ncc).astype(features.dtype))
    return _nan_if(_dead(features), value)


# ----------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------


def pca(x: ArrayLike, k: int = 3) -> dict:
    r"""Principal components of the rows of `x` and their relative approximation error.

    Rows are centred; with `Xc = U S V^T`, the top-`k` directions are the first rows of
    `V^T` and the error is `sum_{i > k} S_i^2 / sum_i S_i^2 = ||Xc - Xc P_k||_F^2 /
    ||Xc||_F^2` (the fraction of the total variance the top-`k` PCs leave out). Also
    returns the same error without centring (`error_uncentered`).

    **Returns:** dict with `components` `(k, p)`, `scores` `(n, k)`, `mean` `(p,)`,
    `error`, `error_uncentered`.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 1:
        raise ValueError(f"pca needs a non-empty (n, p) matrix, got shape {x.shape}")
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    total = np.sum(s**2)
    error = float(np.sum(s[k:] ** 2) / total) if total > 0 else 0.0
    s_u = np.linalg.svd(x, compute_uv=False)
    total_u = np.sum(s_u**2)
    error_u = float(np.sum(s_u[k:] ** 2) / total_u) if total_u > 0 else 0.0
    return {
        "components": vt[:k],
        "scores": xc @ vt[:k].T,
        "mean": mean,
        "error": error,
        "error_uncentered": error_u,
    }


def spectral_norm_sq(m: Float[Array, "a b"]) -> Float[Array, ""]:
    """`||M||_2^2`, the squared largest singular value."""
    return jnp.linalg.norm(m, ord=2) ** 2


def stable_rank(m: Float[Array, "a b"]) -> Float[Array, ""]:
    r"""Stable rank `||M||_F^2 / ||M||_2^2` (between 1 and the rank); `NaN` if `M = 0`.

    The ICLR 2024 paper shows `limsup ||W||_F^2/||W||_2^2 <= 2` for the binary flow; for
    `K` orthogonal classes the limit of Theorem 1 has rank-one blocks.
    """
    s2 = spectral_norm_sq(m)
    return jnp.sum(m**2) / jnp.where(s2 > 0, s2, jnp.nan)


def weight_norm(model: TwoLayerReLU) -> Float[Array, ""]:
    """`||theta||_F = sqrt(||W||_F^2 + ||V||_F^2)`."""
    return jnp.sqrt(jnp.sum(model.W**2) + jnp.sum(model.V**2))


def neuron_groups(model: TwoLayerReLU) -> Int[Array, " h"]:
    r"""The group `k` of each neuron: `N_k = {j : k = argmax_l <e~_l, v_j>}`.

    As in the NeurIPS paper (Fig. 3): since `<e~_l, v_j> = sqrt(K/(K-1)) (v_jl -
    mean(v_j))`, this is `argmax_l v_jl`. Binary (`K_out = 1`): group 1 (`N_+`) if
    `v_j > 0`, else group 0 (`N_-`).
    """
    if model.out_dim == 1:
        return (model.V[0] > 0).astype(jnp.int32)
    return jnp.argmax(model.V, axis=-2).astype(jnp.int32)


def group_masks(model: TwoLayerReLU, num_classes: int | None = None) -> Float[Array, "K h"]:
    """One-hot group membership, row `k` is the indicator of `N_k` (see `neuron_groups`)."""
    k = 2 if model.out_dim == 1 else model.out_dim
    if num_classes is not None and num_classes != k:
        raise ValueError(f"the model has groups for K = {k} classes, not {num_classes}")
    return _one_hot(neuron_groups(model), k, model.W.dtype).T


def group_stable_ranks(model: TwoLayerReLU) -> Float[Array, " K"]:
    r"""Stable rank of each group's block `W_k = [w_j]_{j in N_k}` (`NaN` if empty/zero).

    Theorem 1 predicts rank-one blocks `W_k = s_k u_k g_k^T` in the limit.
    """
    masks = group_masks(model)
    return jax.vmap(lambda m: stable_rank(model.W * m[None, :]))(masks)


def neuron_alignment(model: TwoLayerReLU, data: Dataset) -> Float[Array, "K h"]:
    r"""`cos(w_j, x_bar_k)` for every class `k` and neuron `j`.

    The alignment phase drives each surviving neuron of `N_k` towards `x_bar_k`
    (see `class_directions`). A zero neuron gives `NaN`.
    """
    xbar = class_directions(data)
    wn = jnp.linalg.norm(model.W, axis=0)
    return (xbar @ model.W) / jnp.where(wn > 0, wn, jnp.nan)[None, :]


def balance(model: TwoLayerReLU) -> Float[Array, " h"]:
    r"""Balance drift `||w_j||^2 - ||v_j||^2` of each neuron.

    Conserved exactly by the gradient flow (Du et al. 2018), so it stays at its initial
    value (0 for a balanced init); gradient descent drifts at second order in the step.
    """
    return jnp.sum(model.W**2, axis=0) - jnp.sum(model.V**2, axis=0)


# ----------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------


def activity(model: TwoLayerReLU, data: Dataset) -> Float[Array, "K h"]:
    r"""Fraction of the samples of class `k` on which neuron `j` is active.

    Active means `<x_i, w_j> > 0`. `NaN` for an empty class.
    """
    active = (model.preactivations(data.x) > 0).astype(data.x.dtype)
    oh = _one_hot(data.y, data.num_classes, data.x.dtype)
    counts = jnp.sum(oh, axis=0)
    return (oh.T @ active) / jnp.where(counts > 0, counts, jnp.nan)[:, None]


def activation_summary(model: TwoLayerReLU, data: Dataset) -> dict[str, Array]:
    r"""Counts of activation patterns; the cones `S_+, S_-, S_dead` in the binary case.

    **Returns:** a dict of arrays (fixed shapes, so it can be recorded):

    - `"num_dead"`: neurons active on no sample (`S_dead`, ICLR 2024).
    - `"num_exclusive"`: neurons active on samples of exactly one class.
    - `"num_mixed"`: neurons active on samples of two classes or more.
    - `"exact"`, shape `(K,)`: neurons active on *all* samples of class `k` and no other
      sample. For `K = 2` (label 1 = `+`): `exact[1] = |S_+|`, `exact[0] = |S_-|`, the
      cones of the ICLR 2024 paper (`S_+`: active exactly on the positive samples).
    - `"covered"`, shape `(K,)`: whether some neuron is active on every sample of class
      `k`.
    - `"separated"`: `is_separated` (see there).
    """
    act = activity(model, data)
    any_active = act > 0
    classes_per_neuron = jnp.sum(any_active, axis=0)
    all_active = act >= 1
    only = classes_per_neuron == 1
    exact = jnp.sum(all_active & only[None, :], axis=1)
    covered = jnp.any(all_active, axis=1)
    separated = jnp.all(classes_per_neuron <= 1) & jnp.all(covered)
    return {
        "num_dead": jnp.sum(classes_per_neuron == 0),
        "num_exclusive": jnp.sum(only),
        "num_mixed": jnp.sum(classes_per_neuron >= 2),
        "exact": exact,
        "covered": covered,
        "separated": separated,
    }


def is_separated(model: TwoLayerReLU, data: Dataset) -> Bool[Array, ""]:
    r"""Inter-class separation (NeurIPS 2025, Prop. 1): the state after the time `T*`.

    `True` when every neuron is active on samples of at most one class and every class
    has a neuron active on all of its samples. Then features of different classes are
    orthogonal. `theory.separation_time` extracts `T*` from a trajectory of these values.
    """
    return activation_summary(model, data)["separated"]


# ----------------------------------------------------------------------------------
# Margins
# ----------------------------------------------------------------------------------


def normalized_margins(model: TwoLayerReLU, data: Dataset) -> Float[Array, " n"]:
    r"""Margins divided by `||theta||_F^2` (the network is 2-homogeneous).

    Multi-class: `(f_{y_i}(x_i) - max_{k != y_i} f_k(x_i)) / ||theta||^2`; binary
    (`K_out = 1`): `s_i f(x_i) / ||theta||^2` with the sign `s_i`. In the limit of
    Theorem 1 the smallest normalized margin of every class is the same,
    `1/(2 sum_k gamma_k^{-1})` for the binary case (see `theory`).
    """
    f = model(data.x)
    if model.out_dim == 1:
        margin = data.signs() * f[:, 0]
    else:
        oh = _one_hot(data.y, model.out_dim, f.dtype)
        own = jnp.sum(f * oh, axis=-1)
        other = jnp.max(jnp.where(oh > 0, -jnp.inf, f), axis=-1)
        margin = own - other
    return margin / weight_norm(model) ** 2


def min_normalized_margin(model: TwoLayerReLU, data: Dataset) -> Float[Array, ""]:
    """`min_i normalized_margins(model, data)_i`."""
    return jnp.min(normalized_margins(model, data))


# ----------------------------------------------------------------------------------
# All at once
# ----------------------------------------------------------------------------------


def summary(model: TwoLayerReLU, data: Dataset) -> dict[str, Array]:
    r"""Every NC metric of `model` on `data`, with the margin and the separation state.

    **Arguments:**

    - `model`: a `TwoLayerReLU` (with `K` outputs, or one output for `K = 2`).
    - `data`: the `Dataset` whose features are measured.

    **Returns:**

    A dict of arrays, the same values as the single functions:

    | key | value | shape |
    |---|---|---|
    | `"nc1"`, `"nc1_papyan"` | `nc1`, `nc1_papyan` | `()` |
    | `"directional_nc1"` | `directional_nc1` | `(K,)` |
    | `"nc2"`, `"nc2_etf"` | `nc2`, `nc2_etf` | `()` |
    | `"orthogonality"` | `class_orthogonality` | `()` |
    | `"nc3"`, `"nc4"` | `nc3`, `nc4` (with `model.V`) | `()` |
    | `"min_margin"` | `min_normalized_margin` | `()` |
    | `"separated"` | `is_separated` | `()`, bool |

    Compiled once per shape; works under `jax.vmap` over a batch of models, e.g. the
    saved models of a trajectory: `jax.vmap(lambda m: summary(m, data))(traj.models)`.

    **Raises:** `ValueError` if the classifier has neither `K` rows nor one row with
    `K = 2`.
    """
    # The shape check, traced only (evaluated, it would compile on a first call).
    out_dim, k, dtype = model.out_dim, data.num_classes, model.W.dtype
    jax.eval_shape(lambda: _self_dual_target(out_dim, k, dtype))
    return _summary_jit(model, data)


@eqx.filter_jit
def _summary_jit(model: TwoLayerReLU, data: Dataset) -> dict[str, Array]:
    f, y, k = model.features(data.x), data.y, data.num_classes
    return {
        "nc1": nc1(f, y, k),
        "nc1_papyan": nc1_papyan(f, y, k),
        "directional_nc1": directional_nc1(f, y, k),
        "nc2": nc2(f, y, k),
        "nc2_etf": nc2_etf(f, y, k),
        "orthogonality": class_orthogonality(f, y, k),
        "nc3": nc3(f, y, k, model.V),
        "nc4": nc4(f, y, k, model.V),
        "min_margin": min_normalized_margin(model, data),
        "separated": is_separated(model, data),
    }


# ----------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------


def _feat(model: TwoLayerReLU, data: Dataset):
    return model.features(data.x), data.y, data.num_classes


def _rec_nc1(model, data):
    return nc1(*_feat(model, data))


def _rec_nc1_papyan(model, data):
    return nc1_papyan(*_feat(model, data))


def _rec_nc2(model, data):
    return nc2(*_feat(model, data))


def _rec_nc2_etf(model, data):
    return nc2_etf(*_feat(model, data))


def _rec_nc3(model, data):
    return nc3(*_feat(model, data), model.V)


def _rec_nc4(model, data):
    return nc4(*_feat(model, data), model.V)


def _rec_directional_nc1(model, data):
    return directional_nc1(*_feat(model, data))


def _rec_orthogonality(model, data):
    return class_orthogonality(*_feat(model, data))


def _rec_classifier_etf(model, data):
    return etf_distance(model.V)


def _rec_stable_rank(model, data):
    return stable_rank(model.W)


def _rec_spectral_norm_sq(model, data):
    return spectral_norm_sq(model.W)


def _rec_group_stable_ranks(model, data):
    return group_stable_ranks(model)


def _rec_weight_norm(model, data):
    return weight_norm(model)


def _rec_balance(model, data):
    return balance(model)


def _as_float(tree, dtype):
    # Diffrax pre-fills its save buffers with `inf`; integer and boolean records are
    # stored as floats so that this fill (kept after a failed run) stays meaningful.
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def _rec_groups(model, data):
    return _as_float(neuron_groups(model), model.W.dtype)


def _rec_alignment(model, data):
    return neuron_alignment(model, data)


def _rec_activity(model, data):
    return activity(model, data)


def _rec_activation(model, data):
    return _as_float(activation_summary(model, data), model.W.dtype)


def _rec_separated(model, data):
    return _as_float(is_separated(model, data), model.W.dtype)


def _rec_min_margin(model, data):
    return min_normalized_margin(model, data)


RECORDERS: dict[str, Callable[[TwoLayerReLU, Dataset], object]] = {
    "nc1": _rec_nc1,
    "nc1_papyan": _rec_nc1_papyan,
    "nc2": _rec_nc2,
    "nc2_etf": _rec_nc2_etf,
    "nc3": _rec_nc3,
    "nc4": _rec_nc4,
    "directional_nc1": _rec_directional_nc1,
    "orthogonality": _rec_orthogonality,
    "classifier_etf": _rec_classifier_etf,
    "stable_rank": _rec_stable_rank,
    "spectral_norm_sq": _rec_spectral_norm_sq,
    "group_stable_ranks": _rec_group_stable_ranks,
    "weight_norm": _rec_weight_norm,
    "balance": _rec_balance,
    "groups": _rec_groups,
    "alignment": _rec_alignment,
    "activity": _rec_activity,
    "activation": _rec_activation,
    "separated": _rec_separated,
    "min_margin": _rec_min_margin,
}
"""Recordable diagnostics, `name -> fn(model, data)`. Shapes per save time:

| name | value | shape |
|---|---|---|
| `nc1`, `nc1_papyan`, `nc2`, `nc2_etf`, `nc3`, `nc4` | the NC metrics | `()` |
| `directional_nc1` | `directional_nc1` | `(K,)` |
| `orthogonality` | `class_orthogonality` | `()` |
| `classifier_etf` | `etf_distance(V)` | `()` |
| `stable_rank`, `spectral_norm_sq` | of `W` | `()` |
| `group_stable_ranks` | `group_stable_ranks` | `(K,)` |
| `weight_norm` | `||theta||_F` | `()` |
| `balance` | `balance` | `(h,)` |
| `groups` | `neuron_groups` (as floats) | `(h,)` |
| `alignment` | `neuron_alignment` | `(K, h)` |
| `activity` | `activity` | `(K, h)` |
| `activation` | `activation_summary` (as floats) | dict |
| `separated` | `is_separated` (1.0 or 0.0) | `()` |
| `min_margin` | `min_normalized_margin` | `()` |

Integer and boolean values are recorded as floats of the model's dtype (Diffrax fills
save buffers with `inf`, which then marks the save times after a failed run). The
functions are module-level objects, so passing the same names twice does not
recompile a jitted run.
"""

STANDARD = (
    "nc1",
    "nc1_papyan",
    "nc2",
    "nc2_etf",
    "nc3",
    "nc4",
    "directional_nc1",
    "orthogonality",
    "stable_rank",
    "spectral_norm_sq",
    "group_stable_ranks",
    "weight_norm",
    "activation",
    "min_margin",
)


def recorder(*names: str) -> dict[str, Callable[[TwoLayerReLU, Dataset], object]]:
    """The dict `{name: fn(model, data)}` of the named diagnostics, for `record=`.

    **Arguments:**

    - `names`: keys of `RECORDERS`.

    **Returns:** a dict to pass as `gradient_flow(..., record=recorder("nc1", "nc2"))`.

    **Raises:** `ValueError` for an unknown name.
    """
    unknown = [n for n in names if n not in RECORDERS]
    if unknown:
        raise ValueError(f"unknown diagnostics {unknown}; choose from {sorted(RECORDERS)}")
    return {n: RECORDERS[n] for n in names}


def standard_recorders() -> dict[str, Callable[[TwoLayerReLU, Dataset], object]]:
    """A bundle of scalar and per-class diagnostics, small enough for long runs.

    NC1 (both), NC2 (both), NC3, NC4, `directional_nc1`, `orthogonality`, the stable
    rank and squared spectral norm of `W`, `group_stable_ranks`, `weight_norm`, the
    `activation` summary and `min_margin`: `O(K)` numbers per save time, independent of
    `n` and `D`. Add `"alignment"`, `"activity"`, `"balance"` or `"groups"` for per-neuron
    values (`O(K h)`).
    """
    return recorder(*STANDARD)
