"""Where an interrupted job continues from.

A job killed before it finished (preempted, ``scancel``, Ctrl-C, OOM-killed, a lost node) leaves a
``result.json`` that is not final and a checkpoint: ``interrupted.ckpt`` when a signal stopped it
(``tlexp.callbacks.interruption``), else the ``last.ckpt`` of its last finished epoch. Running the
same command or sweep again resumes it instead of starting over.
"""

from __future__ import annotations

from pathlib import Path

from tlexp.callbacks.interruption import INTERRUPTED_CHECKPOINT
from tlexp.results import FINAL_STATUSES, Status, read_result

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
