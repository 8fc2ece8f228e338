"""Section 7: peak memory of the passes over a whole data set against the data set's size.

Predicting pseudo-labels over the unlabeled set and encoding cached features must hold no memory per image
beyond their output (two numbers per image; one feature vector per image). Each pass runs on Fashion-MNIST at
growing sizes (the whole pool last); a thread samples the resident memory every 5 ms, and the growth over the
memory held just before the pass must not grow with the size. Beside it,
the pseudo-label pass as it was written before the fix (``inference_mode(False)`` inside ``no_grad``, which
re-enabled autograd) on its first ``OLD_IMAGES`` images only, to show what each image cost then (at the
whole pool it filled a 24 GB machine).
"""

from __future__ import annotations

import gc
import threading
import time
from contextlib import contextmanager

import psutil
import torch

from tlexp.benchmarks.common import Settings, make_backbone
from tlexp.data import FashionMNIST, Synthetic
from tlexp.feature_cache.dataset import compute_features
from tlexp.strategies import PseudoLabel

LABELED_FRACTION = 0.01
OLD_IMAGES = 256


class PeakSampler:
    """The largest resident set size of this process while it runs (a 5 ms sampling thread), in MB."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._process = psutil.Process()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss / 2**20)
            time.sleep(self.interval)

    @contextmanager
    def measuring(self):
        gc.collect()
        self.before = self._process.memory_info().rss / 2**20
        self.peak = self.before
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._stop.clear()


def unlabeled_data(settings: Settings, backbone, limit: int | None):
    common = dict(image_size=settings.image_size, batch_size=settings.batch_size, seed=0, val_size=settings.val_size,
                  fraction=LABELED_FRACTION, unlabeled="rest", unlabeled_limit=limit)
    if settings.data == "synthetic":
        datamodule = Synthetic(num_classes=10, train_per_class=(limit or 2000) // 10 + 20, test_per_class=2, **common)
    else:
        datamodule = FashionMNIST(root=settings.data_root, download=False, **common)
    return datamodule.prepare_for(backbone)


def old_prediction(module, datamodule, images: int):
    """The pass before the fix, over the first ``images`` unlabeled images: ``inference_mode(False)`` inside
    ``no_grad`` turns autograd back on."""
    module.eval()
    batches = -(-images // datamodule.batch_size)
    with torch.no_grad(), torch.inference_mode(False):
        return torch.cat([module(datamodule.normalize(images)).softmax(1).cpu()
                          for _, (images, _) in zip(range(batches), module.unlabeled(datamodule).loader())]).max(1)


def measure(name: str, size: int, work) -> dict:
    """Run ``work()`` under the sampler: how much the resident memory grew, and the MB it returned."""
    with PeakSampler().measuring() as sampler:
        started = time.perf_counter()
        output = work()
        seconds = time.perf_counter() - started
    returned = sum(t.numel() * t.element_size() for t in output if isinstance(t, torch.Tensor)) / 2**20
    row = {"pass": name, "images": size, "seconds": seconds, "before_mb": sampler.before, "peak_mb": sampler.peak,
           "growth_mb": sampler.peak - sampler.before, "returned_mb": returned, "requires_grad": any(
               getattr(t, "requires_grad", False) for t in output)}
    print(f"  {name} over {size} images: peak {row['peak_mb']:.0f} MB, +{row['growth_mb']:.0f} MB during the pass, "
          f"{returned:.1f} MB returned, {seconds:.0f} s", flush=True)
    return row


def section_memory(settings: Settings) -> dict:
    backbone = make_backbone(settings.model)
    with torch.no_grad():  # the allocator's first buffers, which every pass reuses, are not any pass's
        backbone(torch.zeros(settings.batch_size, 3, settings.image_size, settings.image_size))
    sizes = [None if size == "all" else int(size) for size in settings.memory_sizes.split(",")]
    rows = []
    for limit in sizes:
        rows += passes_over(settings, backbone, limit, with_old=limit == sizes[0])
        gc.collect()  # the data of this size is gone before the next is decoded
    return {"rows": rows}


def passes_over(settings: Settings, backbone: torch.nn.Module, limit: int | None, with_old: bool) -> list[dict]:
    """The passes over ``limit`` unlabeled images (all: None), and the old prediction pass where ``with_old``."""
    datamodule = unlabeled_data(settings, backbone, limit)
    module = PseudoLabel(backbone, datamodule.num_classes, rounds=2)
    unlabeled = module.unlabeled(datamodule)
    count = len(unlabeled)
    rows = [measure("pseudo-label prediction", count, lambda: module.predict_unlabeled(datamodule)),
            measure("feature encoding", count, lambda: compute_features(
                backbone, unlabeled.dataset, datamodule.normalize, settings.batch_size))]
    if with_old:
        old = min(OLD_IMAGES, count)
        rows.append(measure("pseudo-label prediction before the fix", old, lambda: old_prediction(module, datamodule, old)))
    return rows
