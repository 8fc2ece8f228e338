"""How the splits are held and fed: ``Split`` (labels with an image array or a list of files), the per-epoch
seeded sampler that a mid-epoch resume can start part-way, and how many loader workers a dataset gets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DistributedSampler

from tlexp.data.images import FileImages


@dataclass
class Split:
    """Labels plus either an in-memory uint8 image array or a list of image files."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[Path] | None = None

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.labels[indices], None if self.images is None else self.images[indices],
                     None if self.paths is None else [self.paths[i] for i in indices])


class EpochSampler(DistributedSampler):
    """DistributedSampler's seeded per-epoch order; its next epoch can start ``skip`` indices in
    (the images an interrupted epoch already trained on, after a mid-epoch resume)."""

    skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def decodes_files(dataset) -> bool:
    """Whether ``dataset`` (or one it wraps: concatenated, relabeled) decodes image files per item."""
    if isinstance(dataset, FileImages):
        return True
    inner = getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", None)]
    return any(d is not None and decodes_files(d) for d in inner)


def auto_workers(dataset) -> int:
    """``num_workers: auto``: one DataLoader worker per core but one (at most 8) for a dataset decoded from files,
    and none for tensors in memory (workers would only add copying)."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if decodes_files(dataset) else 0
