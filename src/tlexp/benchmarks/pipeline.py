"""Section 5: the input pipeline. An image folder decoded per item in 0, 2 and 4 DataLoader workers
against the in-memory pipeline, in training images per second (the loader and the normalisation, no
model); and peak memory over a whole epoch of a large folder, which stays bounded because only paths
are held and each worker decodes its own batches."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tlexp.benchmarks.common import Settings
from tlexp.data import ImageFolder, Synthetic

CLASSES = 10
STATISTICS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
"""A data config (mean, std) for ``prepare_for``: no model is needed to measure the pipeline."""


def write_folder(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` JPEGs of ``size`` px in ``root/<class>/``: smooth random images (upsampled 8x8 noise),
    so they compress and decode like photos rather than like noise."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = root / f"class_{index % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((size, size), Image.BILINEAR).save(folder / f"{index:06d}.jpg", quality=90)
    return root


def images_per_second(datamodule, max_batches: int | None = None) -> tuple[float, int]:
    """Training images per second over one epoch's batches (after the first, which pays worker start-up)."""
    loader = datamodule.train_dataloader()
    seen, started = 0, None
    for index, (images, _) in enumerate(loader):
        datamodule.normalize(images)
        if index == 0:
            started = time.perf_counter()
            continue
        seen += len(images)
        if max_batches is not None and index >= max_batches:
            break
    return seen / (time.perf_counter() - started), seen


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its largest finished child (a DataLoader worker)."""
    own, children = (resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"process_mb": own, "largest_worker_mb": children}


def folder_datamodule(root: Path, settings: Settings, workers: int) -> ImageFolder:
    datamodule = ImageFolder(root=str(root), val_split=CLASSES, image_size=settings.image_size,
                             batch_size=settings.batch_size, num_workers=workers, seed=0)
    return datamodule.prepare_for(STATISTICS)


def section_pipeline(settings: Settings) -> dict:
    results = {"images": settings.pipeline_images, "source_px": settings.pipeline_source_size, "workers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "folder", settings.pipeline_images, settings.pipeline_source_size)
        for workers in (0, 2, 4):
            rate, seen = images_per_second(folder_datamodule(root, settings, workers))
            results["workers"][workers] = {"images_per_s": rate, "images": seen}
            print(f"  image folder, {workers} workers: {rate:.0f} images/s over {seen} images", flush=True)
    memory = Synthetic(num_classes=CLASSES, train_per_class=settings.pipeline_images // CLASSES, test_per_class=2,
                       source_size=settings.pipeline_source_size, image_size=settings.image_size,
                       batch_size=settings.batch_size, val_size=CLASSES, seed=0).prepare_for(STATISTICS)
    rate, seen = images_per_second(memory)
    results["in_memory"] = {"images_per_s": rate, "images": seen}
    print(f"  in memory: {rate:.0f} images/s over {seen} images", flush=True)
    if settings.large_folder:
        results["large_folder"] = large = large_folder_memory(settings, settings.large_folder)
        print(f"  {large['images']} images, one epoch with 4 workers: peak memory {large['after']['process_mb']:.0f} MB "
              f"(main process), {large['after']['largest_worker_mb']:.0f} MB (largest worker)", flush=True)
    return results


def large_folder_memory(settings: Settings, count: int, workers: int = 4) -> dict:
    """One epoch over a generated folder of ``count`` images: peak memory before and after (not timed)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "folder", count, settings.pipeline_source_size)
        before = peak_rss_mb()
        datamodule = folder_datamodule(root, settings, workers)
        _, seen = images_per_second(datamodule)
        datamodule.train_set = datamodule.val_set = datamodule.test_set = None  # workers exit with their loader
        return {"images": count, "epoch_images": seen, "before": before, "after": peak_rss_mb()}
