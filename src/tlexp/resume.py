"""Where an interrupted job continues from.

A job killed before it finished (preempted, ``scancel``, Ctrl-C, OOM-killed, a lost node) leaves a
``result.json`` that is not final and a checkpoint: ``interrupted.ckpt`` when a signal stopped it
(``tlexp.callbacks.interruption``), else the ``last.ckpt`` of its last finished epoch. Running the
same command or sweep again resumes it instead of starting over.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

from tlexp.callbacks.interruption import INTERRUPTED_CHECKPOINT
from tlexp.results import FINAL_STATUSES, HISTORY_FILE, Status, read_result
from tlexp.trusted_files import UntrustedFile, load_tensors

CHECKPOINT_DIR = "checkpoints"


def resume_checkpoint(job_dir: str | Path) -> Path | None:
    """The checkpoint to resume ``job_dir`` from: the interruption checkpoint if newer, else last.ckpt."""
    folder = Path(job_dir) / CHECKPOINT_DIR
    found = [p for p in (folder / INTERRUPTED_CHECKPOINT, folder / "last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resumable(record: dict | None) -> bool:
    """A job that started training and did not reach a final status (completed, diverged, failed)."""
    return bool(record) and record.status not in FINAL_STATUSES


def find_interrupted_run(runs_dir: Path, overrides: list[str], current: Path) -> Path | None:
    """For a single run: the newest earlier run directory with the same overrides that a signal
    interrupted or that was killed (``results.read_result``), and that no later run has resumed yet (a run
    still in progress is never taken); the order of the overrides does not matter."""
    candidates = []
    for result in runs_dir.glob("*/result.json"):
        job_dir = result.parent
        record = read_result(job_dir)
        if (job_dir != current and record and record.status in (Status.INTERRUPTED, Status.KILLED) and not record.resumed_in
                and sorted(record.overrides or []) == sorted(overrides) and resume_checkpoint(job_dir)):
            candidates.append(job_dir)
    return max(candidates, key=lambda d: (d / "result.json").stat().st_mtime) if candidates else None


@rank_zero_only
def continue_history(loggers: Sequence[Logger], checkpoint: str | Path) -> None:
    """A run resumed from ``checkpoint`` continues the ``metrics.csv`` of the run directory that wrote it (its own,
    or the interrupted twin's), which Lightning's CSVLogger would delete (a directory in use) or start empty (a new
    one). Rows logged after the checkpoint (by a job killed after its last checkpoint) are left out: the resumed run
    logs those steps again."""
    source = Path(checkpoint).parent.parent / HISTORY_FILE
    if not source.is_file():
        return
    try:  # mmap: the two numbers without reading the weights and optimizer state
        saved = load_tensors(checkpoint, "checkpoint", mmap=True)
    except RuntimeError:  # a file of torch's legacy format cannot be mapped
        saved = load_tensors(checkpoint, "checkpoint")
    except UntrustedFile:  # not plain tensors and values: the fit refuses it, naming ckpt_path
        return
    steps = saved.get("global_step", 0)
    with source.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = sorted(reader.fieldnames or [])  # Lightning's writer keeps its header sorted
        rows = [row for row in reader if _step(row) < steps]
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            with warnings.catch_warnings():  # "Previous log files in this directory will be deleted": kept, below
                warnings.filterwarnings("ignore", message="Experiment logs directory")
                writer = logger.experiment  # created now: it deletes its directory's metrics.csv, the source included
            with open(writer.metrics_file_path, "w", newline="") as file:
                out = csv.DictWriter(file, fieldnames=columns)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = list(columns)  # the header Lightning's writer appends under


def _step(row: dict) -> float:
    """Lightning's ``step`` column: the optimizer steps before the batch a training row was logged in, or before
    the epoch's last batch for a validation or epoch row; inf where a row has none."""
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):
        return float("inf")
