"""Section 6: the feature cache below the pooled features, the frozen prefix of ``partial`` (every frozen depth) and
``gradual`` (the stages its schedule never reaches), cached against uncached, side by side: epoch time after the cache
is built, the whole run, the cache's build time and size.

Both runs of a pair use the same data, seed and settings, one after the other; the cache lives in memory
(``cache_dir=None``), so every cached run pays for computing it. ``frozen_depth_sweep`` is the sum of the
``partial`` runs over every depth, as the experiment sweeps them (its per-job start-up, section 4, comes on top of both).
"""

from __future__ import annotations

import statistics
import time

import torch

from tlexp.benchmarks.common import EpochClock, Settings, make_backbone, make_data, sync, trainer
from tlexp.feature_cache import FeatureCache
from tlexp.strategies import Gradual, Partial

def timed_fit(settings: Settings, strategy, cache: bool, **kwargs) -> dict:
    backbone = make_backbone(settings.model)
    datamodule = make_data(settings, backbone, settings.cache_train_size, settings.val_size)
    module = strategy(backbone, datamodule.num_classes, **kwargs)
    clock = EpochClock(settings.device)
    cached = FeatureCache(cache, cache_dir=None)  # as train.py attaches it from strategy.cache_*
    fit = trainer(settings, epochs=settings.prefix_epochs, val_batches=1.0, callbacks=[clock, cached])
    torch.manual_seed(0)
    sync(settings.device)
    started = time.perf_counter()
    fit.fit(module, datamodule=datamodule)
    sync(settings.device)
    cache_report = cached.report if cached.enabled else {}
    return {"total_s": time.perf_counter() - started, "epoch_s": clock.seconds, "epoch_cpu_s": clock.cpu_seconds,
            "val_acc": clock.acc[-1], "build_s": cache_report.get("seconds", 0.0),
            "cache_mb": cache_report.get("bytes", 0) / 2**20, "enabled": bool(cache_report)}


def pair(settings: Settings, label: str, strategy, **kwargs) -> dict:
    runs = {name: timed_fit(settings, strategy, cache, **kwargs) for name, cache in (("uncached", False), ("cached", True))}
    later = {name: statistics.median(run["epoch_s"][1:] or run["epoch_s"]) for name, run in runs.items()}
    row = {"label": label, **runs, "epoch_speedup": later["uncached"] / later["cached"],
           "run_speedup": runs["uncached"]["total_s"] / runs["cached"]["total_s"]}
    print(f"  {label}: epoch {later['uncached']:.2f} s -> {later['cached']:.2f} s ({row['epoch_speedup']:.1f}x), run "
          f"{runs['uncached']['total_s']:.1f} s -> {runs['cached']['total_s']:.1f} s ({row['run_speedup']:.2f}x), cache built in "
          f"{runs['cached']['build_s']:.1f} s, {runs['cached']['cache_mb']:.0f} MB; val acc {runs['uncached']['val_acc']:.4f} / "
          f"{runs['cached']['val_acc']:.4f}", flush=True)
    return row


def section_prefix(settings: Settings, depths: list[int] | None = None) -> dict:
    stages = len(Partial(make_backbone(settings.model), 10).backbone_stages)
    rows = [pair(settings, f"partial, frozen depth {d}", Partial, frozen_depth=d)
            for d in (depths if depths is not None else range(stages + 1))]
    rows.append(pair(settings, f"gradual (unfreeze_every=1, {settings.prefix_epochs} epochs)", Gradual, unfreeze_every=1))
    swept = rows[:-1]
    sweep = {name: sum(r[name]["total_s"] for r in swept) for name in ("uncached", "cached")}
    return {"rows": rows, "frozen_depth_sweep": {**sweep, "speedup": sweep["uncached"] / sweep["cached"] if sweep["cached"] else None,
                                                 "depths": [int(r["label"].rsplit(" ", 1)[1]) for r in swept]}}
