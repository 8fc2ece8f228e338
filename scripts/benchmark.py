"""tlexp against its physical floor and its peers, in one run, side by side.

    .venv/bin/python scripts/benchmark.py                      # CPU, Fashion-MNIST, < 10 min
    .venv/bin/python scripts/benchmark.py --device cuda --threads 8 --batch-size 128
    .venv/bin/python scripts/benchmark.py --data synthetic --json results.json

Same model (tf_efficientnet_lite0, packaged ImageNet weights), data, image size, batch size
and threads everywhere. Sections:

1. throughput (images/s) of tlexp ``full`` and ``partial`` (Lightning Trainer in-process,
   progress bar, loggers and checkpointing off) against a hand-written PyTorch loop over
   the same preloaded tensors; plus the fixed per-step overhead measured on a tiny model;
2. ``frozen`` with the feature cache against ``frozen`` without it: per epoch after the
   first and a whole run of ``--epochs`` epochs; plus a second job that loads the cache;
3. tlexp ``gradual`` against Lightning's ``BackboneFinetuning`` on the same schedule (time
   per epoch, final accuracy), and ``partial`` at every frozen depth: step time, saved
   activations and peak memory (max RSS of a fresh subprocess per depth; on CUDA
   ``torch.cuda.max_memory_allocated``);
4. per-job overhead of a sweep: ``train.py -m`` as a subprocess, time from process start
   and from each job's start to its first training step.

Results are printed as Markdown (copy them into docs/BENCHMARKS.md) and optionally saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tf_efficientnet_lite0"


# --- hooks used inside the train.py subprocesses of section 4 ------------------------------------
def _stamp(event: str, text: str = "") -> None:
    print(f"TLEXP_BENCH {event} {time.time():.6f} {text}", flush=True)


class JobStamp(HydraCallback):
    """Hydra callback: prints a timestamp (and the job's overrides) when each job of a multirun starts."""

    def on_job_start(self, config, **kwargs):
        from hydra.core.hydra_config import HydraConfig

        _stamp("job_start", HydraConfig.get().job.override_dirname)


class FirstStepStamp(Callback):
    """Lightning callback: timestamps at setup, train start and the first training batch."""

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            _stamp("setup")

    def on_train_start(self, trainer, pl_module):
        _stamp("train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            _stamp("first_step")


# --- shared pieces ----------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_backbone(name: str = MODEL, seed: int = 0):
    from tlexp.backbone import create_backbone

    torch.manual_seed(seed)
    return create_backbone(name, weights="packaged" if name == MODEL else None)


def make_data(args, backbone, train_size: int, val_size: int, seed: int = 0):
    """A tlexp datamodule with about ``train_size`` training images; test = val (never used here)."""
    import timm

    from tlexp.data import FashionMNIST, Synthetic

    common = dict(image_size=args.image_size, batch_size=args.batch_size, seed=seed, val_size=val_size)
    if args.data == "synthetic":
        per_class = (train_size + val_size) // 10 + 2
        datamodule = Synthetic(num_classes=10, train_per_class=per_class, test_per_class=2, source_size=28, **common)
    else:
        datamodule = FashionMNIST(root=args.data_root, download=False, fraction=train_size / (60000 - val_size), **common)
    datamodule.configure_preprocessing(timm.data.resolve_model_data_config(backbone))
    datamodule.setup("fit")
    datamodule.test_set = datamodule.val_set
    return datamodule


def trainer(args, epochs: int = 1, batches: int | float = 1.0, val_batches: int | float = 0, callbacks=()):
    return L.Trainer(max_epochs=epochs, limit_train_batches=batches, limit_val_batches=val_batches, accelerator=args.accelerator,
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


# --- 1. throughput against a plain PyTorch loop --------------------------------------------------------
def plain_loop(args, module, datamodule, steps: int, dataloader: bool = False) -> list[float]:
    """The physical floor: the same network, optimizer and loss over the preloaded uint8 tensors."""
    device = args.device
    model = torch.nn.Sequential(module.backbone, module.head).to(device).train()
    frozen = [s for s in module.stages if module.unfreeze_epochs()[s.name] != 0]
    for stage in module.stages:
        for p in stage.params:
            p.requires_grad_(stage not in frozen)
    for stage in frozen:
        for bn in stage.batchnorms:
            bn.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    images, labels = datamodule.train_set.images, datamodule.train_set.labels
    if dataloader:  # the same per-item Dataset + collate path tlexp's loader takes
        batches = iter(torch.utils.data.DataLoader(datamodule.train_set, batch_size=args.batch_size, shuffle=True))
    else:
        order = torch.randperm(len(labels))
    times = []
    for step in range(steps):
        if dataloader:
            x, y = next(batches)
        else:
            index = order[(step * args.batch_size) % len(labels):][: args.batch_size]
            x, y = images[index], labels[index]
        x, y = datamodule.normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        times.append(now())
    return times


def tlexp_steps(args, module, datamodule, steps: int) -> list[float]:
    clock = StepClock(args.device)
    trainer(args, batches=steps, callbacks=[clock]).fit(module, datamodule=datamodule)
    return clock.times


def section_throughput(args) -> dict:
    from tlexp.strategies import Full, Partial

    steps, warmup = args.steps + args.warmup, args.warmup
    need = steps * args.batch_size
    backbone = make_backbone()
    datamodule = make_data(args, backbone, need, 64)
    results = {}
    for name, cls, kwargs in (("full", Full, {}), ("partial", Partial, {"frozen_depth": 4})):
        best = {"plain": [0.0, 0.0], "tlexp": [0.0, 0.0]}  # [wall, cpu] images/s
        for repeat in range(args.repeats):  # interleaved, order alternated, best of: other processes add noise
            for runner in ("plain", "tlexp")[:: 1 if repeat % 2 == 0 else -1]:
                module = cls(make_backbone(), datamodule.num_classes, **kwargs)
                times = (plain_loop(args, module, datamodule, steps) if runner == "plain"
                         else tlexp_steps(args, module, datamodule, steps))
                best[runner] = [max(a, b) for a, b in zip(best[runner], throughput(times, warmup, args.batch_size))]
        results[name] = {"plain": best["plain"][0], "tlexp": best["tlexp"][0], "ratio": best["tlexp"][0] / best["plain"][0],
                         "plain_cpu": best["plain"][1], "tlexp_cpu": best["tlexp"][1], "ratio_cpu": best["tlexp"][1] / best["plain"][1]}
        r = results[name]
        print(f"  {name}: wall: plain {r['plain']:.1f} img/s, tlexp {r['tlexp']:.1f} img/s, ratio {r['ratio']:.3f}; "
              f"CPU time: plain {r['plain_cpu']:.1f}, tlexp {r['tlexp_cpu']:.1f}, ratio {r['ratio_cpu']:.3f}", flush=True)
    # the fixed cost per step, on a model so small that it dominates
    tiny_steps, tiny_warmup = 60, 10
    tiny_data = make_data(args, make_backbone("test_efficientnet"), tiny_steps * args.batch_size, 64)
    per_step = {}
    for _ in range(2):
        for runner in ("plain", "plain+dataloader", "tlexp"):
            module = Full(make_backbone("test_efficientnet"), tiny_data.num_classes)
            times = (tlexp_steps(args, module, tiny_data, tiny_steps) if runner == "tlexp"
                     else plain_loop(args, module, tiny_data, tiny_steps, dataloader=runner != "plain"))
            ms = [(times[-1][i] - times[tiny_warmup - 1][i]) / (tiny_steps - tiny_warmup) * 1000 for i in (0, 1)]
            per_step[runner] = [min(a, b) for a, b in zip(per_step.get(runner, [float("inf")] * 2), ms)]
    results["tiny_ms_per_step"] = per_step
    print("  tiny model, ms/step [wall, CPU]: " + ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in per_step.items()), flush=True)
    return results


# --- 2. feature cache ---------------------------------------------------------------------------------------
def run_frozen(args, cache: bool, cache_dir: str | None) -> dict:
    from tlexp.callbacks import EpochSeeder
    from tlexp.strategies import Frozen

    backbone = make_backbone()
    datamodule = make_data(args, backbone, args.cache_train_size, args.val_size)
    module = Frozen(backbone, datamodule.num_classes, cache_features=cache, cache_dir=cache_dir, lr_head=1e-2)
    clock = EpochClock(args.device)
    started = time.perf_counter()
    trainer(args, epochs=args.epochs, val_batches=1.0, callbacks=[clock, EpochSeeder(0)]).fit(module, datamodule=datamodule)
    sync(args.device)
    total = time.perf_counter() - started
    return {"total_s": total, "epoch_s": clock.seconds, "later_epoch_s": statistics.median(clock.seconds[1:]),
            "later_epoch_cpu_s": statistics.median(clock.cpu_seconds[1:]),
            "val_acc": clock.acc[-1], "head": module.head.state_dict()}


def section_cache(args) -> dict:
    with tempfile.TemporaryDirectory() as cache_dir:
        off = run_frozen(args, False, None)
        on = run_frozen(args, True, cache_dir)  # computes and stores the features
        again = run_frozen(args, True, cache_dir)  # the next job of a sweep: loads them
    same = all(torch.allclose(off["head"][k], on["head"][k], atol=1e-4, rtol=1e-3) for k in off["head"])
    result = {"uncached": off, "cached": on, "cached_from_disk": again, "heads_allclose": same,
              "per_epoch_speedup": off["later_epoch_s"] / on["later_epoch_s"],
              "per_epoch_speedup_cpu": off["later_epoch_cpu_s"] / on["later_epoch_cpu_s"],
              "run_speedup": off["total_s"] / on["total_s"], "run_speedup_from_disk": off["total_s"] / again["total_s"]}
    for r in (off, on, again):
        r.pop("head")
    print(f"  per later epoch: {off['later_epoch_s']:.3f} s -> {on['later_epoch_s']:.4f} s ({result['per_epoch_speedup']:.0f}x; "
          f"CPU time {result['per_epoch_speedup_cpu']:.0f}x); "
          f"{args.epochs}-epoch run: {off['total_s']:.1f} s -> {on['total_s']:.1f} s ({result['run_speedup']:.1f}x), "
          f"from disk {again['total_s']:.1f} s ({result['run_speedup_from_disk']:.1f}x); val acc {off['val_acc']:.4f} vs "
          f"{on['val_acc']:.4f}; heads allclose: {same}", flush=True)
    return result


# --- 3. gradual against BackboneFinetuning, partial per depth ---------------------------------------------------
class PlainModule(L.LightningModule):
    """The minimal module Lightning's BackboneFinetuning expects: ``backbone`` + head, one optimizer."""

    def __init__(self, backbone, num_classes: int, lr: float = 1e-3):
        super().__init__()
        self.backbone, self.head, self.lr = backbone, torch.nn.Linear(backbone.num_features, num_classes), lr
        self.criterion = torch.nn.CrossEntropyLoss()

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.01)


def section_gradual(args) -> dict:
    from lightning.pytorch.callbacks import BackboneFinetuning

    from tlexp.stages import split_stages
    from tlexp.strategies import Gradual

    epochs, unfreeze_at = 3, 1
    results = {}
    for name in ("tlexp_gradual", "lightning_backbone_finetuning"):
        backbone = make_backbone()
        datamodule = make_data(args, backbone, args.gradual_train_size, args.val_size)
        clock = EpochClock(args.device)
        callbacks = [clock]
        if name == "tlexp_gradual":
            stages = split_stages(backbone, torch.nn.Identity())[:-1]
            module = Gradual(backbone, datamodule.num_classes, milestones={s.name: unfreeze_at for s in stages},
                             lr_head=1e-3, lr_backbone=1e-4, lr_decay=1.0, schedule="constant")
        else:
            module = PlainModule(backbone, datamodule.num_classes, lr=1e-3)
            callbacks.append(BackboneFinetuning(unfreeze_backbone_at_epoch=unfreeze_at, backbone_initial_lr=1e-4,
                                                lambda_func=lambda _: 1.0, should_align=False, train_bn=False))
        torch.manual_seed(0)
        trainer(args, epochs=epochs, val_batches=1.0, callbacks=callbacks).fit(module, datamodule=datamodule)
        results[name] = {"epoch_s": clock.seconds, "val_acc": clock.acc}
        print(f"  {name}: epoch s {[round(s, 2) for s in clock.seconds]}, val acc {[round(a, 4) for a in clock.acc]}", flush=True)
    return results


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RSSPeak(Callback):
    """Peak resident memory sampled where activations, gradients and optimizer state peak."""

    def __init__(self):
        self.peak = 0.0

    def _sample(self, *args, **kwargs):
        self.peak = max(self.peak, rss_mb())

    on_before_backward = on_after_backward = on_train_batch_end = _sample


def probe_depth(args) -> dict:
    """In a fresh process: peak memory and step time of ``partial`` at one frozen depth."""
    from tlexp.strategies import Partial

    backbone = make_backbone()
    datamodule = make_data(args, backbone, args.probe_steps * args.batch_size, 64)
    module = Partial(backbone, datamodule.num_classes, frozen_depth=args.probe_depth)
    before, maxrss_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        module.to(args.device)
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    peak = RSSPeak()
    clock = StepClock(args.device)
    trainer(args, batches=args.probe_steps, callbacks=[clock, peak]).fit(module, datamodule=datamodule)
    times = clock.times
    result = {"depth": args.probe_depth, "step_s": statistics.median(b[0] - a[0] for a, b in zip(times[1:], times[2:])),
              "step_cpu_s": statistics.median(b[1] - a[1] for a, b in zip(times[1:], times[2:])),
              "rss_before_mb": before, "rss_peak_mb": peak.peak, "maxrss_before_mb": maxrss_before,
              "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad)}
    if args.device.startswith("cuda"):
        result.update(cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20, cuda_base_mb=base_cuda)
    return result


def saved_activation_mb(args, depth: int, images: torch.Tensor) -> float:
    """MB of tensors autograd keeps for backward in one training forward of ``partial``."""
    from types import SimpleNamespace

    from tlexp.callbacks import FineTuning
    from tlexp.strategies import Partial

    module = Partial(make_backbone(), 10, frozen_depth=depth).to(args.device).train()
    callback = FineTuning("frozen")
    callback.apply(SimpleNamespace(optimizers=[], lr_scheduler_configs=[]), module, epoch=0)
    callback.apply_bn_policy(module)
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(images)
    return total / 2**20


def section_depths(args) -> list[dict]:
    from tlexp.stages import split_stages

    backbone = make_backbone()
    depths = range(len(split_stages(backbone, torch.nn.Identity())))  # 0 .. number of backbone stages
    datamodule = make_data(args, backbone, args.batch_size, 64)
    images = datamodule.normalize(datamodule.train_set.images[: args.batch_size].to(args.device))
    rows = []
    for depth in depths:
        command = [sys.executable, __file__, "--probe-depth", str(depth), *args.passthrough]
        output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if output.returncode or not lines:
            raise RuntimeError(f"depth probe {depth} failed:\n{output.stderr[-3000:]}")
        row = json.loads(lines[-1])
        row["saved_activations_mb"] = saved_activation_mb(args, depth, images)
        rows.append(row)
        print(f"  depth {depth}: step {row['step_s']:.3f} s (CPU {row['step_cpu_s']:.3f} s), saved activations {row['saved_activations_mb']:.1f} MB, "
              f"RSS peak in training +{row['rss_peak_mb'] - row['rss_before_mb']:.0f} MB over {row['rss_before_mb']:.0f} MB; "
              f"max RSS {row['maxrss_mb']:.0f} MB"
              + (f", CUDA peak {row['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in row else ""), flush=True)
    return rows


# --- 4. per-job overhead in a sweep ----------------------------------------------------------------------------
def section_sweep(args) -> dict:
    """``train.py -m`` with three jobs: frozen (cache cold), frozen (cache warm), full."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, str(ROOT / "train.py"), "-m", "strategy=frozen,full", "strategy.lr_head=0.01,0.02",
            f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
            *(["data=synthetic"] if args.data == "synthetic" else
              ["data=fashion_mnist", "data.fraction=0.01", "data.val_size=64", "data.download=false"]
              + ([f"data.root={args.data_root}"] if args.data_root else [])),
            "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1", f"trainer.accelerator={args.accelerator}", "trainer.enable_progress_bar=false",
            "test=false", f"logger={args.sweep_logger}", "callbacks=none",
            "+callbacks.first_step._target_=benchmark.FirstStepStamp", "+hydra.callbacks.stamp._target_=benchmark.JobStamp",
            f"hydra.sweep.dir={tmp}/sweep", "hydra.sweep.subdir=${hydra.job.num}", f"paths.data_dir={tmp}/data", f"paths.log_dir={tmp}/logs",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "OMP_NUM_THREADS": str(args.threads)}
        started = time.time()
        output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
        ended = time.time()
    if output.returncode:
        raise RuntimeError(f"sweep failed:\n{output.stdout[-2000:]}\n{output.stderr[-3000:]}")
    jobs, current = [], None
    for line in output.stdout.splitlines():
        if line.startswith("TLEXP_BENCH"):
            _, event, stamp, *text = line.split()
            if event == "job_start":
                current = {"job_start": float(stamp), "name": " ".join(text)}
                jobs.append(current)
            elif current is not None:
                current.setdefault(event, float(stamp))
    rows = []
    for job in jobs:
        swept = dict(part.split("=", 1) for part in job["name"].split(",") if "=" in part)
        job["name"] = " ".join(f"{k}={swept[k]}" for k in ("strategy", "strategy.lr_head") if k in swept)
        name = job["name"] + (" (feature cache cold)" if job is jobs[0] else " (cache warm)" if "frozen" in job["name"] else "")
        row = {"job": name, "to_first_step_s": job["first_step"] - job["job_start"],
               "build_s": job["setup"] - job["job_start"], "setup_to_train_start_s": job["train_start"] - job["setup"],
               "train_start_to_first_step_s": job["first_step"] - job["train_start"]}
        rows.append(row)
        print(f"  {name}: job start -> first step {row['to_first_step_s']:.2f} s (build+loggers+trainer {row['build_s']:.2f}, "
              f"setup->train start {row['setup_to_train_start_s']:.2f}, ->first step {row['train_start_to_first_step_s']:.2f})", flush=True)
    result = {"process_start_to_first_job_s": jobs[0]["job_start"] - started,
              "process_start_to_first_step_s": jobs[0]["first_step"] - started,
              "total_s": ended - started, "jobs": rows, "logger": args.sweep_logger}
    print(f"  process start -> first job {result['process_start_to_first_job_s']:.2f} s, -> first step "
          f"{result['process_start_to_first_step_s']:.2f} s; whole sweep {result['total_s']:.1f} s", flush=True)
    return result


# --- report -----------------------------------------------------------------------------------------------------------------
def machine(args) -> dict:
    import lightning
    import timm

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "lightning": lightning.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg(), "device": args.device}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(results: dict, args) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, device {m['device']}"
             + (f" ({m['gpu']})" if "gpu" in m else "") + f"; torch {m['torch']}, lightning {m['lightning']}, "
             f"timm {m['timm']}, Python {m['python']}; load average at start {m['load_average'][0]:.1f}.",
             f"Data: {args.data}, {args.image_size} px, batch {args.batch_size}. Total benchmark time {results['seconds']:.0f} s.", ""]
    if "throughput" in results:
        t = results["throughput"]
        lines += ["### 1. Training throughput (images/s)", "",
                  "| strategy | plain loop, wall | tlexp, wall | ratio (wall) | plain loop, CPU time | tlexp, CPU time | ratio (CPU time) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {t[k]['plain']:.1f} | {t[k]['tlexp']:.1f} | {t[k]['ratio']:.3f} | {t[k]['plain_cpu']:.1f} | "
                  f"{t[k]['tlexp_cpu']:.1f} | {t[k]['ratio_cpu']:.3f} |" for k in ("full", "partial")]
        tiny = t["tiny_ms_per_step"]
        lines += ["", "Cost per step on a tiny model (test_efficientnet), ms wall / CPU: plain "
                  f"{tiny['plain'][0]:.1f} / {tiny['plain'][1]:.1f}, plain + tlexp's DataLoader {tiny['plain+dataloader'][0]:.1f} / "
                  f"{tiny['plain+dataloader'][1]:.1f}, tlexp {tiny['tlexp'][0]:.1f} / {tiny['tlexp'][1]:.1f}.", ""]
    if "cache" in results:
        c = results["cache"]
        lines += ["### 2. Feature cache (frozen)", "", "| | uncached | cached (computed) | cached (from disk) |", "|---|---:|---:|---:|",
                  f"| epoch 1 (s) | {c['uncached']['epoch_s'][0]:.3f} | {c['cached']['epoch_s'][0]:.3f} | {c['cached_from_disk']['epoch_s'][0]:.3f} |",
                  f"| later epoch, median (s) | {c['uncached']['later_epoch_s']:.3f} | {c['cached']['later_epoch_s']:.4f} | {c['cached_from_disk']['later_epoch_s']:.4f} |",
                  f"| later epoch, median CPU time (s) | {c['uncached']['later_epoch_cpu_s']:.3f} | {c['cached']['later_epoch_cpu_s']:.4f} | {c['cached_from_disk']['later_epoch_cpu_s']:.4f} |",
                  f"| {args.epochs}-epoch run (s) | {c['uncached']['total_s']:.2f} | {c['cached']['total_s']:.2f} | {c['cached_from_disk']['total_s']:.2f} |",
                  f"| final val acc | {c['uncached']['val_acc']:.4f} | {c['cached']['val_acc']:.4f} | {c['cached_from_disk']['val_acc']:.4f} |",
                  "", f"Per later epoch {c['per_epoch_speedup']:.0f}x faster (CPU time {c['per_epoch_speedup_cpu']:.0f}x); whole run {c['run_speedup']:.1f}x "
                  f"({c['run_speedup_from_disk']:.1f}x when the cache is on disk); heads allclose: {c['heads_allclose']}.", ""]
    if "gradual" in results:
        g = results["gradual"]
        lines += ["### 3. Gradual unfreezing against Lightning's BackboneFinetuning", "",
                  "| | epoch times (s) | val acc per epoch |", "|---|---|---|"]
        lines += [f"| {k} | {', '.join(f'{s:.2f}' for s in v['epoch_s'])} | {', '.join(f'{a:.4f}' for a in v['val_acc'])} |" for k, v in g.items()]
        lines += ["", "| frozen depth | trainable params | step (s) | step CPU (s) | saved activations (MB) | RSS growth in training (MB) | max RSS of the process (MB) |"
                  + (" CUDA peak (MB) |" if "cuda_peak_mb" in results["depths"][0] else ""),
                  "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if "cuda_peak_mb" in results["depths"][0] else "")]
        lines += [f"| {r['depth']} | {r['trainable_params']:,} | {r['step_s']:.3f} | {r['step_cpu_s']:.3f} | {r['saved_activations_mb']:.1f} | "
                  f"{r['rss_peak_mb'] - r['rss_before_mb']:.0f} | {r['maxrss_mb']:.0f} |" + (f" {r['cuda_peak_mb']:.0f} |" if "cuda_peak_mb" in r else "")
                  for r in results["depths"]]
        lines.append("")
    if "sweep" in results:
        s = results["sweep"]
        lines += [f"### 4. Per-job overhead in a sweep (`train.py -m`, logger={s['logger']})", "",
                  "| job | job start -> first step (s) | build, loggers, trainer (s) | setup -> train start (s) | train start -> first step (s) |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['job']} | {r['to_first_step_s']:.2f} | {r['build_s']:.2f} | {r['setup_to_train_start_s']:.2f} | "
                  f"{r['train_start_to_first_step_s']:.2f} |" for r in s["jobs"]]
        lines += ["", f"Process start -> first job start {s['process_start_to_first_job_s']:.2f} s (interpreter, imports, Hydra); "
                  f"-> first training step {s['process_start_to_first_step_s']:.2f} s; the whole 4-job sweep {s['total_s']:.1f} s.", ""]
    return "\n".join(lines)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "synthetic"])
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared CPU)")
    parser.add_argument("--steps", type=int, default=10, help="measured training steps per throughput run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the cache comparison")
    parser.add_argument("--cache-train-size", type=int, default=640)
    parser.add_argument("--gradual-train-size", type=int, default=192)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--probe-steps", type=int, default=6)
    parser.add_argument("--sweep-logger", default="wandb", help="logger group of the sweep jobs (the default config's: wandb, offline)")
    parser.add_argument("--sections", default="throughput,cache,gradual,sweep")
    parser.add_argument("--json", default=None, help="also write all numbers to this file")
    parser.add_argument("--probe-depth", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    args.passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
    for flag in ("--json", "--sections"):  # not wanted by the depth probes
        if flag in args.passthrough:
            i = args.passthrough.index(flag)
            del args.passthrough[i : i + 2]
    return args


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "tlexp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.probe_depth is not None:
        print(json.dumps(probe_depth(args)), flush=True)
        return
    started = time.perf_counter()
    results = {"machine": machine(args), "args": {k: v for k, v in vars(args).items() if k != "passthrough"}}
    sections = args.sections.split(",")
    print(f"machine: {results['machine']}", flush=True)
    if "throughput" in sections:
        print("1. throughput", flush=True)
        results["throughput"] = section_throughput(args)
    if "cache" in sections:
        print("2. feature cache", flush=True)
        results["cache"] = section_cache(args)
    if "gradual" in sections:
        print("3. gradual vs BackboneFinetuning; partial per frozen depth", flush=True)
        results["gradual"] = section_gradual(args)
        results["depths"] = section_depths(args)
    if "sweep" in sections:
        print("4. per-job overhead in a sweep", flush=True)
        results["sweep"] = section_sweep(args)
    results["seconds"] = time.perf_counter() - started
    print("\n" + markdown(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
