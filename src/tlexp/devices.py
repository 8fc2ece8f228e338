"""One GPU per local job: jobs that run side by side on one machine each train on a GPU of their own instead of all
on GPU 0, and each gets its share of the CPU cores as torch threads instead of all of them.

Job k of a sweep (Hydra's ``hydra.job.num``) or race worker k gets the visible GPUs' k-th, round robin. A Hydra job
takes it as ``trainer.devices=[k]``: the joblib launcher reuses its worker processes, and CUDA, once initialised in
one, ignores a later ``CUDA_VISIBLE_DEVICES``. A race worker is a process of its own started through submitit's local
executor, which sets ``CUDA_VISIBLE_DEVICES`` to the same GPUs for every job (none without ``gpus_per_node``), so it
gets its GPU as ``CUDA_VISIBLE_DEVICES``. Where one GPU is visible there is nothing to spread: a Ray task with
``num_gpus`` (Ray sets its ``CUDA_VISIBLE_DEVICES``), a SLURM task, a machine with one GPU.

Threads: torch starts as many threads as the process may use cores, so N processes on one machine run N times the
cores' threads, and on a CPU that is several times slower than one thread each (two race workers on 2 cores trained
18 img/s each against about 40; docs/race.md). joblib's workers and Ray's tasks get their share from joblib and Ray;
submitit's local executor gives none, so a local race worker gets ``OMP_NUM_THREADS`` = its share of the cores, unless
``OMP_NUM_THREADS`` is set already (the user's choice).
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


def cores() -> int:
    """The cores this process may use (its CPU affinity, as a cgroup or ``taskset`` limits it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_env(processes: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment that gives each of ``processes`` side-by-side processes its share of this machine's cores as
    torch threads (at least one); nothing where ``OMP_NUM_THREADS`` is set already."""
    if "OMP_NUM_THREADS" in environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, cores() // max(1, processes)))}


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
