"""A job stopped by SIGINT or SIGTERM saves a checkpoint, says "interrupted", and the same command
resumes it to exactly the weights of an uninterrupted run (also mid-epoch, also under submitit)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from conftest import (NO_REPORT, PYTHON, REPO, merge_overrides, once_per_suite, read_json, read_metrics, run_train, subprocess_env,
                      timeless)
from test_finetuning import build, trainer
from tlexp.callbacks import Interrupted, Interruption
from tlexp.resume import continue_history
from tlexp.strategies import Gradual


def history(run_dir: Path) -> list[dict]:
    """metrics.csv without the columns that measure time."""
    return timeless(read_metrics(run_dir))


def validation(rows: list[dict]) -> list[dict]:
    """The validation rows of a metrics.csv history: one per epoch trained."""
    return [row for row in rows if "val/acc" in row]


class SignalAt(Callback):
    """Sends a real signal to this process after a given training step."""

    def __init__(self, step: int, signum=signal.SIGINT):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_then_resume_equals_uninterrupted(tmp_path, signum):
    epochs = 4
    datamodule, module = build(Gradual, unfreeze_every=1, head_dropout=0.1)
    trainer(epochs, tmp_path / "a").fit(module, datamodule=datamodule)
    uninterrupted = {k: v.clone() for k, v in module.state_dict().items()}

    steps_per_epoch = len(datamodule.train_dataloader())
    stop_at = steps_per_epoch + 2  # in the middle of the second epoch, after blocks.4 unfroze
    datamodule, module = build(Gradual, unfreeze_every=1, head_dropout=0.1)
    interruption = Interruption(tmp_path / "ckpt")
    with pytest.raises(Interrupted) as stopped:
        trainer(epochs, tmp_path / "b", [SignalAt(stop_at, signum), interruption]).fit(module, datamodule=datamodule)
    assert stopped.value.step == stop_at and stopped.value.epoch == 1
    assert signal.getsignal(signal.SIGINT) is not interruption._on_sigint  # handler restored
    checkpoint = tmp_path / "ckpt" / "interrupted.ckpt"
    assert checkpoint.is_file()

    datamodule, resumed = build(Gradual, unfreeze_every=1, head_dropout=0.1, seed=7 + 1)  # every value must come from the checkpoint
    datamodule.seed, datamodule.train_set = 7, None
    datamodule.setup()
    trainer(epochs, tmp_path / "c").fit(resumed, datamodule=datamodule, ckpt_path=checkpoint)
    final = resumed.state_dict()
    assert [k for k in final if not torch.equal(final[k], uninterrupted[k])] == []


def test_a_resumed_run_keeps_the_history_logged_before_its_checkpoint(tmp_path, run_task):
    """Resumed in its own directory (a sweep's job) or in a new one (a single run's twin), metrics.csv keeps the rows
    logged before the interruption (Lightning's CSVLogger deletes the file of a directory in use, and a new directory
    starts empty): the first epoch as the uninterrupted run logged it, every epoch's validation, no row twice. Not
    kept: the row of the step the signal stopped (it is not logged), and the interrupted epoch's means of train/loss
    and train/acc cover only its batches after the resume."""
    run = ("strategy=gradual", "trainer.max_epochs=3", "trainer.log_every_n_steps=1")
    run_task(tmp_path / "uninterrupted", *run)
    expected = history(tmp_path / "uninterrupted")
    first_epoch = max(row["step"] for row in expected if row["epoch"] == 0)
    with pytest.raises(Interrupted) as stopped:
        run_task(tmp_path / "job", *run, callbacks=[SignalAt(first_epoch + 2)])  # in the middle of the second epoch
    assert stopped.value.epoch == 1
    shutil.copytree(tmp_path / "job", tmp_path / "first")  # the twin's interrupted run, as the job left it
    run_task(tmp_path / "job", *run, ckpt_path=str(stopped.value.checkpoint))
    run_task(tmp_path / "twin", *run, ckpt_path=str(tmp_path / "first" / "checkpoints" / stopped.value.checkpoint.name))

    for run_dir in ("job", "twin"):
        resumed = history(tmp_path / run_dir)
        assert [row for row in resumed if row["epoch"] == 0] == [row for row in expected if row["epoch"] == 0]
        assert validation(resumed) == validation(expected) and len(validation(resumed)) == 3
        keys = [(row["step"], tuple(sorted(row))) for row in resumed]
        assert len(keys) == len(set(keys))


def test_rows_logged_after_the_checkpoint_are_left_to_the_resumed_run(tmp_path):
    """A job killed after its last checkpoint had logged more steps: the resumed run logs them again, once."""
    from lightning.pytorch.loggers import CSVLogger

    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "global_step": 8}, killed / "checkpoints" / "last.ckpt")
    # Lightning's step column: a training row, the optimizer steps before its batch; a validation row, those before
    # the epoch's last batch. Four batches an epoch; the checkpoint after two epochs; killed during the third.
    rows = [(0, 2, "train/loss"), (0, 3, "train/loss"), (0, 3, "val/acc"), (1, 7, "train/loss"), (1, 7, "val/acc"),
            (2, 8, "train/loss"), (2, 9, "train/loss")]
    (killed / "metrics.csv").write_text("epoch,step,train/loss,val/acc\n" + "".join(
        f"{epoch},{step},{'0.5,' if key == 'train/loss' else ',0.5'}\n" for epoch, step, key in rows))
    for run_dir in (killed, tmp_path / "twin"):
        logger = CSVLogger(save_dir=run_dir, name="", version="")
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            continue_history([logger], killed / "checkpoints" / "last.ckpt")
        assert not [w for w in warned if "will be deleted" in str(w.message)]  # Lightning's warning: untrue here
        assert [(row["epoch"], row["step"]) for row in read_metrics(run_dir)] == [(0, 2), (0, 3), (0, 3), (1, 7), (1, 7)]
        logger.log_metrics({"epoch": 2, "train/loss": 0.25, "train/acc": 1.0}, step=8)
        logger.save()
        assert read_metrics(run_dir)[-1] == {"epoch": 2, "step": 8, "train/loss": 0.25, "train/acc": 1.0}
        assert read_metrics(run_dir)[2] == {"epoch": 0, "step": 3, "val/acc": 0.5}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


RUN = ("strategy=gradual", "trainer.max_epochs=12", "data.train_per_class=128", "seed=3")


def _reference(run_dir: Path) -> dict:
    return {"run_dir": str(run_dir), "returncode": run_train(run_dir, *RUN).returncode}


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> tuple[Path, int]:
    """``train.py <RUN>`` uninterrupted: (its run directory, its exit code). Both tests below compare with it: each
    ran this very command (``run_train(tmp_path / "reference", *RUN)``) before; the run directory and data_dir, which
    differ, are not part of what is trained (synthetic data: generated, not read from data_dir). Read-only. The tests
    ask for it once they need it (``request.getfixturevalue``), so they run on any xdist workers, side by side, and
    the first to ask computes it while the other waits on its lock (``once_per_suite``)."""
    done = once_per_suite(tmp_path_factory, "interruption_reference", _reference)
    return Path(done["run_dir"]), done["returncode"]


@pytest.mark.slow
def test_single_run_interrupted_by_ctrl_c_resumes_when_run_again(tmp_path, request):
    args = merge_overrides(*RUN, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'runs' / 'first'}")
    child = subprocess.Popen([PYTHON, "train.py", *args], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    first = tmp_path / "runs" / "first"
    _wait_for(lambda: (first / "checkpoints" / "last.ckpt").is_file() or child.poll() is not None, 300, "the first epoch")
    child.send_signal(signal.SIGINT)
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 130, output[-3000:]
    record = read_json(first / "result.json")
    assert record["status"] == "interrupted" and Path(record["resume_checkpoint"]).is_file(), record
    assert output.count("run the same command again to resume") == 1

    # the same command (same overrides, also paths.data_dir), which gets a new run directory beside the first
    second = run_train(tmp_path / "runs" / "second", *RUN, f"paths.data_dir={tmp_path / 'data'}")
    assert "resuming the interrupted job" in second.stdout
    resumed = read_json(tmp_path / "runs" / "second" / "result.json")
    assert resumed["status"] == "completed" and resumed["resumed_from"] == record["resume_checkpoint"]
    assert read_json(first / "result.json")["resumed_in"] == str(tmp_path / "runs" / "second")
    reference_dir, returncode = request.getfixturevalue("reference")
    assert returncode == 0
    final, expected = (_weights(tmp_path / "runs" / "second" / "checkpoints" / "last.ckpt"),
                       _weights(reference_dir / "checkpoints" / "last.ckpt"))
    assert [k for k in expected if not torch.equal(final[k], expected[k])] == []
    assert validation(history(tmp_path / "runs" / "second")) == validation(history(reference_dir))  # all 12 epochs


@pytest.mark.slow
def test_submitit_job_killed_mid_run_resumes_when_the_sweep_runs_again(tmp_path, request):
    """hydra/launcher=submitit_local runs each job as a real submitit job (the SLURM code path)."""
    sweep = tmp_path / "sweep"
    overrides = (*RUN, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", NO_REPORT)
    args = merge_overrides(*overrides, f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}")
    launcher = subprocess.Popen([PYTHON, "train.py", "-m", *args], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: any(sweep.glob("*/checkpoints/last.ckpt")) or launcher.poll() is not None, 300, "the job's first epoch")
    jobs = subprocess.run(["pgrep", "-f", f"submitit.core._submit.*{sweep}"], capture_output=True, text=True).stdout.split()
    assert jobs, "no submitit job process found"
    for pid in jobs:
        os.kill(int(pid), signal.SIGTERM)  # what SLURM sends on preemption or scancel
    output, _ = launcher.communicate(timeout=180)
    job_dir = next(sweep.glob("*/result.json")).parent
    record = read_json(job_dir / "result.json")
    assert record["status"] == "interrupted", (record, output[-3000:])

    again = run_train(sweep, *overrides, multirun=True)
    record = read_json(job_dir / "result.json")
    assert record["status"] == "completed" and record["resumed_from"], again.stdout[-3000:]
    reference_dir, returncode = request.getfixturevalue("reference")
    final, expected = _weights(job_dir / "checkpoints" / "last.ckpt"), _weights(reference_dir / "checkpoints" / "last.ckpt")
    assert [k for k in expected if not torch.equal(final[k], expected[k])] == []
    assert returncode == 0 and validation(history(job_dir)) == validation(history(reference_dir))


@pytest.mark.slow
def test_job_killed_without_a_word_resumes_from_its_last_checkpoint(tmp_path, main_inprocess):
    """SIGKILL or the OOM killer leave result.json at "running" (written when the job starts); a record written
    before tlexp recorded who runs a job cannot tell a killed job from a live one, and resumes as before
    (test_killed.py: a real kill -9 of a job that records it). The sweep runs through train.py's entry point in this
    process; what the killed job left is written by hand, as it would be found."""
    sweep = ("trainer.max_epochs=2", NO_REPORT, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}")
    code, output = main_inprocess(tmp_path, *sweep)
    assert code == 0, output[-4000:]
    job_dir = next(tmp_path.glob("*/result.json")).parent
    record = read_json(job_dir / "result.json")
    older = {k: v for k, v in record.items() if k not in ("host", "pid", "started", "heartbeat")}
    (job_dir / "result.json").write_text(json.dumps({**older, "status": "running"}))  # as a killed job leaves it
    summary = read_json(tmp_path / "sweep_summary.json")
    code, again = main_inprocess(tmp_path, *sweep)
    resumed = read_json(job_dir / "result.json")
    assert code == 0 and resumed["status"] == "completed"
    assert resumed["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
    assert "resuming the interrupted job" in again and summary["counts"]["completed"] == 1
    assert [row["epoch"] for row in read_metrics(job_dir) if "val/acc" in row] == [0, 1]  # what the killed job logged


class StalledValAcc(BoringModel):
    """val/acc the same every epoch: no epoch after the first improves it."""

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.5)


def test_last_checkpoint_holds_the_last_epoch_also_when_val_acc_stalls(cfg, tmp_path):
    """A job killed without a word resumes from last.ckpt: it must hold the last finished epoch, not the last
    epoch that improved val/acc (what Lightning 2.6's save_last keeps)."""
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if c and "_target_" in c]
    L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks).fit(StalledValAcc())
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch000-val_acc0.5000.ckpt", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 2
