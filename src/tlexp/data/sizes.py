"""The ``auto`` data sizes: one rule per default that depends on how much data there is.

Transfer learning is for small datasets, so every default must hold from a few dozen images per class to
millions. Each rule starts from the source's former fixed default, so where that fitted (Fashion-MNIST, digits,
the synthetic set) ``auto`` gives the same number; it shrinks only where the data is too small for it, and the
sets that only cost time (test, unlabeled) are capped where the data is large. An explicit value is used as given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tlexp.errors import InvalidValue
from tlexp.rules import Rule, is_integer, number

AUTO = "auto"

TEST_CAP = 10_000
"""Most test images ``auto`` keeps (``test_limit``) or holds out of train (``test_size``): the standard error of an
accuracy on 10,000 images is under 0.5 points, and Fashion-MNIST's official 10,000-image test set stays whole."""
MIN_STEPS = 4
"""Optimizer steps an epoch at least, for ``batch_size: auto``: one or two batches an epoch make too few updates."""
MIN_BATCH = 8
"""The smallest batch ``batch_size: auto`` shrinks to (or the whole training set, if smaller)."""
UNLABELED_FLOOR, UNLABELED_PER_LABEL = 2_000, 10
"""``unlabeled_limit: auto``: at most max(2,000, 10 x the labeled images); self-training gains little from more,
and it predicts every unlabeled image each round."""

CARVE_ACCEPTED = "auto, a number of examples >= 1 or a share in (0, 1)"
BATCH_ACCEPTED = "auto or an integer >= 1"
TEST_LIMIT_ACCEPTED = f"auto (the whole test split up to {TEST_CAP:,} images), null (all of it) or an integer >= 1"
UNLABELED_ACCEPTED = (f"auto (at most max({UNLABELED_FLOOR:,}, {UNLABELED_PER_LABEL} x the labeled images)), "
                      "null (all of them) or an integer >= 1")

CARVE = Rule(CARVE_ACCEPTED, lambda v: v == AUTO or (number(v) and v > 0))
"""What a carved split's size (``val_size``, ``val_split``, ``test_size``) accepts; the data bound it at setup."""
BATCH = Rule(BATCH_ACCEPTED, lambda v: v == AUTO or is_integer(v, 1))
TEST_LIMIT = Rule(TEST_LIMIT_ACCEPTED, lambda v: v is None or v == AUTO or is_integer(v, 1))
UNLABELED_LIMIT = Rule(UNLABELED_ACCEPTED, lambda v: v is None or v == AUTO or is_integer(v, 1))


@dataclass(frozen=True)
class Carve:
    """The ``auto`` size of a split held out of a labeled pool, stratified: ``share`` of the pool, at most ``cap``,
    at least one image per class, and always ``keep`` images of every class left behind (1: a training image;
    2 for the test carve: a validation and a training image)."""

    share: float
    cap: int
    keep: int

    def count(self, labels: np.ndarray, key: str) -> tuple[int, str]:
        """(images to hold out, why); ``key``: the config key, for the error when a class is too small."""
        classes, sizes = np.unique(labels, return_counts=True)
        if sizes.min() <= self.keep:
            raise InvalidValue(key, AUTO, f"auto where every class has at least {self.keep + 1} images, a number of "
                               "examples or a share in (0, 1)", f"class {classes[sizes.argmin()]} has "
                               f"{sizes.min()}: auto holds out one per class and leaves {self.keep} behind")
        share = round(self.share * len(labels))
        count = max(len(classes), min(self.cap, share))
        why = f"{self.share:.0%} of {len(labels):,}"
        if count != share:
            why = f"{'one per class' if count > share else f'capped at {self.cap:,}'}; {why} is {share:,}"
        return count, why


VAL = Carve(share=0.2, cap=500, keep=1)
"""The validation carve: 500 images (the former default) unless that is over a fifth of the pool."""
TEST = Carve(share=0.2, cap=TEST_CAP, keep=2)
"""The test carve of a source without a test split: a fifth of train (the former default), at most ``TEST_CAP``."""


def batch_size(default: int, train_size: int, unlabeled: int = 0) -> tuple[int, str]:
    """``batch_size: auto``: the source's ``default`` batch, smaller on a training set of under ``MIN_STEPS``
    batches so that an epoch has ``MIN_STEPS`` steps, but not below ``MIN_BATCH`` (or the training set). The
    batch is fixed for the run, so it is sized for its largest training set: with the ``unlabeled`` images
    that pseudo-labels may add (most of them, in ``pseudo_label``'s later rounds)."""
    most = train_size + unlabeled
    size = min(default, most, max(MIN_BATCH, math.ceil(most / MIN_STEPS)))
    why = f"{train_size:,} training images" + (f" + {unlabeled:,} unlabeled" if unlabeled else "")
    return size, why if size == default else f"{default} cut for {MIN_STEPS} steps an epoch on {why}"


def cap_test_split(test_size: int) -> tuple[int, str]:
    """``test_limit: auto``: the whole test split up to ``TEST_CAP`` images, a fixed stratified subset beyond."""
    return TEST_CAP, f"{'all' if test_size <= TEST_CAP else 'a stratified subset'} of {test_size:,}"


def unlabeled_cap(labeled: int, available: int) -> tuple[int, str]:
    """``unlabeled_limit: auto``: at most max(``UNLABELED_FLOOR``, ``UNLABELED_PER_LABEL`` x the labeled images)."""
    limit = max(UNLABELED_FLOOR, UNLABELED_PER_LABEL * labeled)
    return limit, f"max({UNLABELED_FLOOR:,}, {UNLABELED_PER_LABEL} x {labeled:,} labeled); {available:,} available"
