"""What the benchmark sections share: their settings, the model and data, a bare Trainer, clocks."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tlexp.backbone import create_backbone
from tlexp.data import FashionMNIST, Synthetic

MODEL = "tf_efficientnet_lite0"
"""The benchmarked model, with the packaged ImageNet weights (any other model: random weights)."""


@dataclass
class Settings:
    """Every knob of a benchmark run; the command line's flags (``cli``) set the same names."""

    device: str = "cpu"
    data: str = "fashion_mnist"
    data_root: str | None = None
    image_size: int = 64
    batch_size: int = 64
    threads: int = 1
    steps: int = 10
    warmup: int = 2
    repeats: int = 3
    epochs: int = 10
    cache_train_size: int = 640
    gradual_train_size: int = 192
    prefix_epochs: int = 4
    """Epochs of each run of the prefix-cache section (section 6; its data: ``cache_train_size``)."""
    prefix_depths: str = "all"
    """Frozen depths of ``partial`` in section 6, comma-separated (``all``: 0 to every backbone stage)."""
    val_size: int = 64
    probe_steps: int = 6
    sweep_logger: str = "wandb"
    sections: str = "throughput,cache,gradual,sweep,pipeline,prefix,memory"
    json: str | None = None
    model: str = MODEL
    tiny_model: str = "test_efficientnet"
    """The model so small that the fixed per-step cost dominates (section 1)."""
    tiny_steps: int = 60
    tiny_warmup: int = 10
    pipeline_images: int = 2000
    pipeline_source_size: int = 96
    memory_sizes: str = "2000,20000,all"
    """Unlabeled-set sizes of the whole-data-set passes' memory (section 7); ``all``: the whole pool."""
    large_folder: int = 0
    """Images of the generated folder whose peak memory section 5 measures (0: not measured; 100000 in docs)."""

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device.startswith("cuda") else "cpu"


def configure(settings: Settings) -> None:
    """Per process: torch threads, W&B offline unless set, quiet Lightning logs."""
    torch.set_num_threads(settings.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "tlexp"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_backbone(name: str = MODEL, seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone(name, weights="packaged" if name == MODEL else None)


def make_data(settings: Settings, backbone, train_size: int, val_size: int, seed: int = 0):
    """A tlexp datamodule with about ``train_size`` training images; test = val (never used here)."""
    common = dict(image_size=settings.image_size, batch_size=settings.batch_size, seed=seed, val_size=val_size)
    if settings.data == "synthetic":
        per_class = (train_size + val_size) // 10 + 2
        datamodule = Synthetic(num_classes=10, train_per_class=per_class, test_per_class=2, source_size=28, **common)
    else:
        datamodule = FashionMNIST(root=settings.data_root, download=False, fraction=train_size / (60000 - val_size), **common)
    datamodule.prepare_for(backbone)
    datamodule.test_set = datamodule.val_set
    return datamodule


def trainer(settings: Settings, epochs: int = 1, batches: int | float = 1.0, val_batches: int | float = 0, callbacks=()):
    return L.Trainer(max_epochs=epochs, limit_train_batches=batches, limit_val_batches=val_batches, accelerator=settings.accelerator,
                     devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, use_distributed_sampler=False, precision="32-true", callbacks=list(callbacks))


def now() -> tuple[float, float]:
    """(wall clock, CPU time of this process). On a CPU shared with other jobs the CPU time is
    the contention-robust measure of work done (with --threads 1 it cannot exceed wall time)."""
    return time.perf_counter(), time.process_time()


class StepClock(Callback):
    """(wall, CPU) time after every optimizer step (after a device sync)."""

    def __init__(self, device: str):
        self.device, self.times = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        self.times.append(now())


class EpochClock(Callback):
    """Wall time of every epoch (training and validation) and the validation accuracy after it."""

    def __init__(self, device: str):
        self.device, self.seconds, self.cpu_seconds, self.acc, self._start = device, [], [], [], None

    def on_train_epoch_start(self, trainer, pl_module):
        sync(self.device)
        self._start = now()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(self.device)
        wall, cpu = now()
        self.seconds.append(wall - self._start[0])
        self.cpu_seconds.append(cpu - self._start[1])
        acc = trainer.callback_metrics.get("val/acc")
        self.acc.append(float(acc) if acc is not None else None)


def throughput(times: list[tuple[float, float]], warmup: int, batch_size: int) -> tuple[float, float]:
    """Images/s (wall, CPU time) over the steps after ``warmup`` (their data loading included)."""
    steps = len(times) - warmup
    return tuple(steps * batch_size / (times[-1][i] - times[warmup - 1][i]) for i in (0, 1))
