"""Section 2: ``frozen`` with the feature cache against ``frozen`` without it, and a job that loads it from disk."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from tlexp.benchmarks.common import EpochClock, Settings, make_backbone, make_data, sync, trainer
from tlexp.callbacks import EpochSeeder
from tlexp.feature_cache import FeatureCache
from tlexp.strategies import Frozen


def run_frozen(settings: Settings, cache: bool, cache_dir: str | None) -> dict:
    backbone = make_backbone(settings.model)
    datamodule = make_data(settings, backbone, settings.cache_train_size, settings.val_size)
    module = Frozen(backbone, datamodule.num_classes, lr_head=1e-2)
    clock = EpochClock(settings.device)
    started = time.perf_counter()
    callbacks = [clock, EpochSeeder(0), FeatureCache(cache, cache_dir)]  # as train.py attaches it from strategy.cache_*
    trainer(settings, epochs=settings.epochs, val_batches=1.0, callbacks=callbacks).fit(module, datamodule=datamodule)
    sync(settings.device)
    total = time.perf_counter() - started
    return {"total_s": total, "epoch_s": clock.seconds, "later_epoch_s": statistics.median(clock.seconds[1:]),
            "later_epoch_cpu_s": statistics.median(clock.cpu_seconds[1:]),
            "val_acc": clock.acc[-1], "head": module.head.state_dict()}


def section_cache(settings: Settings) -> dict:
    with tempfile.TemporaryDirectory() as cache_dir:
        off = run_frozen(settings, False, None)
        on = run_frozen(settings, True, cache_dir)  # computes and stores the features
        again = run_frozen(settings, True, cache_dir)  # the next job of a sweep: loads them
    same = all(torch.allclose(off["head"][k], on["head"][k], atol=1e-4, rtol=1e-3) for k in off["head"])
    result = {"uncached": off, "cached": on, "cached_from_disk": again, "heads_allclose": same,
              "per_epoch_speedup": off["later_epoch_s"] / on["later_epoch_s"],
              "per_epoch_speedup_cpu": off["later_epoch_cpu_s"] / on["later_epoch_cpu_s"],
              "run_speedup": off["total_s"] / on["total_s"], "run_speedup_from_disk": off["total_s"] / again["total_s"]}
    for r in (off, on, again):
        r.pop("head")
    print(f"  per later epoch: {off['later_epoch_s']:.3f} s -> {on['later_epoch_s']:.4f} s ({result['per_epoch_speedup']:.0f}x; "
          f"CPU time {result['per_epoch_speedup_cpu']:.0f}x); "
          f"{settings.epochs}-epoch run: {off['total_s']:.1f} s -> {on['total_s']:.1f} s ({result['run_speedup']:.1f}x), "
          f"from disk {again['total_s']:.1f} s ({result['run_speedup_from_disk']:.1f}x); val acc {off['val_acc']:.4f} vs "
          f"{on['val_acc']:.4f}; heads allclose: {same}", flush=True)
    return result
