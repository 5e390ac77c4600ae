"""Image data for the deep experiments: the bundled MNIST set split in two, CIFAR-10.

Nothing is downloaded. MNIST is the 10,000-image MNIST *test* set shipped with the
package (`neuralcollapse_jax.datasets`), split by file order: images 0-7999 train,
8000-9999 held out. CIFAR-10 is read from the standard "python version" batches in a
folder the user points to.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..datasets import _mnist_raw


MNIST_TRAIN = 8000  # the first 8000 bundled images train, the last 2000 are held out
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class Images(eqx.Module):
    """A labelled image set: `x` of shape `(n, C, H, W)`, labels `y` in `0..K-1`."""

    x: Float[Array, "n C H W"]
    y: Int[Array, " n"]
    num_classes: int = eqx.field(static=True)

    @property
    def num_samples(self) -> int:
        return self.x.shape[0]

    @property
    def in_channels(self) -> int:
        return self.x.shape[1]

    def take(self, idx) -> Images:
        idx = np.asarray(idx)
        return Images(self.x[idx], self.y[idx], self.num_classes)


def _standardize(train, test, dtype):
    """Scale pixels to [0, 1], then standardize each channel by the training set's
    mean and standard deviation (torchvision's `Normalize` with the data's own values)."""
    train = train.astype(np.float64) / 255.0
    test = test.astype(np.float64) / 255.0
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True)
    return (
        jnp.asarray((train - mean) / std, dtype=dtype),
        jnp.asarray((test - mean) / std, dtype=dtype),
    )


def _check_size(name, value, available):
    if value is None:
        return available
    if int(value) != value or not 1 <= value <= available:
        raise ValueError(f"{name} must be an integer in 1..{available}, got {value!r}")
    return int(value)


def mnist_split(
    train_size: int | None = None, test_size: int | None = None, dtype=jnp.float32
) -> tuple[Images, Images]:
    """The bundled MNIST images as a training and a held-out set, 10 classes.

    Images 0-7999 of the file (the MNIST test set) train, images 8000-9999 are held
    out; `train_size` / `test_size` keep the first so many of each. Pixels are
    standardized by the training part's mean and standard deviation.

    **Returns:** `(train, test)`, `Images` of shape `(n, 1, 28, 28)`.
    """
    images, labels = _mnist_raw()
    n_train = _check_size("train_size", train_size, MNIST_TRAIN)
    n_test = _check_size("test_size", test_size, len(labels) - MNIST_TRAIN)
    x = images.reshape(-1, 1, 28, 28)
    tr = slice(0, n_train)
    te = slice(MNIST_TRAIN, MNIST_TRAIN + n_test)
    xtr, xte = _standardize(x[tr], x[te], dtype)
    y = jnp.asarray(labels.astype(np.int32))
    return Images(xtr, y[tr], 10), Images(xte, y[te], 10)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"CIFAR-10 folder {path.parent} has no file {path.name}")
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # any unpickling failure means the file is not a batch
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: no b'data'/b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} "
            f"{data.shape}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int32)


def cifar10(
    folder: str | Path,
    train_size: int | None = None,
    test_size: int | None = None,
    dtype=jnp.float32,
) -> tuple[Images, Images]:
    """CIFAR-10 from the "python version" batches in `folder`, 10 classes.

    Reads `data_batch_1` ... `data_batch_5` (training) and `test_batch` (held out):
    pickled dicts with `b"data"`, `uint8` of shape `(N, 3072)` (the red, green and blue
    32x32 planes of each image) and `b"labels"`. `train_size` / `test_size` keep the
    first so many images. Pixels are standardized per channel by the training set's
    mean and standard deviation. No augmentation.

    **Raises:** `ValueError` for a missing folder or file, or a file that is not such a
    batch.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"CIFAR-10 folder {folder} does not exist (expected the python "
            f"batches {', '.join(CIFAR_FILES)})"
        )
    parts = [_read_batch(folder / name) for name in CIFAR_FILES]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    xte, yte = parts[5]
    n_train = _check_size("train_size", train_size, len(ytr))
    n_test = _check_size("test_size", test_size, len(yte))
    xtr, xte = _standardize(xtr[:n_train], xte[:n_test], dtype)
    return (
        Images(xtr, jnp.asarray(ytr[:n_train]), 10),
        Images(xte, jnp.asarray(yte[:n_test]), 10),
    )
