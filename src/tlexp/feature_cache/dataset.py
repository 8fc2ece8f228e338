"""A datamodule's images replaced by backbone features: loaded from the store or computed once.

Features are stored in ``cache_dir`` (``strategy.cache_dir``, default
``${paths.data_dir}/feature_cache``; None: in memory only) as ``<key>.pt`` (``key``, ``store``).
A changed key computes the features again; jobs of a sweep that share a key load them from disk.
"""

from __future__ import annotations

import logging
import time
import weakref
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlexp.feature_cache import store
from tlexp.feature_cache.key import cache_key, key_fields, weights_hash
from tlexp.inference import inference_pass

log = logging.getLogger("tlexp")

SPLITS = ("train", "val", "test", "target_test")
"""A datamodule's ``<split>_set``s; ``target_test`` (the ``data.target_domain`` test split) is None without a target domain."""


class CachedFeatures(NamedTuple):
    """One item or batch of a ``FeatureDataset``: its own type, so a datamodule can tell it from
    images (the default collate and Lightning's device transfer keep named tuples)."""

    features: torch.Tensor
    labels: torch.Tensor


class FeatureDataset(TensorDataset):
    """(features, label) pairs of one split: its cache key, the image dataset it replaced
    (weakly) and the hash of the weights that computed it."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, key: str = "", source: Dataset | None = None,
                 weights: str | None = None):
        super().__init__(features, labels)
        self.features, self.labels, self.key, self.weights = features, labels, key, weights
        self.source = weakref.ref(source) if source is not None else (lambda: None)

    def __getitem__(self, index) -> CachedFeatures:
        return CachedFeatures(self.features[index], self.labels[index])


def encode_in_batches(backbone: nn.Module, dataset: Dataset, normalize, encode, batch_size: int,
                      device: torch.device | str) -> tuple[list, torch.Tensor]:
    """``encode(normalized batch)`` of every batch of ``dataset`` in order, and the labels: the one pass both caches
    compute with (pooled features here, the frozen prefix's activations in ``prefix``). The backbone runs in an
    ``inference_pass`` (eval mode, no autograd) on ``device``; its modes and device are restored after. The caches
    pass the training batch size: bigger batches are no faster, on the CPU slower (the high-resolution stages'
    activations outgrow the caches: EfficientNet-Lite0's first three stages at 64 px took 2.2x as long in batches
    of 256 as of 64). The loader has its own generator: the prefix cache runs this after a resume has restored the
    RNG streams, which it must not draw from."""
    original = next(backbone.parameters()).device
    outputs, labels = [], []
    try:
        with inference_pass(backbone.to(device)):
            for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()):
                outputs.append(encode(normalize(images.to(device, non_blocking=True))))
                labels.append(targets)
            labels = torch.cat(labels)
    finally:
        backbone.to(original)
    return outputs, labels


def compute_features(backbone: nn.Module, dataset: Dataset, normalize, batch_size: int = 64,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x F float32, labels N) of ``dataset``."""
    features, labels = encode_in_batches(backbone, dataset, normalize, lambda images: backbone(images).float().cpu(),
                                         batch_size, device)
    with inference_pass():  # plain tensors also when called inside inference mode
        return torch.cat(features), labels


def image_dataset(datamodule, split: str, weights: str) -> Dataset | None:
    """The split's images to compute from; None when it already holds this backbone's features (or is absent)."""
    dataset = getattr(datamodule, f"{split}_set", None)
    if not isinstance(dataset, FeatureDataset):
        return dataset
    if dataset.weights == weights:
        return None
    if dataset.source() is None:
        raise RuntimeError(f"feature cache: the {split} split holds features of another backbone and its "
                           "images are gone; use a fresh datamodule for another model")
    return dataset.source()  # another backbone (a reused datamodule): from the images again


def cache_datamodule(backbone: nn.Module, datamodule, cache_dir: str | Path | None = None,
                     device: torch.device | str = "cpu", batch_size: int | None = None, splits=SPLITS) -> dict:
    """Replace the datamodule's datasets of ``splits`` by cached backbone features.

    Loads each split's features from ``cache_dir/<key>.pt`` or computes (and stores) them.
    Returns ``{split: {"key", "hit", "seconds", "path"}}``. Idempotent: splits that already
    hold features are left as they are.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else None
    weights = weights_hash(backbone)
    report = {}
    for split in splits:
        dataset = image_dataset(datamodule, split, weights)
        if dataset is None:
            continue
        started = time.perf_counter()
        fields = key_fields(backbone, datamodule, split, weights, dataset)
        key = cache_key(fields)
        path = cache_dir / f"{key}.pt" if cache_dir else None
        # a split that is another split's dataset (no test split: test on val) reuses its features
        done = [getattr(datamodule, f"{s}_set", None) for s in SPLITS]
        same = next(((f.features, f.labels) for f in done if isinstance(f, FeatureDataset)
                     and f.source() is dataset and f.weights == weights), None)
        loaded = same or (store.load(path, key) if path else None)
        hit = loaded is not None
        if not hit:
            with store.computing(path):
                # another job may have stored the file while this one waited for the lock
                loaded = store.load(path, key) if path else None
                hit = loaded is not None
                if not hit:
                    loaded = compute_features(backbone, dataset, datamodule.normalize,
                                              batch_size or datamodule.batch_size, device)
                    if path:
                        store.save(path, {"key": key, "fields": fields, "features": loaded[0], "labels": loaded[1]})
        setattr(datamodule, f"{split}_set", FeatureDataset(*loaded, key=key, source=dataset, weights=weights))
        report[split] = {"key": key, "hit": hit, "seconds": time.perf_counter() - started, "path": str(path) if path else None}
        log.info("feature cache %s: %s %d x %d (%s, %.2f s)", split, "loaded" if hit else "computed",
                 *loaded[0].shape, path or "in memory", report[split]["seconds"])
    return report
