"""Seeded, stratified index selection: the fixed validation carve and the training fraction."""

from __future__ import annotations

import numpy as np

from tlexp.errors import InvalidValue


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels`` (at least one per class), sorted.

    Each class is permuted by the seed and its prefix taken, so for one seed a smaller
    fraction is always a subset of a larger one.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, size: float | int, seed: int, name: str = "val_size",
                     keep: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out) indices: ``size`` examples (an int) or a share (a float < 1), stratified, leaving at least
    ``keep`` of each class in rest (``sizes.Carve`` sizes auto carves so that this holds); ``name`` is the
    caller's parameter that ``size`` came from, for the error."""
    n = len(labels)
    count = int(size) if size >= 1 else int(round(size * n))
    classes, sizes = np.unique(labels, return_counts=True)
    if not (len(classes) <= count < n):
        raise InvalidValue(name, size, f"between {len(classes)} (one per class) and {n - 1} examples, or a share in (0, 1)")
    # exactly ``count`` held out: per-class quotas by largest remainder, at least one per class
    quota, most = count * sizes / n, sizes - keep
    take = np.clip(np.floor(quota), 1, most).astype(int)
    while take.sum() < count:
        take[np.argmax(np.where(take < most, quota - take, -np.inf))] += 1
    while take.sum() > count:
        take[np.argmax(np.where(take > 1, take - quota, -np.inf))] -= 1
    rng = np.random.default_rng(seed)  # the same draws as stratified_fraction, so exact quotas pick the same examples
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == cls))[:k] for cls, k in zip(classes, take)]))
    rest = np.setdiff1d(np.arange(n), held)
    return rest, held
