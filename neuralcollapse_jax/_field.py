"""The vector field of the flow, `-grad L(theta)`, as a module that carries its loss."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._dataset import Dataset
from ._loss import AbstractLoss, as_loss
from ._loss import loss as loss_value
from ._model import TwoLayerReLU


def gradient(
    model: TwoLayerReLU,
    data: Dataset,
    loss: str | AbstractLoss = "cross_entropy",
    reduction: str | None = None,
) -> TwoLayerReLU:
    """`grad L(theta)` as a `TwoLayerReLU`-shaped PyTree (`relu'(0) = 0`); `loss` and
    `reduction` as in `neuralcollapse_jax.loss`."""
    return jax.grad(loss_value)(model, data, as_loss(loss, reduction))


class GradientField(eqx.Module):
    """The Diffrax vector field `(t, theta, data) -> -grad L(theta)` of the flow.

    With `relu'(0) = 0` this is the papers' regular vector field (ICLR 2024, App. E;
    NeurIPS 2025 App. C.1 with `xi_ij = 0` on the boundary). Wrapped in a
    `diffrax.ODETerm`, it is how the solvers and step-size controllers of this package
    learn the loss (`term_loss`).

    **Arguments:**

    - `loss`: the training loss, an `AbstractLoss`.
    """

    loss: AbstractLoss

    def __call__(self, t, y: TwoLayerReLU, data: Dataset) -> TwoLayerReLU:
        del t
        return jax.tree.map(jnp.negative, gradient(y, data, self.loss))


def vector_field(
    loss: str | AbstractLoss = "cross_entropy", reduction: str | None = None
) -> GradientField:
    """The flow's vector field for this loss: `GradientField(as_loss(loss, reduction))`."""
    return GradientField(as_loss(loss, reduction))


def term_loss(terms: diffrax.AbstractTerm) -> AbstractLoss:
    """The loss of an `ODETerm(GradientField(...))`: how `SlidingReLU` and
    `CrossingController`, which work on the flow's own quantities, learn it."""
    # `diffeqsolve` passes the term on wrapped (in its private `WrapTerm`).
    while isinstance(getattr(terms, "term", None), diffrax.AbstractTerm):
        terms = terms.term
    field = getattr(terms, "vector_field", None)
    if not isinstance(field, GradientField):
        raise ValueError(
            "SlidingReLU and CrossingController need the term "
            "diffrax.ODETerm(GradientField(loss)) (see vector_field), got "
            f"{type(terms).__name__} of {type(field).__name__}"
        )
    return field.loss
