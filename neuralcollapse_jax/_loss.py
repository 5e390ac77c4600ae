"""Training losses `L(theta) = sum_i l(y_i, f(x_i; theta))`, as typed objects."""

from __future__ import annotations

import abc
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._dataset import Dataset
from ._model import TwoLayerReLU


LossName = Literal["cross_entropy", "exponential", "logistic", "square"]
LOSS_NAMES: tuple[str, ...] = ("cross_entropy", "exponential", "logistic", "square")
REDUCTIONS: tuple[str, ...] = ("sum", "mean")


class AbstractLoss(eqx.Module):
    """A training loss `L = sum_i l(y_i, f_i)` (or the mean over samples).

    Subclasses define the per-sample loss `l` and the output dimensions it accepts;
    the reduction, the loss value and the output residual `-dL/df` are shared.

    **Arguments:**

    - `reduction`: `"sum"` (the papers' convention, default) or `"mean"`.
    """

    reduction: Literal["sum", "mean"] = eqx.field(static=True, default="sum")

    name: ClassVar[str]

    def __check_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(
                f"unknown reduction {self.reduction!r}; choose one of {REDUCTIONS}"
            )

    @abc.abstractmethod
    def per_sample(
        self, f: Float[Array, "n K_out"], y: Int[Array, " n"], num_classes: int
    ) -> Float[Array, " n"]:
        """`l(y_i, f_i)` for each sample."""

    @abc.abstractmethod
    def check(self, out_dim: int, num_classes: int) -> None:
        """Raise `ValueError` if the network's `out_dim` does not fit this loss with
        `num_classes` classes."""

    def value(
        self,
        f: Float[Array, "n K_out"],
        y: Int[Array, " n"],
        num_classes: int,
        weights: Float[Array, " n"] | None = None,
    ) -> Float[Array, ""]:
        """The reduced loss of the outputs `f`; with `weights` (minibatches) the mean
        divides by `sum(weights)`."""
        per = self.per_sample(f, y, num_classes)
        if weights is None:
            total = jnp.sum(per)
            count = per.shape[0]
        else:
            total = jnp.sum(weights * per)
            count = jnp.sum(weights)
        return total / count if self.reduction == "mean" else total

    def residual(
        self, f: Float[Array, "n K_out"], data: Dataset
    ) -> Float[Array, "n K_out"]:
        """`r_i = -dL/df(x_i)`: minus the gradient of the reduced loss with respect to
        the network's outputs `f` (`n x out_dim`)."""

        def total(f):
            per = self.per_sample(f, data.y, data.num_classes)
            return jnp.mean(per) if self.reduction == "mean" else jnp.sum(per)

        return -jax.grad(total)(f)


def _signs(y: Int[Array, " n"], dtype) -> Float[Array, " n"]:
    """`s_i = +1` for label 1, `-1` for label 0."""
    return (2 * y - 1).astype(dtype)


def _check_binary(name: str, out_dim: int, num_classes: int) -> None:
    if num_classes != 2 or out_dim != 1:
        raise ValueError(
            f"loss={name!r} is binary: it needs K = 2 classes and out_dim = 1, got "
            f"K = {num_classes} and out_dim = {out_dim}"
        )


class CrossEntropy(AbstractLoss):
    """Cross-entropy `l = logsumexp(f_i) - f_i[y_i]` (one-hot targets; NeurIPS 2025
    eq. 3), for any `K >= 2` with `out_dim = K`.

    Computed as `log(1 + sum_{k != y} exp(f_k - f_y))`, accurate for tiny losses: the
    usual `logsumexp(f) - f_y` cancels catastrophically once the loss falls below the
    float resolution (late in the flow, margins grow like `log t`), its gradient
    `softmax(f) - e_y` then rounds the target entry to zero and the flow stops. Here
    the differences `d_k = f_k - f_y` are formed first; when all are negative, `log1p`
    of the sum of their exponentials keeps full relative precision in value and
    gradient.
    """

    name: ClassVar[str] = "cross_entropy"

    def per_sample(self, f, y, num_classes):
        target = jax.nn.one_hot(y, num_classes, dtype=bool)
        d = f - jnp.take_along_axis(f, y[:, None], axis=-1)
        others = jnp.where(target, -jnp.inf, d)
        top = jnp.max(others, axis=-1)
        # exp of a clipped argument: the branch not taken must stay finite for the
        # gradient (`where`, not `minimum`: the latter splits the derivative at a tie)
        clipped = jnp.where(others <= 0.0, others, 0.0)
        small = jnp.log1p(jnp.sum(jnp.exp(clipped), axis=-1))
        large = jax.nn.logsumexp(d, axis=-1)
        return jnp.where(top <= 0.0, small, large)

    def check(self, out_dim, num_classes):
        if out_dim != num_classes:
            raise ValueError(
                f"loss='cross_entropy' needs out_dim = K = {num_classes}, got out_dim "
                f"{out_dim}"
            )


class Exponential(AbstractLoss):
    """Exponential loss `l = exp(-s_i f_i)`, with the sign `s_i = +1` for label 1 and
    `-1` for label 0 (`K = 2`, `out_dim = 1`)."""

    name: ClassVar[str] = "exponential"

    def per_sample(self, f, y, num_classes):
        margin = _signs(y, f.dtype) * f[:, 0]
        return jnp.exp(-margin)

    def check(self, out_dim, num_classes):
        _check_binary(self.name, out_dim, num_classes)


class Logistic(AbstractLoss):
    """Logistic loss `l = 2 log(1 + exp(-s_i f_i))` (`K = 2`, `out_dim = 1`); the
    factor 2 makes `-dl/df = s_i` at `f = 0`, as for the exponential loss (ICLR 2024
    App. B, NeurIPS 2025 Sec. 2)."""

    name: ClassVar[str] = "logistic"

    def per_sample(self, f, y, num_classes):
        margin = _signs(y, f.dtype) * f[:, 0]
        return 2.0 * jax.nn.softplus(-margin)

    def check(self, out_dim, num_classes):
        _check_binary(self.name, out_dim, num_classes)


class Square(AbstractLoss):
    """Square loss `l = ||f_i - t_i||^2 / 2` with `t_i` one-hot (`out_dim = K`) or the
    sign `s_i` (`out_dim = 1`, `K = 2`)."""

    name: ClassVar[str] = "square"

    def per_sample(self, f, y, num_classes):
        if f.shape[-1] == 1:
            target = _signs(y, f.dtype)[:, None]
        else:
            target = jax.nn.one_hot(y, num_classes, dtype=f.dtype)
        return 0.5 * jnp.sum((f - target) ** 2, axis=-1)

    def check(self, out_dim, num_classes):
        if out_dim not in (num_classes, 1):
            raise ValueError(f"loss='square' needs out_dim = K or 1, got out_dim {out_dim}")
        if out_dim == 1 and num_classes != 2:
            raise ValueError("loss='square' with out_dim = 1 needs K = 2 classes")


LOSS_CLASSES: dict[str, type[AbstractLoss]] = {
    cls.name: cls for cls in (CrossEntropy, Exponential, Logistic, Square)
}


def as_loss(loss: str | AbstractLoss, reduction: str | None = None) -> AbstractLoss:
    """The loss object for a name in `LOSS_NAMES` or an `AbstractLoss`.

    **Arguments:**

    - `loss`: `"cross_entropy"`, `"exponential"`, `"logistic"`, `"square"`, or an
      `AbstractLoss` (returned as it is).
    - `reduction`: `"sum"` or `"mean"`; `None` means `"sum"` for a name and the
      object's own for an `AbstractLoss` (which must agree if both are given).

    **Returns:**

    An `AbstractLoss`. Raises `ValueError` for an unknown name or reduction.
    """
    if isinstance(loss, AbstractLoss):
        if reduction is not None and reduction != loss.reduction:
            raise ValueError(
                f"reduction {reduction!r} conflicts with the loss object's "
                f"{loss.reduction!r}"
            )
        return loss
    if not isinstance(loss, str) or loss not in LOSS_CLASSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSS_NAMES}")
    return LOSS_CLASSES[loss](reduction="sum" if reduction is None else reduction)


def check_loss(
    loss: str | AbstractLoss, reduction: str | None, out_dim: int, num_classes: int
) -> None:
    """Raise `ValueError` if `loss`/`reduction` cannot be used with these shapes."""
    as_loss(loss, reduction).check(out_dim, num_classes)


def per_sample_loss(
    loss: str | AbstractLoss,
    f: Float[Array, "n K_out"],
    y: Int[Array, " n"],
    num_classes: int,
) -> Float[Array, " n"]:
    r"""`l(y_i, f(x_i))` for each sample: `as_loss(loss).per_sample(f, y, num_classes)`.

    - `"cross_entropy"`: `logsumexp(f_i) - f_i[y_i]` (`CrossEntropy`).
    - `"exponential"`: `exp(-s_i f_i)` with `s_i = +1` for label 1, `-1` for 0
      (`Exponential`).
    - `"logistic"`: `2 log(1 + exp(-s_i f_i))` (`Logistic`).
    - `"square"`: `||f_i - t_i||^2 / 2` (`Square`).
    """
    return as_loss(loss).per_sample(f, y, num_classes)


def loss(
    model: TwoLayerReLU,
    data: Dataset,
    loss: LossName | AbstractLoss = "cross_entropy",
    reduction: Literal["sum", "mean"] | None = None,
    weights: Float[Array, " n"] | None = None,
) -> Float[Array, ""]:
    r"""Training loss `L(theta) = sum_i l(y_i, f(x_i; theta))`.

    **Arguments:**

    - `model`: the network.
    - `data`: the `Dataset`.
    - `loss`: a name in `LOSS_NAMES` or an `AbstractLoss`: `"cross_entropy"` (any
      `K >= 2`, `out_dim = K`), `"exponential"` or `"logistic"` (`K = 2`,
      `out_dim = 1`), or `"square"`. See `as_loss`.
    - `reduction`: `"sum"` (the papers' convention, the default for a name) or
      `"mean"`.
    - `weights`: optional per-sample weights (used for minibatches); with `"mean"` the
      sum is divided by `sum(weights)`.

    **Returns:**

    A scalar.
    """
    fn = as_loss(loss, reduction)
    fn.check(model.out_dim, data.num_classes)
    return fn.value(model(data.x), data.y, data.num_classes, weights)
