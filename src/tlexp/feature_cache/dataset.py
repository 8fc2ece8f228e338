"""A split's cached inputs: loaded from the store or computed once, as a dataset of the split's length and order.

Inputs are stored in ``cache_dir`` (``strategy.cache_dir``, default ``${paths.data_dir}/feature_cache``; None: in
memory only) as ``<key>.pt`` (``key``, ``store``). A changed key computes them again; jobs of a sweep that share a
key load them from disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlexp.feature_cache import store
from tlexp.inference import inference_pass

log = logging.getLogger("tlexp")


class FeatureDataset(TensorDataset):
    """(inputs, label) pairs of one split, items in the split's order; ``key``: the cache key they are stored under."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, key: str = ""):
        super().__init__(features, labels)
        self.features, self.labels, self.key = features, labels, key


def encode_in_batches(backbone: nn.Module, dataset: Dataset, normalize, encode, batch_size: int,
                      device: torch.device | str) -> tuple[list, torch.Tensor]:
    """``encode(normalized batch)`` of every batch of ``dataset`` in order, and the labels: the one pass every cached
    input is computed with (pooled features, or a frozen prefix's activations). The backbone runs in an
    ``inference_pass`` (eval mode, no autograd) on ``device``; its modes and device are restored after. The cache
    passes the training batch size: bigger batches are no faster, on the CPU slower (the high-resolution stages'
    activations outgrow the caches: EfficientNet-Lite0's first three stages at 64 px took 2.2x as long in batches
    of 256 as of 64). The loader has its own generator: the cache may run this after a resume has restored the
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
                     device: torch.device | str = "cpu", encode: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``encode`` of every image, default the backbone's pooled features N x F float32; labels N) of ``dataset``."""
    encode = encode or (lambda images: backbone(images).float().cpu())
    features, labels = encode_in_batches(backbone, dataset, normalize, encode, batch_size, device)
    with inference_pass():  # plain tensors also when called inside inference mode
        return torch.cat(features), labels


def load_or_compute(path: Path | None, key: str, fields: dict, compute: Callable, mmap: bool = False):
    """((features, labels), found): stored at ``path`` under ``key``, else ``compute()`` and stored (no ``path``: in
    memory). Concurrent jobs compute a key once: the others wait on its lock, then load its file (``store``)."""
    loaded = store.load(path, key, mmap=mmap) if path else None
    if loaded is not None:
        return loaded, True
    with store.computing(path):
        loaded = store.load(path, key, mmap=mmap) if path else None  # stored by another job while this one waited
        if loaded is not None:
            return loaded, True
        features, labels = compute()
        if path:
            store.save(path, {"key": key, "fields": fields, "features": features, "labels": labels})
            if mmap:  # served from the file, not from memory
                return store.load(path, key, mmap=True), False
        return (features, labels), False


def split_inputs(boundary, datamodule, split: str, cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                 mmap: bool = False, weights: str | None = None) -> tuple[FeatureDataset, dict]:
    """The datamodule's ``split`` as cached inputs at ``boundary`` (``tlexp.feature_cache.boundary``), loaded from
    ``cache_dir/<key>.pt`` or computed in the training batch size (and stored); and ``{"key", "hit", "seconds", "path",
    "shape"}``. ``weights``: the boundary's weights hash, when the caller has it."""
    started = time.perf_counter()
    dataset = getattr(datamodule, f"{split}_set")
    key, fields = boundary.key(datamodule, split, dataset, weights)
    path = Path(cache_dir).expanduser() / f"{key}.pt" if cache_dir else None
    (features, labels), hit = load_or_compute(path, key, fields, lambda: compute_features(
        boundary.backbone, dataset, datamodule.normalize, datamodule.batch_size, device, boundary.encode), mmap)
    report = {"key": key, "hit": hit, "seconds": time.perf_counter() - started, "path": str(path) if path else None,
              "shape": list(features.shape)}
    log.info("feature cache %s at %s: %s %s (%s, %.2f s)", split, boundary.name, "loaded" if hit else "computed",
             tuple(features.shape), path or "in memory", report["seconds"])
    return FeatureDataset(features, labels, key), report
