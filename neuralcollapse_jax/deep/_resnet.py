"""ResNet feature extractors (He et al. 2016) as Equinox modules, torchvision's layout.

The blocks and stages follow `torchvision.models.resnet`: `BasicBlock` (two 3x3
convolutions, ResNet18/34) and `Bottleneck` (1x1, 3x3, 1x1 with expansion 4, the
stride on the 3x3 as in torchvision's "ResNet v1.5", ResNet50), a 1x1 convolution and
BatchNorm on the shortcut when the shape changes, stages of widths 64, 128, 256, 512.

Adapted to small images as is standard for MNIST and CIFAR-10: the stem is a 3x3
convolution of stride 1 (torchvision: 7x7 of stride 2) and there is no max-pool, so a
28x28 or 32x32 image keeps its resolution in the first stage. The final linear layer
is removed: the extractor ends with the global average pool and returns the
`(512 * expansion,)` feature vector that the head receives.

BatchNorm is `eqx.nn.BatchNorm(mode="batch", momentum=0.9)`: batch statistics in
training and running averages (PyTorch's momentum 0.1) at inference, as PyTorch does;
the running statistics live in an `eqx.nn.State`. Call an extractor on one image
`(C, H, W)` under `jax.vmap(..., axis_name="batch")` (as `DeepClassifier` does).

Convolutions are bias-free; Equinox's default initialization of their weights,
`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, is PyTorch's default (Kaiming-uniform with
`a = sqrt(5)`); BatchNorm starts at weight 1, bias 0. (torchvision's `resnet18()`
re-initializes convolutions with Kaiming-normal; the paper states PyTorch's default.)
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


AXIS = "batch"


def _conv(cin, cout, size, stride, key, dtype):
    return eqx.nn.Conv2d(
        cin, cout, size, stride, padding=size // 2, use_bias=False, key=key, dtype=dtype
    )


def _bn(channels, dtype):
    return eqx.nn.BatchNorm(channels, AXIS, momentum=0.9, mode="batch", dtype=dtype)


class BasicBlock(eqx.Module):
    """`relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`, expansion 1."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    shortcut: tuple[eqx.nn.Conv2d, eqx.nn.BatchNorm] | None
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, key, dtype=None):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = _conv(cin, width, 3, stride, k1, dtype)
        self.bn1 = _bn(width, dtype)
        self.conv2 = _conv(width, width, 3, 1, k2, dtype)
        self.bn2 = _bn(width, dtype)
        self.shortcut = _shortcut(cin, width, stride, k3, dtype)

    def __call__(self, x, state):
        out, state = self.bn1(self.conv1(x), state)
        out, state = self.bn2(self.conv2(jax.nn.relu(out)), state)
        skip, state = _apply_shortcut(self.shortcut, x, state)
        return jax.nn.relu(out + skip), state


class Bottleneck(eqx.Module):
    """`conv1x1 -> conv3x3 (stride) -> conv1x1 (x4 channels)`, each with BatchNorm."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    conv3: eqx.nn.Conv2d
    bn3: eqx.nn.BatchNorm
    shortcut: tuple[eqx.nn.Conv2d, eqx.nn.BatchNorm] | None
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, key, dtype=None):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.conv1 = _conv(cin, width, 1, 1, k1, dtype)
        self.bn1 = _bn(width, dtype)
        self.conv2 = _conv(width, width, 3, stride, k2, dtype)
        self.bn2 = _bn(width, dtype)
        self.conv3 = _conv(width, 4 * width, 1, 1, k3, dtype)
        self.bn3 = _bn(4 * width, dtype)
        self.shortcut = _shortcut(cin, 4 * width, stride, k4, dtype)

    def __call__(self, x, state):
        out, state = self.bn1(self.conv1(x), state)
        out, state = self.bn2(self.conv2(jax.nn.relu(out)), state)
        out, state = self.bn3(self.conv3(jax.nn.relu(out)), state)
        skip, state = _apply_shortcut(self.shortcut, x, state)
        return jax.nn.relu(out + skip), state


def _shortcut(cin, cout, stride, key, dtype):
    if stride == 1 and cin == cout:
        return None
    return (_conv(cin, cout, 1, stride, key, dtype), _bn(cout, dtype))


def _apply_shortcut(shortcut, x, state):
    if shortcut is None:
        return x, state
    conv, bn = shortcut
    return bn(conv(x), state)


class ResNet(eqx.Module):
    """A ResNet feature extractor: stem, stages of residual blocks, global average pool.

    `ResNet(block, layers, widths, in_channels, key=...)` builds the stem (3x3 conv of
    stride `stem_stride`, default 1, BatchNorm, ReLU; no max-pool) and `len(layers)`
    stages, stage `s` with `layers[s]` blocks of width `widths[s]`, the first block of
    every stage but the first with stride 2. Use `resnet18`, `resnet50` or `small_resnet`.

    Called on one image `(C, H, W)` with the BatchNorm `state`, under
    `jax.vmap(..., axis_name="batch")`; returns the pooled features `(F,)` with
    `F = widths[-1] * block.expansion` (`num_features`) and the new state.
    """

    stem: eqx.nn.Conv2d
    stem_bn: eqx.nn.BatchNorm
    stages: tuple[tuple[BasicBlock | Bottleneck, ...], ...]
    num_features: int = eqx.field(static=True)

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        in_channels: int,
        *,
        stem_stride: int = 1,
        key: PRNGKeyArray,
        dtype=None,
    ):
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise ValueError(
                f"layers and widths must be non-empty and of equal length, with at least "
                f"one block per stage; got {tuple(layers)} and {tuple(widths)}"
            )
        key, k0 = jax.random.split(key)
        self.stem = _conv(in_channels, widths[0], 3, stem_stride, k0, dtype)
        self.stem_bn = _bn(widths[0], dtype)
        cin = widths[0]
        stages = []
        for s, (count, width) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(count):
                key, kb = jax.random.split(key)
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(block(cin, width, stride, key=kb, dtype=dtype))
                cin = width * block.expansion
            stages.append(tuple(blocks))
        self.stages = tuple(stages)
        self.num_features = cin

    def __call__(
        self, x: Float[Array, "C H W"], state: eqx.nn.State
    ) -> tuple[Float[Array, " F"], eqx.nn.State]:
        out, state = self.stem_bn(self.stem(x), state)
        out = jax.nn.relu(out)
        for stage in self.stages:
            for blk in stage:
                out, state = blk(out, state)
        return jnp.mean(out, axis=(1, 2)), state


def resnet18(in_channels: int, *, key: PRNGKeyArray, dtype=None) -> ResNet:
    """ResNet18: basic blocks `(2, 2, 2, 2)`, widths 64-512, 512 features."""
    return ResNet(
        BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), in_channels, key=key, dtype=dtype
    )


def resnet50(in_channels: int, *, key: PRNGKeyArray, dtype=None) -> ResNet:
    """ResNet50: bottleneck blocks `(3, 4, 6, 3)`, widths 64-512, 2048 features."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), in_channels, key=key, dtype=dtype
    )


def small_resnet(in_channels: int, *, key: PRNGKeyArray, dtype=None) -> ResNet:
    """A small ResNet for CPU runs: a stem of stride 2, basic blocks `(1, 1, 1)` of
    widths 8, 16, 32; 32 features, 19,480 parameters for one input channel."""
    return ResNet(
        BasicBlock, (1, 1, 1), (8, 16, 32), in_channels, stem_stride=2, key=key, dtype=dtype
    )


ARCHITECTURES = {"small": small_resnet, "resnet18": resnet18, "resnet50": resnet50}
