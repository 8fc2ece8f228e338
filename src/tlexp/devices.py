"""One GPU per local job: jobs that run side by side on one machine each train on a GPU of their own instead of all
on GPU 0.

Job k of a sweep (Hydra's ``hydra.job.num``) or race worker k gets the visible GPUs' k-th, round robin. A Hydra job
takes it as ``trainer.devices=[k]``: the joblib launcher reuses its worker processes, and CUDA, once initialised in
one, ignores a later ``CUDA_VISIBLE_DEVICES``. A race worker is a process of its own started through submitit's local
executor, which sets ``CUDA_VISIBLE_DEVICES`` to the same GPUs for every job (none without ``gpus_per_node``), so it
gets its GPU as ``CUDA_VISIBLE_DEVICES``. Where one GPU is visible there is nothing to spread: a Ray task with
``num_gpus`` (Ray sets its ``CUDA_VISIBLE_DEVICES``), a SLURM task, a machine with one GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)


def visible(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs this process may use, as CUDA names them: ``CUDA_VISIBLE_DEVICES`` where set, else all torch counts."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(k) for k in range(torch.cuda.device_count())]


def slot(index: int, gpus: list[str]) -> int | None:
    """Which of ``gpus`` job ``index`` gets (its position), round robin; None without GPUs."""
    return index % len(gpus) if gpus else None


def worker_env(index: int, gpus: list[str]) -> dict[str, str]:
    """The environment that gives a process of its own, job ``index``, its GPU of ``gpus``."""
    k = slot(index, gpus)
    return {} if k is None else {"CUDA_VISIBLE_DEVICES": gpus[k]}


def trainer_devices(trainer, index: int) -> list[int] | None:
    """``trainer.devices`` for job ``index`` of a sweep: ``[k]`` where it trains on one GPU (``devices: 1``, accelerator
    gpu, cuda or auto) and several are visible; None (the config's own) for CPU, several devices (DDP) or one GPU."""
    if trainer.get("devices") != 1 or str(trainer.get("accelerator")) not in ("gpu", "cuda", "auto"):
        return None
    import torch

    gpus = visible() if torch.cuda.is_available() else []
    if len(gpus) < 2:
        return None
    k = slot(index, gpus)
    log.info("job %d: GPU %s of the %d visible (%s); trainer.devices=[%d]", index, gpus[k], len(gpus), ",".join(gpus), k)
    return [k]
