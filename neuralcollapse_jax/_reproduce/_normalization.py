"""`normalization`: Figs. 4-5 of Min, Zhu and Vidal (NeurIPS 2025), the normalization
in front of the two-layer ReLU head.

A ResNet feature extractor, a normalization layer (none, LayerNorm or RMSNorm) and the
head `V relu(W^T .)` of width 1000, trained by SGD with momentum; NC1-NC4 of the head's
hidden features, the norms of its input and the accuracies after every epoch, for
several seeds (`neuralcollapse_jax.deep`). Written to `normalization.nc` (dims seed x
norm x epoch) and plotted as mean and spread over the seeds.

The default is CPU-sized: the small extractor on 3000 of the bundled MNIST images, 8
epochs. `--set arch=resnet18 --set epochs=50 --set seeds=5` (and `dataset=cifar10
cifar_folder=DIR`) are the paper's settings (a GPU run).

The bridge to the theory: for each normalization, the seed-0 extractor is frozen, its
normalized features of a few classes become a plain `Dataset`, and a fresh
`TwoLayerReLU` is trained on them by the exact gradient flow from a small
initialization; Assumption 1 is checked on the features and the flow's head is
compared with the SGD-trained one and with the limit of Theorem 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import deep, metrics, theory
from .._config import setting
from .._dataset import Dataset
from .._trajectory import Status
from ._output import Output, pyplot


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the `normalization` reproduction (defaults: the CPU-sized run)."""

    arch: str = setting("small", "normalization.arch")  # "small", "resnet18", "resnet50"
    # "mnist" (bundled) or "cifar10" (needs cifar_folder)
    dataset: str = setting("mnist", "normalization.dataset")
    cifar_folder: str | None = setting(None, "normalization.cifar_folder")
    norms: tuple[str, ...] = setting(
        ("none", "layernorm", "rmsnorm"), "normalization.norms"
    )
    seeds: int = setting(3, "normalization.seeds")
    # None: the paper's 50 epochs, decay every 20, all images, for the ResNets; for
    # arch=small, 8 epochs, decay every 4, the first 3000 training and 1000 held-out.
    epochs: int | None = setting(None, "normalization.epochs")
    decay_every: int | None = setting(None, "normalization.decay_every")
    train_size: int | None = setting(None, "normalization.train_size")
    test_size: int | None = setting(None, "normalization.test_size")
    batch_size: int = setting(128, "normalization.batch_size")
    # None: 0.02 for resnet50, else 0.1
    learning_rate: float | None = setting(None, "normalization.learning_rate")
    momentum: float = setting(0.95, "normalization.momentum")
    width: int = setting(1000, "model.width")
    bridge: bool = setting(True, "normalization.bridge")
    bridge_classes: tuple[int, ...] = setting((0, 1, 2), "normalization.bridge_classes")
    bridge_per_class: int = setting(100, "normalization.bridge_per_class")
    bridge_width: int = setting(50, "normalization.bridge_width")
    bridge_scale: float = setting(1e-3, "normalization.bridge_scale")
    bridge_t1: float = setting(100.0, "normalization.bridge_t1")
    bridge_rtol: float = setting(1e-5, "normalization.bridge_rtol")
    # resume from OUT/checkpoints when rerun
    checkpoints: bool = setting(True, "normalization.checkpoints")


QUICK = dict(
    seeds=2,
    epochs=2,
    decay_every=1,
    train_size=256,
    test_size=128,
    batch_size=64,
    width=64,
    bridge_per_class=8,
    bridge_width=8,
    bridge_t1=5.0,
    checkpoints=False,
)

PAPER = {
    "source": "Min, Zhu and Vidal (NeurIPS 2025), Figs. 4-5 and App. B (values read "
    "off the plots)",
    "settings": "torchvision ResNet18/50, first conv adapted, normalization then a "
    "two-layer ReLU head of width 1000, PyTorch default init, SGD batch 128, lr 0.1 "
    "(ResNet18) / 0.02 (ResNet50), momentum 0.95, lr x0.1 every 20 epochs, 50 epochs, "
    "5 seeds",
    "mnist_resnet18_nc1": {"none": 0.085, "layernorm": 0.065, "rmsnorm": 0.02},
    "mnist_resnet18_test_accuracy": "0.994-0.995",
    "cifar10_resnet18_nc1": {"none": "0.2-0.25", "layernorm": "0.2-0.25", "rmsnorm": 0.15},
    "cifar10_resnet18_test_accuracy": "0.83-0.85",
    "claim": "RMSNorm in front of the head markedly lowers NC1",
}


def _resolved(cfg: Config) -> dict:
    small = cfg.arch == "small"
    return {
        "epochs": cfg.epochs if cfg.epochs is not None else (8 if small else 50),
        "decay_every": cfg.decay_every
        if cfg.decay_every is not None
        else (4 if small else 20),
        "train_size": cfg.train_size if cfg.train_size is not None or not small else 3000,
        "test_size": cfg.test_size if cfg.test_size is not None or not small else 1000,
        "learning_rate": cfg.learning_rate
        if cfg.learning_rate is not None
        else (0.02 if cfg.arch == "resnet50" else 0.1),
    }


def _load(cfg: Config, sizes: dict):
    if cfg.dataset == "mnist":
        return deep.mnist_split(sizes["train_size"], sizes["test_size"])
    if cfg.dataset == "cifar10":
        if cfg.cifar_folder is None:
            raise ValueError("dataset=cifar10 needs cifar_folder (the python batches)")
        return deep.cifar10(cfg.cifar_folder, sizes["train_size"], sizes["test_size"])
    raise ValueError(f"dataset must be 'mnist' or 'cifar10', got {cfg.dataset!r}")


def check(cfg: Config) -> None:
    """Refuse impossible settings (before any output is written), naming the key."""
    if cfg.arch not in deep.ARCHITECTURES:
        raise ValueError(
            f"normalization.arch must be one of {sorted(deep.ARCHITECTURES)}, "
            f"got {cfg.arch!r}"
        )
    bad = [n for n in cfg.norms if n not in deep.NORMS]
    if bad or not cfg.norms or len(set(cfg.norms)) != len(cfg.norms):
        raise ValueError(
            f"normalization.norms must be distinct names from {deep.NORMS}, got {cfg.norms}"
        )
    if cfg.seeds < 1:
        raise ValueError(f"normalization.seeds must be a positive integer, got {cfg.seeds}")
    if cfg.dataset not in ("mnist", "cifar10"):
        raise ValueError(
            f"normalization.dataset must be 'mnist' or 'cifar10', got {cfg.dataset!r}"
        )
    if cfg.dataset == "cifar10" and cfg.cifar_folder is None:
        raise ValueError(
            "normalization.dataset=cifar10 needs normalization.cifar_folder "
            "(the folder of the python batches)"
        )


def run(cfg: Config, out: Output) -> dict:
    check(cfg)
    sizes = _resolved(cfg)
    train_set, test_set = _load(cfg, sizes)
    out.log(
        f"{cfg.dataset}: {train_set.num_samples} training, {test_set.num_samples} "
        f"held-out images; {cfg.arch}; {sizes['epochs']} epochs, lr "
        f"{sizes['learning_rate']:g} x0.1 every {sizes['decay_every']}"
    )
    ckpt = out.folder / "checkpoints"
    if cfg.checkpoints:
        ckpt.mkdir(exist_ok=True)
    hist = {
        m: np.full((cfg.seeds, len(cfg.norms), sizes["epochs"]), np.nan)
        for m in deep.MEASURES
    }
    trained = {}
    for j, norm in enumerate(cfg.norms):
        for seed in range(cfg.seeds):
            # The same seed gives the same extractor and head for every normalization.
            k_model, k_data = jax.random.split(jax.random.key(seed))
            model, state = deep.DeepClassifier.init(
                k_model,
                cfg.arch,
                norm,
                train_set.in_channels,
                train_set.num_classes,
                cfg.width,
            )
            model, state, h = deep.train(
                model,
                state,
                train_set,
                test_set,
                key=k_data,
                epochs=sizes["epochs"],
                batch_size=cfg.batch_size,
                learning_rate=sizes["learning_rate"],
                momentum=cfg.momentum,
                decay_every=sizes["decay_every"],
                checkpoint=ckpt / f"{norm}_seed{seed}.eqx" if cfg.checkpoints else None,
                progress=out.progress_bar,
            )
            for m in deep.MEASURES:
                hist[m][seed, j] = h[m]
            if seed == 0:
                trained[norm] = (model, state)
            out.log(
                f"{norm}, seed {seed}: NC1 {h['nc1'][-1]:.4g}, test accuracy "
                f"{h['test_accuracy'][-1]:.4f}"
            )
    ds = xr.Dataset(
        {m: (("seed", "norm", "epoch"), hist[m]) for m in deep.MEASURES},
        coords={
            "seed": np.arange(cfg.seeds),
            "norm": list(cfg.norms),
            "epoch": np.arange(1, sizes["epochs"] + 1),
        },
        attrs={"arch": cfg.arch, "dataset": cfg.dataset, "source": PAPER["source"]},
    )
    path = out.folder / "normalization.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    out.files.append(path.name)
    _plot(ds, out)
    final = {
        norm: {
            m: {
                "mean": float(np.mean(hist[m][:, j, -1])),
                "std": float(np.std(hist[m][:, j, -1])),
            }
            for m in deep.MEASURES
        }
        for j, norm in enumerate(cfg.norms)
    }
    results = {
        "name": "normalization",
        "settings": sizes,
        "data": {"train": train_set.num_samples, "test": test_set.num_samples},
        "final": final,
        "paper": PAPER,
        "ok": True,
    }
    if cfg.bridge:
        results["bridge"] = {
            norm: _bridge(cfg, model, state, train_set, out, norm)
            for norm, (model, state) in trained.items()
        }
        results["ok"] = all(b["flow_success"] for b in results["bridge"].values())
    return results


def _summary(model, data: Dataset) -> dict:
    feats = model.features(data.x)
    y, k = data.y, data.num_classes
    return {
        "train_accuracy": float(
            np.mean(np.argmax(np.asarray(model(data.x)), 1) == np.asarray(y))
        ),
        "nc1": float(metrics.nc1(feats, y, k)),
        "nc1_papyan": float(metrics.nc1_papyan(feats, y, k)),
        "nc2": float(metrics.nc2(feats, y, k)),
        "nc3": float(metrics.nc3(feats, y, k, model.V)),
        "class_orthogonality": float(metrics.class_orthogonality(feats, y, k)),
    }


def _limit(model, data, limit) -> dict:
    if limit is None:
        return {}
    d = theory.limit_distance(model, data, limit)
    keys = (
        "distance",
        "alignment",
        "self_duality",
        "orthogonality",
        "feature_error",
        "margin_error",
    )
    return {k: float(d[k]) for k in keys}


def _bridge(cfg: Config, model, state, images, out: Output, norm: str) -> dict:
    data = deep.frozen_features(
        model, state, images, cfg.bridge_classes, cfg.bridge_per_class
    )
    centred = Dataset(
        data.x - jnp.mean(data.x, axis=0, keepdims=True), data.y, data.num_classes
    )
    a1 = theory.check_assumption1(data)
    a1c = theory.check_assumption1(centred)
    try:
        limit = theory.predicted_limit(data)
        limit_error = None
    except ValueError as e:  # a class with 0 in its convex hull: no Theorem 1 limit
        limit, limit_error = None, str(e)
    traj = deep.flow_head(
        data,
        key=jax.random.key(0),
        width=cfg.bridge_width,
        scale=cfg.bridge_scale,
        t1=cfg.bridge_t1,
        rtol=cfg.bridge_rtol,
    )
    jax.block_until_ready(traj.loss)
    sgd = deep.restricted_head(model, cfg.bridge_classes)
    sgd = jax.tree.map(lambda a: jnp.asarray(a, data.x.dtype), sgd)
    flow = traj.final
    result = {
        "n": data.num_samples,
        "dim": data.dim,
        "assumption1": {"holds": a1.holds, "slack": a1.slack, "detail": a1.detail},
        "assumption1_centred": {
            "holds": a1c.holds,
            "slack": a1c.slack,
            "detail": a1c.detail,
        },
        "fraction_cross_class_pairs_negative": _negative_share(data),
        "flow_status": Status.message(int(traj.status)),
        "flow_success": int(traj.status) == Status.SUCCESS,
        "flow_steps": int(traj.stats["num_steps"]),
        "flow_final_loss": float(np.asarray(traj.loss)[-1]),
        "flow": {**_summary(flow, data), **_limit(flow, data, limit)},
        "sgd": {**_summary(sgd, data), **_limit(sgd, data, limit)},
        "limit_error": limit_error,
    }
    out.log(
        f"bridge {norm}: {a1.detail}; flow {result['flow_status']}, NC1 flow "
        f"{result['flow']['nc1']:.3g} vs SGD {result['sgd']['nc1']:.3g}"
    )
    return result


def _negative_share(data: Dataset) -> float:
    """Share of cross-class pairs with a negative cosine (1 under Assumption 1)."""
    x = np.asarray(data.x)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.asarray(data.y)
    cos = u @ u.T
    diff = y[:, None] != y[None, :]
    return float(np.mean(cos[diff] < 0))


def _plot(ds: xr.Dataset, out: Output) -> None:
    plt = pyplot()
    panels = (
        ("nc1", "NC1 (trace ratio)", True),
        ("nc1_papyan", "NC1 (Papyan)", True),
        ("nc2", "NC2 (orthogonal frame)", True),
        ("nc3", "NC3 (target Ẽ/√K)", False),
        ("test_accuracy", "test accuracy", False),
        ("norm_after_cv", "std/mean of ||head input||", False),
    )
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    epochs = ds.epoch.values
    for ax, (name, title, log) in zip(axes.flat, panels):
        for i, norm in enumerate(ds.norm.values):
            v = ds[name].sel(norm=norm).values
            mean, std = np.mean(v, axis=0), np.std(v, axis=0)
            ax.plot(epochs, mean, color=f"C{i}", label=str(norm))
            ax.fill_between(epochs, mean - std, mean + std, color=f"C{i}", alpha=0.25)
        if log:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="epoch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(
        f"{ds.attrs['arch']} on {ds.attrs['dataset']}: mean ± std over "
        f"{ds.sizes['seed']} seeds"
    )
    out.figure(fig, "normalization")
