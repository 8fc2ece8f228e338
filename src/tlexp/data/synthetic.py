"""Small generated class-conditional RGB images: a fixed random pattern per class plus noise. For tests."""

from __future__ import annotations

import numpy as np

from tlexp.data import sizes
from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split


def make_images(num_classes: int, per_class: int, size: int, noise: float, rng: np.random.Generator,
                patterns: np.ndarray) -> Split:
    labels = np.repeat(np.arange(num_classes), per_class)
    images = patterns[labels] + rng.normal(0, noise, (len(labels), size, size, 3))
    return Split(labels.astype(np.int64), np.clip(images, 0, 255).astype(np.uint8))


class Synthetic(TransferDataModule):
    val_carve = sizes.Carve(share=0.2, cap=32, keep=1)
    auto_batch_size = 32
    """auto: the former defaults, 32 validation images and batches of 32 (of the 256 images by default)."""

    def __init__(self, num_classes: int = 4, train_per_class: int = 64, test_per_class: int = 32,
                 source_size: int = 16, noise: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.shape = (num_classes, train_per_class, test_per_class, source_size, noise)

    def load(self):
        num_classes, train_per_class, test_per_class, size, noise = self.shape
        rng = np.random.default_rng(1234)
        patterns = rng.uniform(0, 255, (num_classes, size, size, 3))
        train = make_images(num_classes, train_per_class, size, noise, rng, patterns)
        test = make_images(num_classes, test_per_class, size, noise, rng, patterns)
        return train, None, test, [f"class{i}" for i in range(num_classes)]
