"""Backbone features computed once, for strategies that never train the backbone.

A frozen backbone in eval mode fed deterministic inputs is a constant function, so its
features can be computed once per split and the head trained on them: an epoch then costs
a pass of the head instead of a pass of the backbone. This is only equivalent when

- every backbone parameter is frozen for the whole run (the ``frozen`` strategy),
- BatchNorm is in eval mode (``strategy.bn_policy=frozen``): ``adapt``/``train`` change it,
- the training transform has no randomness (``data.augment=false``), and
- the backbone has no active stochastic layers (dropout / drop path, ``model.kwargs``).

``strategy.cache_features``: ``auto`` (on when equivalent, off with an info log otherwise),
``true`` (on; refused with a ConfigError when not equivalent) or ``false``.

Features are stored in ``strategy.cache_dir`` (default ``${paths.data_dir}/feature_cache``;
null: in memory only) as ``<key>.pt``. The key is a hash of everything that determines them:
the model's architecture name and a hash of all its weights and buffers, the data config
(mean, std, interpolation) and image size, the dataset (datamodule class and a hash of the
split's resized images, or of its files, and labels), the split and its subset indices.
Settings that only pick the subset (fraction, seed) reach the key through the indices, so
a sweep over fractions reuses the validation and test features. A changed
key computes the features again; jobs of a sweep that share a key load them from disk.

Concurrent jobs (a parallel sweep, or sweeps on several nodes sharing the directory) compute
a missing key once: the job that computes holds an exclusive ``fcntl.flock`` on
``<key>.pt.lock``; the others wait for it (one info log line) and then load its file. The
kernel drops the lock when its process ends, crashed or killed, so there are no stale locks;
the empty lock files stay in the directory (removing one while a job waits on it would let a
third job compute beside the first). Files are written under a temporary name and renamed, so
a reader sees a complete file or none. Without ``fcntl`` (Windows), or on a filesystem without
locking (e.g. Lustre mounted without ``flock``; NFS with ``local_lock=flock`` locks per node only),
jobs that start together may each compute the same features; the results are still correct.

The datasets of the datamodule are replaced by ``TensorDataset(features, labels)`` of the
same length, so its seeded sampler gives every epoch the same order as an uncached run; the
datamodule leaves 2-D (feature) batches unnormalised and the ``Frozen`` module skips the
backbone for them. The model is untouched: checkpoints hold the whole network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import weakref
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlexp.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, see the module docstring
    fcntl = None

log = logging.getLogger("tlexp")

FORMAT = 1
"""Bump when the way features are computed changes, so old cache files are not reused."""

SETTINGS = ("auto", True, False)
SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
"""Splits whose features each Trainer stage needs: test features only when a test runs."""


# --- when caching is allowed ------------------------------------------------------------------
def stochastic_layers(backbone: nn.Module) -> list[str]:
    """Names of dropout / drop-path layers that are active in train mode."""
    names = ["drop_rate"] if getattr(backbone, "drop_rate", 0) else []  # timm applies it functionally
    for name, module in backbone.named_modules():
        p = getattr(module, "p", None) if isinstance(module, nn.modules.dropout._DropoutNd) else getattr(module, "drop_prob", None)
        if p:
            names.append(name or type(module).__name__)
    return names


def blockers(bn_policy: str, augment: bool, backbone: nn.Module | None = None) -> list[str]:
    """Why cached features would differ from running the backbone (empty: caching is equivalent)."""
    reasons = []
    if augment:
        reasons.append("data.augment=true makes every epoch's inputs different")
    if bn_policy != "frozen":
        reasons.append(f"strategy.bn_policy={bn_policy} changes BatchNorm during training (needs bn_policy=frozen)")
    stochastic = stochastic_layers(backbone) if backbone is not None else []
    if stochastic:
        reasons.append(f"the backbone has active dropout/drop-path layers ({', '.join(stochastic[:3])}; see model.kwargs)")
    return reasons


def check_setting(setting) -> None:
    if setting not in SETTINGS or not isinstance(setting, (str, bool)):
        raise ConfigError("strategy.cache_features", setting, "auto, true or false")


def resolve(setting, bn_policy: str, augment: bool, backbone: nn.Module | None = None) -> bool:
    """Whether to cache: ``auto`` when equivalent; ``true`` or a ConfigError; ``false``."""
    check_setting(setting)
    if setting is False:
        return False
    reasons = blockers(bn_policy, augment, backbone)
    if not reasons:
        return True
    if setting is True:
        raise ConfigError("strategy.cache_features", True, "false or auto with these settings",
                          "cached features would differ from the backbone's: " + "; ".join(reasons))
    log.info("feature cache off (strategy.cache_features=auto): %s", "; ".join(reasons))
    return False


# --- the key ---------------------------------------------------------------------------------------
def _digest(hasher, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous().reshape(-1)
    hasher.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    hasher.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")


def weights_hash(module: nn.Module) -> str:
    """Hash of every parameter and buffer (BN running statistics included), by name."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(name.encode())
        _digest(hasher, tensor)
    return hasher.hexdigest()


def content_hash(dataset: Dataset) -> str:
    """Hash of a split's inputs: the uint8 images in memory, or the files (path, size, mtime)."""
    hasher = hashlib.blake2b(digest_size=16)
    if hasattr(dataset, "images"):
        _digest(hasher, dataset.images)
    elif hasattr(dataset, "paths"):
        for path in dataset.paths:
            stat = os.stat(path)
            hasher.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(dataset).__name__} for the feature cache")
    if hasattr(dataset, "labels"):
        _digest(hasher, torch.as_tensor(dataset.labels))
    return hasher.hexdigest()


def key_fields(backbone: nn.Module, datamodule, split: str, weights: str | None = None, dataset: Dataset | None = None) -> dict:
    """Everything the features of ``split`` (its image dataset: ``dataset`` or the datamodule's) depend on."""
    dataset = dataset if dataset is not None else getattr(datamodule, f"{split}_set")
    indices = datamodule.indices.get(split)
    return {
        "format": FORMAT,
        "model": getattr(backbone, "pretrained_cfg", {}).get("architecture") or type(backbone).__name__,
        "weights": weights or weights_hash(backbone),
        "data_config": {"mean": datamodule.mean.flatten().tolist(), "std": datamodule.std.flatten().tolist(),
                        "interpolation": datamodule.interpolation},
        "image_size": datamodule.image_size,
        "dataset": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "split": split,
        "indices": hashlib.blake2b(json.dumps(indices).encode(), digest_size=16).hexdigest() if indices is not None else None,
        "content": content_hash(dataset),
    }


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


# --- computing, storing, loading -------------------------------------------------------------------
@torch.no_grad()
def compute_features(backbone: nn.Module, dataset: Dataset, normalize, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x F float32, labels N) of ``dataset``, the backbone in eval mode, in batches."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            images = normalize(images.to(device, non_blocking=True))
            features.append(backbone(images).float().cpu())
            labels.append(targets)
    finally:
        backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


def _save(path: Path, payload: dict) -> None:
    """Write atomically, so concurrent jobs of a sweep never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and a random part: jobs on other nodes of a shared filesystem can have the same pid
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _computing(path: Path | None):
    """Hold an exclusive lock on ``<path>.lock`` while computing the features stored at ``path``.

    Waits (with one info log line) while another process holds it. ``flock`` locks are released
    by the kernel when the process ends, however it ends. No lock for an in-memory cache, without
    ``fcntl`` (debug log) or where the filesystem refuses locks (warning): the atomic ``_save``
    keeps concurrent jobs correct, they may only compute the same features twice.
    """
    if path is None or fcntl is None:
        if path is not None:
            log.debug("feature cache: no fcntl on this platform, computing %s without a lock", path)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:  # writable: NFS emulates flock with fcntl locks
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another job computing the feature cache %s", path)
                fcntl.flock(lock, fcntl.LOCK_EX)
            locked = True
        except OSError as error:  # e.g. ENOLCK/ENOSYS: a network filesystem without lock support
            log.warning("feature cache: cannot lock %s (%s), computing without a lock", lock.name, error)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(lock, fcntl.LOCK_UN)  # also if a forked child still holds the file open


def _load(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as error:  # a corrupt or foreign file: compute again and overwrite it
        log.warning("feature cache: ignoring unreadable %s (%s)", path, error)
        return None
    if payload.get("key") != key:
        return None
    return payload["features"], payload["labels"]


def cache_datamodule(backbone: nn.Module, datamodule, cache_dir: str | Path | None = None,
                     device: torch.device | str = "cpu", batch_size: int | None = None, splits=SPLITS) -> dict:
    """Replace the datamodule's datasets of ``splits`` by cached backbone features.

    Loads each split's features from ``cache_dir/<key>.pt`` or computes (and stores) them.
    Returns ``{split: {"key", "hit", "seconds", "path"}}``. Idempotent: splits that already
    hold features are left as they are.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else None
    weights = weights_hash(backbone)
    original_device = next(backbone.parameters()).device
    moved = False
    report = {}
    try:
        for split in splits:
            dataset = getattr(datamodule, f"{split}_set")
            if isinstance(dataset, FeatureDataset):
                if dataset.weights == weights:
                    continue  # already features of this backbone
                if dataset.source() is None:
                    raise RuntimeError(f"feature cache: the {split} split holds features of another backbone and its "
                                       "images are gone; use a fresh datamodule for another model")
                dataset = dataset.source()  # another backbone (a reused datamodule): from the images again
            if dataset is None:
                continue
            started = time.perf_counter()
            fields = key_fields(backbone, datamodule, split, weights, dataset)
            key = cache_key(fields)
            path = cache_dir / f"{key}.pt" if cache_dir else None
            # a split that is another split's dataset (no test split: test on val) reuses its features
            done = [getattr(datamodule, f"{s}_set") for s in SPLITS]
            same = next(((f.features, f.labels) for f in done if isinstance(f, FeatureDataset)
                         and f.source() is dataset and f.weights == weights), None)
            loaded = same or (_load(path, key) if path else None)
            hit = loaded is not None
            if not hit:
                with _computing(path):
                    # another job may have stored the file while this one waited for the lock
                    loaded = _load(path, key) if path else None
                    hit = loaded is not None
                    if not hit:
                        if not moved:
                            backbone.to(device)
                            moved = True
                        loaded = compute_features(backbone, dataset, datamodule.normalize,
                                                  batch_size or max(datamodule.batch_size, 256), device)
                        if path:
                            _save(path, {"key": key, "fields": fields, "features": loaded[0], "labels": loaded[1]})
            setattr(datamodule, f"{split}_set", FeatureDataset(*loaded, key=key, source=dataset, weights=weights))
            report[split] = {"key": key, "hit": hit, "seconds": time.perf_counter() - started, "path": str(path) if path else None}
            log.info("feature cache %s: %s %d x %d (%s, %.2f s)", split, "loaded" if hit else "computed",
                     *loaded[0].shape, path or "in memory", report[split]["seconds"])
    finally:
        if moved:
            backbone.to(original_device)
    return report


class FeatureDataset(TensorDataset):
    """(features, label) pairs of one split: its cache key, the image dataset it replaced
    (weakly) and the hash of the weights that computed it."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, key: str = "", source: Dataset | None = None,
                 weights: str | None = None):
        super().__init__(features, labels)
        self.features, self.labels, self.key, self.weights = features, labels, key, weights
        self.source = weakref.ref(source) if source is not None else (lambda: None)


# --- the Lightning side ------------------------------------------------------------------------------
class FeatureCache(Callback):
    """Swaps the datamodule's images for cached features at setup, on the trainer's device.

    Rank zero computes and stores first; the other ranks then load from disk.
    """

    def __init__(self, setting="auto", cache_dir: str | None = None, bn_policy: str = "frozen"):
        check_setting(setting)
        self.setting, self.cache_dir, self.bn_policy = setting, cache_dir, bn_policy
        self.enabled: bool | None = None
        self.report: dict = {}
        self.weights: str | None = None

    def setup(self, trainer, pl_module, stage):
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "normalize"):
            if self.setting is True:
                raise ConfigError("strategy.cache_features", True, "false or auto without a tlexp datamodule",
                                  "feature caching needs trainer.fit(module, datamodule=...) with a tlexp datamodule")
            return
        if self.enabled is None:
            self.enabled = resolve(self.setting, self.bn_policy, getattr(datamodule, "augment", False), pl_module.backbone)
        if not self.enabled:
            return
        device = trainer.strategy.root_device
        splits = STAGE_SPLITS.get(str(getattr(stage, "value", stage)), ())
        shared = self.cache_dir is not None and trainer.world_size > 1
        if shared and not trainer.is_global_zero:
            trainer.strategy.barrier("feature_cache")
        self.report.update(cache_datamodule(pl_module.backbone, datamodule, self.cache_dir, device, splits=splits))
        if shared and trainer.is_global_zero:
            trainer.strategy.barrier("feature_cache")
        self.weights = weights_hash(pl_module.backbone)

    def on_test_start(self, trainer, pl_module):
        """The test checkpoint's backbone must be the one the features were computed with."""
        if self.enabled and self.weights and weights_hash(pl_module.backbone) != self.weights:
            raise RuntimeError("feature cache: the backbone's weights changed after the features were computed "
                               "(a checkpoint of another model?); run with strategy.cache_features=false")
