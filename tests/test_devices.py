"""One GPU per local job (tlexp.devices), without a GPU: a fake list of visible GPUs (``CUDA_VISIBLE_DEVICES`` and a
monkeypatched ``torch.cuda.is_available``), and which GPU each job or race worker is given."""

from __future__ import annotations

import sys

import pytest
import torch
from omegaconf import OmegaConf

from tlexp import devices, race_workers

FOUR = "0,1,2,3"


def test_jobs_take_the_visible_gpus_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a, GPU-b,2,3")
    gpus = devices.visible()
    assert gpus == ["GPU-a", "GPU-b", "2", "3"]
    assert [devices.slot(k, gpus) for k in range(6)] == [0, 1, 2, 3, 0, 1]
    assert [devices.worker_env(k, gpus) for k in (1, 4)] == [{"CUDA_VISIBLE_DEVICES": "GPU-b"}, {"CUDA_VISIBLE_DEVICES": "GPU-a"}]
    assert devices.worker_env(3, []) == {} and devices.slot(3, []) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.visible() == []


@pytest.mark.parametrize(("trainer", "visible", "expected"), [
    ({"accelerator": "auto", "devices": 1}, FOUR, [[0], [1], [2], [3], [0], [1]]),
    ({"accelerator": "gpu", "devices": 1}, "5,7", [[0], [1], [0], [1], [0], [1]]),
    ({"accelerator": "gpu", "devices": 1}, "3", [None] * 6),  # one GPU (a Ray or SLURM task's own): the config's
    ({"accelerator": "gpu", "devices": 2}, FOUR, [None] * 6),  # DDP over several devices: untouched
    ({"accelerator": "cpu", "devices": 1}, FOUR, [None] * 6),
])
def test_a_sweep_job_trains_on_its_own_gpu(monkeypatch, trainer, visible, expected):
    """``trainer.devices`` for jobs 0..5 of a sweep (the joblib launcher's jobs 0 and 1 run side by side: two GPUs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [devices.trainer_devices(OmegaConf.create(trainer), k) for k in range(6)] == expected


def test_no_gpu_leaves_the_trainer_alone(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", FOUR)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.trainer_devices(OmegaConf.create({"accelerator": "auto", "devices": 1}), 1) is None


@pytest.mark.slow
def test_race_workers_on_the_local_executor_get_different_gpus_and_a_share_of_the_cores(monkeypatch, tmp_path):
    """Two race workers through submitit's local executor (which sets the same CUDA_VISIBLE_DEVICES for every job and
    no thread count): each sees its own GPU of the submitter's four, and half of its four cores as torch threads (OMP_NUM_THREADS)."""
    pytest.importorskip("submitit", reason="no submitit (pip install 'tlexp[sweep]')")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", FOUR)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "cores", lambda: 4)
    config = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                                         "sweep": {"dir": str(tmp_path)}},
                               "race": {"workers": 2}})
    pool, cluster = race_workers.executor(config, tmp_path / "%j")
    assert cluster == "local"
    # no launcher time limit: a week, not submitit's local default of 2 minutes, which stopped workers mid-race
    assert pool._executor.parameters["timeout_min"] == race_workers.LOCAL_TIME_LIMIT_MIN
    show = [sys.executable, "-c",  # OMP_NUM_THREADS: torch's thread count at start (importing torch here: 8 s of CPU each)
            "import os; print(f\"gpu={os.environ['CUDA_VISIBLE_DEVICES']} threads={os.environ['OMP_NUM_THREADS']}\")"]
    monkeypatch.setattr(race_workers, "worker_command", lambda *_: show)
    jobs, cluster, _ = race_workers.submit(config, [], "sqlite:///x.db")
    assert [job.result().strip().splitlines()[-1] for job in jobs] == ["gpu=0 threads=2", "gpu=1 threads=2"]


def test_side_by_side_processes_share_the_cores(monkeypatch):
    """Each of N processes gets cores // N torch threads, at least one; a set OMP_NUM_THREADS is the user's choice."""
    monkeypatch.setattr(devices, "cores", lambda: 8)
    assert devices.thread_env(2, {}) == {"OMP_NUM_THREADS": "4"}
    assert devices.thread_env(3, {}) == {"OMP_NUM_THREADS": "2"}
    assert devices.thread_env(16, {}) == {"OMP_NUM_THREADS": "1"}
    assert devices.thread_env(2, {"OMP_NUM_THREADS": "6"}) == {}
