"""Section 4: per-job overhead of a sweep: ``tlexp.train --multirun`` as a subprocess, timestamped.

The job process loads ``JobStamp`` (a Hydra callback) and ``FirstStepStamp`` (a Lightning callback)
from this module by their ``_target_``: each prints a ``TLEXP_BENCH <event> <time>`` line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.callbacks import Callback

from tlexp.benchmarks.common import Settings

MARK = "TLEXP_BENCH"


def stamp(event: str, text: str = "") -> None:
    print(f"{MARK} {event} {time.time():.6f} {text}", flush=True)


class JobStamp(HydraCallback):
    """Hydra callback: prints a timestamp (and the job's overrides) when each job of a multirun starts."""

    def on_job_start(self, config, **kwargs):
        from hydra.core.hydra_config import HydraConfig

        stamp("job_start", HydraConfig.get().job.override_dirname)


class FirstStepStamp(Callback):
    """Lightning callback: timestamps at setup, train start and the first training batch."""

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            stamp("setup")

    def on_train_start(self, trainer, pl_module):
        stamp("train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            stamp("first_step")


def sweep_command(settings: Settings, tmp: str) -> list[str]:
    """Four jobs of two training batches: frozen (feature cache cold), frozen (cache warm), full, full."""
    data = (["data=synthetic"] if settings.data == "synthetic" else
            ["data=fashion_mnist", "data.fraction=0.01", "data.val_size=64", "data.download=false"]
            + ([f"data.root={settings.data_root}"] if settings.data_root else []))
    return [
        sys.executable, "-m", "tlexp.train", "--multirun", "strategy=frozen,full", "strategy.lr_head=0.01,0.02",
        f"data.image_size={settings.image_size}", f"data.batch_size={settings.batch_size}", *data,
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", f"trainer.accelerator={settings.accelerator}", "trainer.enable_progress_bar=false",
        "test=false", f"logger={settings.sweep_logger}", "callbacks=none",
        f"+callbacks.first_step._target_={FirstStepStamp.__module__}.FirstStepStamp",
        f"+hydra.callbacks.stamp._target_={JobStamp.__module__}.JobStamp",
        f"hydra.sweep.dir={tmp}/sweep", "hydra.sweep.subdir=${hydra.job.num}", f"paths.data_dir={tmp}/data", f"paths.log_dir={tmp}/logs",
    ]


def summarize(stdout: str, started: float, ended: float, logger: str) -> dict:
    """The timings of a sweep from its ``TLEXP_BENCH`` lines; ``started``/``ended``: the process's."""
    jobs, current = [], None
    for line in stdout.splitlines():
        if line.startswith(MARK):
            _, event, when, *text = line.split()
            if event == "job_start":
                current = {"job_start": float(when), "name": " ".join(text)}
                jobs.append(current)
            elif current is not None:
                current.setdefault(event, float(when))
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
              "total_s": ended - started, "jobs": rows, "logger": logger}
    print(f"  process start -> first job {result['process_start_to_first_job_s']:.2f} s, -> first step "
          f"{result['process_start_to_first_step_s']:.2f} s; whole sweep {result['total_s']:.1f} s", flush=True)
    return result


def section_sweep(settings: Settings) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": str(settings.threads)}
        started = time.time()
        output = subprocess.run(sweep_command(settings, tmp), capture_output=True, text=True, cwd=tmp, env=env)
        ended = time.time()
    if output.returncode:
        raise RuntimeError(f"sweep failed:\n{output.stdout[-2000:]}\n{output.stderr[-3000:]}")
    return summarize(output.stdout, started, ended, settings.sweep_logger)
