"""A feature extractor, a normalization layer and the two-layer ReLU head.

`f(x) = V relu(W^T norm(g(x)))`: `g` a `ResNet`, `norm` none, `eqx.nn.LayerNorm` or
`eqx.nn.RMSNorm`, and the head the toolkit's own `TwoLayerReLU` (bias-free, as in the
papers), so that every metric and theory function applies to it unchanged: the
head's hidden features `relu(W^T norm(g(x)))` are `head.features(norm(g(x)))`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._model import TwoLayerReLU
from ._resnet import ARCHITECTURES, AXIS, ResNet


NORMS = ("none", "layernorm", "rmsnorm")


def make_norm(name: str, dim: int, dtype) -> eqx.Module:
    r"""The normalization layer in front of the head, as PyTorch defines it.

    - `"none"`: `eqx.nn.Identity()`.
    - `"layernorm"`: `(z - mean(z)) / sqrt(var(z) + 1e-5) * gamma + beta` per sample
      (`torch.nn.LayerNorm(dim)`: learned scale and shift).
    - `"rmsnorm"`: `z / sqrt(mean(z^2) + eps) * gamma` with `eps` the machine epsilon
      of `dtype` (`torch.nn.RMSNorm(dim)`: a learned scale, no shift).
    """
    if name == "none":
        return eqx.nn.Identity()
    if name == "layernorm":
        return eqx.nn.LayerNorm(dim, eps=1e-5, dtype=dtype)
    if name == "rmsnorm":
        eps = float(jnp.finfo(dtype).eps)
        return eqx.nn.RMSNorm(dim, eps=eps, use_bias=False, dtype=dtype)
    raise ValueError(f"unknown normalization {name!r}; choose one of {NORMS}")


def torch_linear_head(
    key: PRNGKeyArray, in_dim: int, width: int, out_dim: int, dtype
) -> TwoLayerReLU:
    """A `TwoLayerReLU` with PyTorch's default `nn.Linear` weights (bias-free):
    `W ~ U(+-1/sqrt(D))`, `V ~ U(+-1/sqrt(h))` (Kaiming-uniform with `a = sqrt(5)`)."""
    kw, kv = jax.random.split(key)
    bw, bv = 1.0 / jnp.sqrt(in_dim), 1.0 / jnp.sqrt(width)
    W = jax.random.uniform(kw, (in_dim, width), dtype, -bw, bw)
    V = jax.random.uniform(kv, (out_dim, width), dtype, -bv, bv)
    return TwoLayerReLU(W, V)


class DeepClassifier(eqx.Module):
    """`V relu(W^T norm(g(x)))`: extractor `g`, normalization `norm`, head `(W, V)`.

    Methods take a batch of images `(n, C, H, W)` and the BatchNorm state; in training
    mode BatchNorm uses the batch statistics and the returned state carries the updated
    running averages; under `eqx.nn.inference_mode` it uses the running averages.
    """

    extractor: ResNet
    norm: eqx.Module
    head: TwoLayerReLU

    @staticmethod
    def init(
        key: PRNGKeyArray,
        arch: str,
        norm: str,
        in_channels: int,
        num_classes: int,
        width: int = 1000,
        dtype=jnp.float32,
    ) -> tuple[DeepClassifier, eqx.nn.State]:
        """A fresh network and its BatchNorm state, with PyTorch's default init.

        **Arguments:**

        - `key`: PRNG key.
        - `arch`: `"small"`, `"resnet18"` or `"resnet50"` (see `ResNet`).
        - `norm`: `"none"`, `"layernorm"` or `"rmsnorm"` (see `make_norm`).
        - `in_channels`: 1 (MNIST) or 3 (CIFAR-10).
        - `num_classes`: `K`, the head's outputs.
        - `width`: the head's hidden width `h` (the paper: 1000).
        - `dtype`: floating dtype of all parameters.

        **Returns:** `(model, state)`.
        """
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}"
            )
        if norm not in NORMS:
            raise ValueError(f"unknown normalization {norm!r}; choose one of {NORMS}")
        ke, kh = jax.random.split(key)

        def build():
            g = ARCHITECTURES[arch](in_channels, key=ke, dtype=dtype)
            head = torch_linear_head(kh, g.num_features, width, num_classes, dtype)
            return DeepClassifier(g, make_norm(norm, g.num_features, dtype), head)

        model, state = eqx.nn.make_with_state(build)()
        return model, state

    def embed(
        self, x: Float[Array, "n C H W"], state: eqx.nn.State
    ) -> tuple[Float[Array, "n F"], eqx.nn.State]:
        """The extractor's features `g(x)` (before the normalization)."""
        return jax.vmap(self.extractor, (0, None), (0, None), axis_name=AXIS)(x, state)

    def normalize(self, z: Float[Array, "n F"]) -> Float[Array, "n F"]:
        """`norm(z)`, row by row: the head's input."""
        return jax.vmap(self.norm)(z)

    def __call__(
        self, x: Float[Array, "n C H W"], state: eqx.nn.State
    ) -> tuple[Float[Array, "n K"], eqx.nn.State]:
        """Logits `V relu(W^T norm(g(x)))` and the new state."""
        z, state = self.embed(x, state)
        return self.head(self.normalize(z)), state
