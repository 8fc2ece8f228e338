"""Section 3b: ``partial`` at every frozen depth: step time, saved activations and peak memory.

Memory is measured in a fresh process per depth (``spawn``), so one depth's peak cannot hide
another's: max RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tlexp.benchmarks.common import Settings, StepClock, configure, make_backbone, make_data, trainer
from tlexp.freeze_plan import freeze
from tlexp.stages import split_stages
from tlexp.strategies import Partial


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    """The peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RSSPeak(Callback):
    """Peak resident memory sampled where activations, gradients and optimizer state peak."""

    def __init__(self):
        self.peak = 0.0

    def _sample(self, *args, **kwargs):
        self.peak = max(self.peak, rss_mb())

    on_before_backward = on_after_backward = on_train_batch_end = _sample


def probe_depth(settings: Settings, depth: int) -> dict:
    """Peak memory and step time of ``partial`` at one frozen depth (in this process: run it in a fresh one)."""
    backbone = make_backbone(settings.model)
    datamodule = make_data(settings, backbone, settings.probe_steps * settings.batch_size, 64)
    module = Partial(backbone, datamodule.num_classes, frozen_depth=depth)  # the uncached step (no cache callback; cached: section 6)
    before, maxrss_before = rss_mb(), maxrss_mb()
    cuda = settings.device.startswith("cuda")
    if cuda:
        module.to(settings.device)
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    peak = RSSPeak()
    clock = StepClock(settings.device)
    trainer(settings, batches=settings.probe_steps, callbacks=[clock, peak]).fit(module, datamodule=datamodule)
    times = clock.times
    result = {"depth": depth, "step_s": statistics.median(b[0] - a[0] for a, b in zip(times[1:], times[2:])),
              "step_cpu_s": statistics.median(b[1] - a[1] for a, b in zip(times[1:], times[2:])),
              "rss_before_mb": before, "rss_peak_mb": peak.peak, "maxrss_before_mb": maxrss_before,
              "maxrss_mb": maxrss_mb(), "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad)}
    if cuda:
        result.update(cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20, cuda_base_mb=base_cuda)
    return result


def _probe_in_fresh_process(settings: Settings, depth: int) -> dict:
    configure(settings)
    return probe_depth(settings, depth)


def saved_activation_mb(settings: Settings, depth: int, images: torch.Tensor) -> float:
    """MB of tensors autograd keeps for backward in one training forward of ``partial``."""
    module = Partial(make_backbone(settings.model), 10, frozen_depth=depth).to(settings.device).train()
    freeze(module, epoch=0)
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(images)
    return total / 2**20


def section_depths(settings: Settings, depths: list[int] | None = None) -> list[dict]:
    """Every frozen depth from 0 to the number of backbone stages (or only ``depths``)."""
    backbone = make_backbone(settings.model)
    if depths is None:
        depths = range(len(split_stages(backbone, torch.nn.Identity())))  # 0 .. number of backbone stages
    datamodule = make_data(settings, backbone, settings.batch_size, 64)
    images = datamodule.normalize(datamodule.train_set.images[: settings.batch_size].to(settings.device))
    rows = []
    for depth in depths:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
            try:
                row = fresh.submit(_probe_in_fresh_process, settings, depth).result()
            except Exception as error:
                raise RuntimeError(f"depth probe {depth} failed: {error}") from error
        row["saved_activations_mb"] = saved_activation_mb(settings, depth, images)
        rows.append(row)
        print(f"  depth {depth}: step {row['step_s']:.3f} s (CPU {row['step_cpu_s']:.3f} s), "
              f"saved activations {row['saved_activations_mb']:.1f} MB, "
              f"RSS peak in training +{row['rss_peak_mb'] - row['rss_before_mb']:.0f} MB over {row['rss_before_mb']:.0f} MB; "
              f"max RSS {row['maxrss_mb']:.0f} MB"
              + (f", CUDA peak {row['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in row else ""), flush=True)
    return rows
