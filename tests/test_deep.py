"""Deep extractors, the normalized two-layer head, SGD training and the bridge to the
flow (`neuralcollapse_jax.deep`).

References are independent of the code under test: torchvision's published parameter
counts with the changed layers recounted by hand, the definitions of LayerNorm and
RMSNorm, NumPy re-implementations, and `gradient_flow` called directly.
"""

import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import deep, metrics


def _abstract(build, channels):
    """The extractor and its state as shapes only (`jax.eval_shape`: nothing runs)."""
    make = eqx.nn.make_with_state(build)
    return eqx.filter_eval_shape(
        lambda k: make(channels, key=k, dtype=jnp.float32), jax.random.key(0)
    )


def _count(module):
    leaves = [x for x in jax.tree.leaves(module) if hasattr(x, "dtype")]
    return sum(
        int(np.prod(x.shape)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)
    )


# torchvision: 7x7 stem on 3 channels (3*64*49 weights) and fc 512->1000 (+bias) or
# 2048->1000 (+bias). Ours: 3x3 stem on C channels (C*64*9), no fc. BatchNorm running
# statistics are state (buffers in PyTorch), not parameters.
TV18, TV50 = 11_689_512, 25_557_032
STEM_TV = 3 * 64 * 7 * 7


@pytest.mark.parametrize(
    "build, channels, expected",
    [
        (deep.resnet18, 3, TV18 - STEM_TV - (512 * 1000 + 1000) + 3 * 64 * 9),
        (deep.resnet18, 1, TV18 - STEM_TV - (512 * 1000 + 1000) + 1 * 64 * 9),
        (deep.resnet50, 3, TV50 - STEM_TV - (2048 * 1000 + 1000) + 3 * 64 * 9),
        (deep.resnet50, 1, TV50 - STEM_TV - (2048 * 1000 + 1000) + 1 * 64 * 9),
    ],
)
def test_parameter_counts_match_torchvision(build, channels, expected):
    model, _ = _abstract(build, channels)
    assert _count(model) == expected


def _stage_shapes(model, state, x):
    holder = {}

    def f(img):
        shapes = []
        out, s = model.stem_bn(model.stem(img), state)
        shapes.append(out.shape)
        for stage in model.stages:
            for blk in stage:
                out, s = blk(out, s)
            shapes.append(out.shape)
        holder["shapes"] = shapes
        return jnp.mean(out, axis=(1, 2))

    feats = jax.vmap(f, axis_name="batch")(x)
    return holder["shapes"], feats


STAGES = [
    (deep.resnet18, 28, 1, [(64, 28), (64, 28), (128, 14), (256, 7), (512, 4)], 512),
    (deep.resnet18, 32, 3, [(64, 32), (64, 32), (128, 16), (256, 8), (512, 4)], 512),
    (deep.resnet50, 32, 3, [(64, 32), (256, 32), (512, 16), (1024, 8), (2048, 4)], 2048),
    (deep.small_resnet, 28, 1, [(8, 14), (8, 14), (16, 7), (32, 4)], 32),
]


@pytest.mark.parametrize("build, size, channels, stages, features", STAGES)
def test_stage_shapes(build, size, channels, stages, features):
    model, state = _abstract(build, channels)
    x = jax.ShapeDtypeStruct((2, channels, size, size), jnp.float32)
    shapes, feats = eqx.filter_eval_shape(_stage_shapes, model, state, x)
    assert [(c, h) for c, h, w in shapes] == stages
    assert all(h == w for _, h, w in shapes)
    assert feats.shape == (2, features) and feats.dtype == jnp.float32
    out, _ = eqx.filter_eval_shape(
        jax.vmap(model, (0, None), (0, None), axis_name="batch"), x, state
    )
    assert out.shape == (2, features) and model.num_features == features


def _forward(build, size, channels, features):
    model, state = eqx.nn.make_with_state(build)(
        channels, key=jax.random.key(0), dtype=jnp.float32
    )
    assert model.num_features == features
    x = jax.random.normal(jax.random.key(1), (2, channels, size, size), jnp.float32)
    feats, _ = jax.vmap(model, (0, None), (0, None), axis_name="batch")(x, state)
    assert feats.shape == (2, features) and feats.dtype == jnp.float32
    # Pooled ReLU outputs: finite, non-negative, not all zero.
    assert bool(jnp.all(jnp.isfinite(feats))) and bool(jnp.all(feats >= 0))
    assert float(jnp.max(feats)) > 0


@pytest.mark.slow
def test_small_forward_float32():
    _forward(deep.small_resnet, 28, 1, 32)


@pytest.mark.slow
@pytest.mark.parametrize("build, size, channels, stages, features", STAGES[:3])
def test_resnet_forward_float32(build, size, channels, stages, features):
    _forward(build, size, channels, features)


def test_rmsnorm_unit_rms_times_scale(getkey):
    norm = deep.make_norm("rmsnorm", 16, jnp.float64)
    gamma = jax.random.uniform(getkey(), (16,), jnp.float64, 0.5, 2.0)
    norm = eqx.tree_at(lambda m: m.weight, norm, gamma)
    z = 3.0 * jax.random.normal(getkey(), (5, 16), jnp.float64)
    out = np.asarray(jax.vmap(norm)(z))
    rms = np.sqrt(np.mean((out / np.asarray(gamma)) ** 2, axis=1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-12)
    # Directions unchanged up to the scale: RMSNorm only rescales each row.
    np.testing.assert_allclose(
        out
        / np.asarray(gamma)
        * np.sqrt(np.mean(np.asarray(z) ** 2, axis=1, keepdims=True)),
        np.asarray(z),
        rtol=1e-10,
    )


def test_layernorm_zero_mean_unit_variance(getkey):
    norm = deep.make_norm("layernorm", 16, jnp.float64)
    z = 1.0 + 3.0 * jax.random.normal(getkey(), (5, 16), jnp.float64)
    out = np.asarray(jax.vmap(norm)(z))
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-12)
    var = np.asarray(z).var(axis=1)
    # eps = 1e-5 inside the square root, as torch.nn.LayerNorm.
    np.testing.assert_allclose(out.var(axis=1), var / (var + 1e-5), rtol=1e-12)
    assert isinstance(deep.make_norm("none", 16, jnp.float64), eqx.nn.Identity)
    with pytest.raises(ValueError, match="normalization"):
        deep.make_norm("batchnorm", 16, jnp.float64)


def test_head_is_torch_linear_init(getkey):
    head = deep.torch_linear_head(getkey(), 64, 400, 10, jnp.float64)
    assert isinstance(head, nc.TwoLayerReLU)
    assert head.W.shape == (64, 400) and head.V.shape == (10, 400)
    # U(-b, b) has variance b^2/3.
    assert np.abs(head.W).max() <= 1 / 8 and np.abs(head.V).max() <= 1 / 20
    assert np.var(np.asarray(head.W)) == pytest.approx(1 / 64 / 3, rel=0.05)


@pytest.fixture(scope="module")
def tiny():
    train, test = deep.mnist_split(train_size=128, test_size=32)
    return train, test


def test_mnist_split(tiny):
    train, test = tiny
    assert train.x.shape == (128, 1, 28, 28) and test.x.shape == (32, 1, 28, 28)
    assert abs(float(train.x.mean())) < 1e-5 and float(train.x.std()) == pytest.approx(
        1.0, rel=1e-4
    )
    with pytest.raises(ValueError, match="train_size"):
        deep.mnist_split(train_size=9000)


@pytest.mark.slow
def test_training_overfits_and_metrics_match_toolkit(tiny):
    train, test = tiny
    # Two images of every digit (the NC metrics need all classes).
    digits = np.asarray(train.y)
    train = train.take(
        np.sort(np.concatenate([np.flatnonzero(digits == d)[:2] for d in range(10)]))
    )
    model, state = deep.DeepClassifier.init(
        jax.random.key(0), "small", "rmsnorm", 1, 10, width=64
    )
    model, state, hist = deep.train(
        model,
        state,
        train,
        test,
        key=jax.random.key(1),
        epochs=40,
        batch_size=20,
        learning_rate=0.05,
        decay_every=40,
    )
    assert hist["train_accuracy"][-1] == 1.0
    assert hist["loss"][-1] < 1e-2 * hist["loss"][0]
    # The head's metrics equal the toolkit's on a TwoLayerReLU of the same weights,
    # fed with RMSNorm computed by hand from the extractor's features.
    z = deep.head_inputs(model, state, train)["before"].astype(np.float64)
    gamma = np.asarray(model.norm.weight, np.float64)
    eps = float(jnp.finfo(jnp.float32).eps)
    x = z / np.sqrt(np.mean(z**2, axis=1, keepdims=True) + eps) * gamma
    head = nc.TwoLayerReLU(
        np.asarray(model.head.W, np.float64), np.asarray(model.head.V, np.float64)
    )
    feats = head.features(jnp.asarray(x))
    y = train.y
    got = deep.measure(model, state, train, test)
    for name, fn in (
        ("nc1", metrics.nc1),
        ("nc1_papyan", metrics.nc1_papyan),
        ("nc2", metrics.nc2),
    ):
        assert got[name] == pytest.approx(float(fn(feats, y, 10)), rel=2e-3), name
    assert got["nc3"] == pytest.approx(float(metrics.nc3(feats, y, 10, head.V)), rel=2e-3)
    assert got["train_accuracy"] == np.mean(
        np.argmax(np.asarray(head(jnp.asarray(x))), 1) == np.asarray(y)
    )
    r = np.linalg.norm(x, axis=1)
    assert got["norm_after_mean"] == pytest.approx(r.mean(), rel=1e-4)


@pytest.mark.slow
def test_checkpoint_resume_equals_uninterrupted(tiny, tmp_path):
    train, test = tiny
    kw = dict(
        key=jax.random.key(3), epochs=2, batch_size=32, learning_rate=0.05, decay_every=1
    )
    model, state = deep.DeepClassifier.init(
        jax.random.key(2), "small", "none", 1, 10, width=16
    )
    _, _, full = deep.train(model, state, train, test, **kw)

    class Stop(Exception):
        pass

    def stop(line):
        raise Stop(line)

    path = tmp_path / "run.eqx"
    with pytest.raises(Stop):
        deep.train(model, state, train, test, checkpoint=path, log=stop, **kw)
    lines = []
    _, _, resumed = deep.train(
        model, state, train, test, checkpoint=path, log=lines.append, **kw
    )
    assert lines[0].startswith("resumed") and "epoch 1" in lines[0]
    for name in deep.MEASURES:
        np.testing.assert_array_equal(resumed[name], full[name])
    with pytest.raises(ValueError, match="other settings"):
        deep.train(
            model, state, train, test, checkpoint=path, **{**kw, "learning_rate": 0.1}
        )


def _write_cifar(folder, n=4, rng=None):
    rng = rng or np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        batches[name] = batch
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return batches


def test_cifar10_reader(tmp_path):
    batches = _write_cifar(tmp_path)
    train, test = deep.cifar10(tmp_path)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(
        np.asarray(train.y),
        sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []),
    )
    # Channel planes: red is the first 1024 bytes, row-major 32x32.
    red = raw[:, :1024].reshape(-1, 32, 32) / 255.0
    expected = (red - red.mean()) / red.std()
    np.testing.assert_allclose(np.asarray(train.x[:, 0]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(test.y), batches["test_batch"][b"labels"])
    small, _ = deep.cifar10(tmp_path, train_size=6, test_size=2)
    assert small.num_samples == 6


def test_cifar10_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        deep.cifar10(tmp_path / "nowhere")
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="no file data_batch_3"):
        deep.cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        deep.cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, f)
    with pytest.raises(ValueError, match="uint8"):
        deep.cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, f)
    with pytest.raises(ValueError, match="0..9"):
        deep.cifar10(tmp_path)


@pytest.mark.slow
def test_bridge_flow_on_frozen_features_equals_flow_on_dataset(tiny):
    train, _ = tiny
    model, state = deep.DeepClassifier.init(
        jax.random.key(4), "small", "layernorm", 1, 10, width=16
    )
    data = deep.frozen_features(model, state, train, classes=(1, 0), per_class=5)
    assert data.num_classes == 2 and data.num_samples == 10
    # Labels follow the order of `classes`: digit 1 -> 0, digit 0 -> 1.
    digits = np.asarray(train.y)
    idx = np.sort(np.concatenate([np.flatnonzero(digits == c)[:5] for c in (1, 0)]))
    np.testing.assert_array_equal(np.asarray(data.y), (digits[idx] == 0).astype(int))
    after = deep.head_inputs(model, state, train.take(idx))["after"]
    np.testing.assert_array_equal(np.asarray(data.x), after.astype(np.float64))

    key = jax.random.key(5)
    traj = deep.flow_head(
        data, key=key, width=6, scale=1e-2, t1=2.0, rtol=1e-6, solver=None, num_saves=5
    )
    plain = nc.Dataset(jnp.asarray(after, jnp.float64), data.y, 2)
    init = nc.TwoLayerReLU.init(key, plain.dim, 6, 2, 1e-2)
    ts = np.concatenate([[0.0], np.geomspace(2e-3, 2.0, 5)])
    ref = nc.gradient_flow(init, plain, t1=2.0, saveat=ts, reduction="mean", rtol=1e-6)
    assert int(traj.status) == int(nc.Status.SUCCESS)
    np.testing.assert_allclose(traj.final.W, ref.final.W, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(traj.loss, ref.loss, rtol=1e-12)
    # And the flow lowers the loss (it trains).
    assert float(traj.loss[-1]) < float(traj.loss[0])


def test_bad_settings(tiny, getkey):
    train, test = tiny
    with pytest.raises(ValueError, match="arch"):
        deep.DeepClassifier.init(getkey(), "vgg", "none", 1, 10)
    with pytest.raises(ValueError, match="normalization"):
        deep.DeepClassifier.init(getkey(), "small", "groupnorm", 1, 10)
    model, state = deep.DeepClassifier.init(getkey(), "small", "none", 1, 10, width=8)
    with pytest.raises(ValueError, match="batch_size"):
        deep.train(model, state, train, test, key=getkey(), epochs=1, batch_size=1000)
    with pytest.raises(ValueError, match="classes"):
        deep.frozen_features(model, state, train, classes=(3,))
