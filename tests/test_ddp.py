"""Two-process CPU DDP (gloo) through train.py: replicas stay identical through unfreeze
milestones, and DDP inside a Hydra run or multirun makes no extra directories or W&B runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DDP_STRATEGIES, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
DDP = ["model=tiny", "data=synthetic", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=3",
       "trainer.enable_progress_bar=false"]
GRADUAL = [*DDP, "strategy=gradual", "strategy.unfreeze_every=1"]  # one stage more per epoch: unfreezing in each epoch

pytestmark = pytest.mark.slow


def train(*args, cwd=ROOT, timeout=600):
    """train.py in a child whose DDP ranks agree on a free port of their own (``subprocess_env``: no inherited MASTER_PORT)."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=subprocess_env(), timeout=timeout,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)


def epochs_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if row.get("ddp/replica_max_abs_diff")]


def test_gradual_ddp_replicas_stay_identical_through_unfreezing(tmp_path):
    run_dir = tmp_path / "run"
    done = train(*GRADUAL, f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path}/data")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = epochs_rows(run_dir)
    # every epoch compared all parameters and buffers of both ranks; stages were unfrozen on the way
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(float(r["ddp/replica_max_abs_diff"]) == 0.0 for r in rows)
    assert [float(r["stages/unfrozen"]) for r in rows if r.get("stages/unfrozen")] == [1.0, 2.0, 3.0]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed"
    # bn_trainable=frozen_stats (default): the running statistics never moved, on any rank (all equal), from
    # their initial values (random init: mean 0, variance 1, no batches counted)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    stats = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
    assert stats and all(torch.equal(v, torch.ones_like(v) if k.endswith("running_var") else torch.zeros_like(v))
                         for k, v in stats.items())
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    # the second rank re-ran in the same directory: no new timestamped run dirs anywhere
    assert not (ROOT / "logs" / "train" / "runs").exists() or all(
        p.stat().st_mtime < run_dir.stat().st_mtime for p in (ROOT / "logs" / "train" / "runs").iterdir())


def jobs_of(ddp_multirun: dict) -> dict[str, Path]:
    """The multirun's job directories by strategy, once it exited 0."""
    assert ddp_multirun["returncode"] == 0, ddp_multirun["output"]
    jobs = [p for p in Path(ddp_multirun["sweep"]).iterdir() if p.is_dir() and (p / "result.json").exists()]
    return {json.loads((job / "result.json").read_text())["strategy"]: job for job in jobs}


def test_multirun_with_ddp_runs_each_job_once(ddp_multirun):
    jobs = jobs_of(ddp_multirun)
    assert sorted(jobs) == sorted(DDP_STRATEGIES)
    for job in jobs.values():
        assert json.loads((job / "result.json").read_text())["status"] == "completed"
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
    # besides the jobs, only the sweep's own W&B summary run
    sweep = Path(ddp_multirun["sweep"])
    extra = [p.name for p in sweep.iterdir() if p.is_dir() and p not in jobs.values() and p.name not in ("wandb", "data")]
    assert extra == [], f"unexpected directories in the sweep: {extra}"


@pytest.mark.parametrize("strategy", DDP_STRATEGIES)
def test_replicas_stay_identical_for_strategies_with_parts_or_plans_of_their_own(strategy, ddp_multirun):
    """Every parameter and buffer of both ranks compared after each of the 2 epochs: adapters (lora), scales and
    shifts (ssf), a domain classifier and target batches (dann), the batch-spectral penalty (bss), the probe then
    everything (lpft), biases only (bitfit), one stage (surgical)."""
    run_dir = jobs_of(ddp_multirun)[strategy]
    rows = epochs_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["ddp/replica_max_abs_diff"]) == 0.0 for r in rows)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and 0 <= result["target_test_acc"] <= 1
