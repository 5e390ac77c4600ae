"""Training losses `L(theta) = sum_i l(y_i, f(x_i; theta))`."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._dataset import Dataset
from ._model import TwoLayerReLU


LossName = Literal["cross_entropy", "exponential", "logistic", "square"]
LOSS_NAMES: tuple[str, ...] = ("cross_entropy", "exponential", "logistic", "square")
REDUCTIONS: tuple[str, ...] = ("sum", "mean")


def check_loss(loss: str, reduction: str, out_dim: int, num_classes: int) -> None:
    """Raise `ValueError` if `loss`/`reduction` cannot be used with these shapes."""
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSS_NAMES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if loss == "cross_entropy" and out_dim != num_classes:
        raise ValueError(
            f"loss='cross_entropy' needs out_dim = K = {num_classes}, got out_dim {out_dim}"
        )
    if loss in ("exponential", "logistic"):
        if num_classes != 2 or out_dim != 1:
            raise ValueError(
                f"loss={loss!r} is binary: it needs K = 2 classes and out_dim = 1, got "
                f"K = {num_classes} and out_dim = {out_dim}"
            )
    if loss == "square" and out_dim not in (num_classes, 1):
        raise ValueError(f"loss='square' needs out_dim = K or 1, got out_dim {out_dim}")
    if loss == "square" and out_dim == 1 and num_classes != 2:
        raise ValueError("loss='square' with out_dim = 1 needs K = 2 classes")


def _cross_entropy(
    f: Float[Array, "n K"], y: Int[Array, " n"], num_classes: int
) -> Float[Array, " n"]:
    """`log(1 + sum_{k != y} exp(f_k - f_y))`, accurate for tiny losses.

    The usual `logsumexp(f) - f_y` cancels catastrophically once the loss falls below
    the float resolution (late in the flow, margins grow like `log t`): its gradient
    `softmax(f) - e_y` then rounds the target entry to zero and the flow stops. Here the
    differences `d_k = f_k - f_y` are formed first; when all are negative, `log1p` of
    the sum of their exponentials keeps full relative precision in value and gradient.
    """
    target = jax.nn.one_hot(y, num_classes, dtype=bool)
    d = f - jnp.take_along_axis(f, y[:, None], axis=-1)
    others = jnp.where(target, -jnp.inf, d)
    top = jnp.max(others, axis=-1)
    # exp of a clipped argument: the branch not taken must stay finite for the gradient
    # (`where`, not `minimum`: the latter splits the derivative at a tie)
    clipped = jnp.where(others <= 0.0, others, 0.0)
    small = jnp.log1p(jnp.sum(jnp.exp(clipped), axis=-1))
    large = jax.nn.logsumexp(d, axis=-1)
    return jnp.where(top <= 0.0, small, large)


def per_sample_loss(
    loss: str, f: Float[Array, "n K_out"], y: Int[Array, " n"], num_classes: int
) -> Float[Array, " n"]:
    r"""`l(y_i, f(x_i))` for each sample.

    - `"cross_entropy"`: `logsumexp(f_i) - f_i[y_i]` (one-hot targets; NeurIPS 2025 eq. 3).
    - `"exponential"`: `exp(-s_i f_i)` with the sign `s_i = +1` for label 1, `-1` for 0.
    - `"logistic"`: `2 log(1 + exp(-s_i f_i))`; the factor 2 makes `-dl/df = s_i` at
      `f = 0`, as for the exponential loss (ICLR 2024 App. B, NeurIPS 2025 Sec. 2).
    - `"square"`: `||f_i - t_i||^2 / 2` with `t_i` one-hot (`out_dim = K`) or the sign
      `s_i` (`out_dim = 1`, `K = 2`).
    """
    if loss == "cross_entropy":
        return _cross_entropy(f, y, num_classes)
    if loss in ("exponential", "logistic"):
        margin = (2 * y - 1).astype(f.dtype) * f[:, 0]
        if loss == "exponential":
            return jnp.exp(-margin)
        return 2.0 * jax.nn.softplus(-margin)
    if loss == "square":
        if f.shape[-1] == 1:
            target = (2 * y - 1).astype(f.dtype)[:, None]
        else:
            target = jax.nn.one_hot(y, num_classes, dtype=f.dtype)
        return 0.5 * jnp.sum((f - target) ** 2, axis=-1)
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSS_NAMES}")


def output_residual(
    loss: str, reduction: str, f: Float[Array, "n K_out"], data: Dataset
) -> Float[Array, "n K_out"]:
    """`r_i = -dL/df(x_i)`: minus the gradient of the reduced loss with respect to the
    network's outputs `f` (`n x out_dim`)."""

    def total(f):
        per = per_sample_loss(loss, f, data.y, data.num_classes)
        return jnp.mean(per) if reduction == "mean" else jnp.sum(per)

    return -jax.grad(total)(f)


def loss(
    model: TwoLayerReLU,
    data: Dataset,
    loss: LossName = "cross_entropy",
    reduction: Literal["sum", "mean"] = "sum",
    weights: Float[Array, " n"] | None = None,
) -> Float[Array, ""]:
    r"""Training loss `L(theta) = sum_i l(y_i, f(x_i; theta))`.

    **Arguments:**

    - `model`: the network.
    - `data`: the `Dataset`.
    - `loss`: `"cross_entropy"` (any `K >= 2`, `out_dim = K`), `"exponential"` or
      `"logistic"` (`K = 2`, `out_dim = 1`), or `"square"`. See `per_sample_loss`.
    - `reduction`: `"sum"` (the papers' convention, default) or `"mean"`.
    - `weights`: optional per-sample weights (used for minibatches); with `"mean"` the
      sum is divided by `sum(weights)`.

    **Returns:**

    A scalar.
    """
    check_loss(loss, reduction, model.out_dim, data.num_classes)
    per = per_sample_loss(loss, model(data.x), data.y, data.num_classes)
    if weights is None:
        total = jnp.sum(per)
        count = per.shape[0]
    else:
        total = jnp.sum(weights * per)
        count = jnp.sum(weights)
    return total / count if reduction == "mean" else total
