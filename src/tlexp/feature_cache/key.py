"""The cache key: a hash of everything that determines a split's cached inputs.

The model's architecture name and a hash of the weights and buffers that compute them (all of the backbone's for
the pooled features, ``weights_hash``; the skipped modules' for a boundary below, ``modules_hash``), the data config
(mean, std, interpolation) and image size, the dataset (datamodule class and a hash of the split's resized images,
or of its files, and labels), the split and its subset indices; a boundary below the pooled features adds its stage
and storage dtype (``boundary``). Settings that only pick the subset (fraction, seed) reach the key through the
indices, so a sweep over fractions reuses the validation and test inputs.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn
from torch.utils.data import Dataset

FORMAT = 1
"""Bump when the way features are computed changes, so old cache files are not reused."""


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


def modules_hash(modules: list[nn.Module]) -> str:
    """Hash of every parameter and buffer of ``modules``, by position and name (a frozen prefix's weights)."""
    hasher = hashlib.blake2b(digest_size=16)
    for index, module in enumerate(modules):
        for name, tensor in sorted(module.state_dict().items()):
            hasher.update(f"{index}.{name}".encode())
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
