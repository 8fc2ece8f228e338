"""A finished run as the input of another step (``distill``'s teacher, ``lpft``'s probe run, WiSE-FT): where its
config and its tested checkpoint are, or one error naming the setting that pointed at it."""

from __future__ import annotations

from pathlib import Path

from tlexp.errors import InvalidValue
from tlexp.results import Status, read_result

FINISHED_RUN = "a finished tlexp run directory (its tested best checkpoint) or a .ckpt file in its checkpoints/"


def locate(source: str | Path, key: str, accepted: str = FINISHED_RUN) -> tuple[Path, Path]:
    """(run directory, checkpoint) of ``source``: a run directory whose ``result.json`` says it completed (the checkpoint
    it tested) or a checkpoint file in ``<run>/checkpoints/``; else ``InvalidValue(key, source, accepted, why)``."""
    path = Path(source).expanduser()
    if path.is_file():
        run_dir, checkpoint = path.parent.parent, path
    else:
        record = read_result(path) if path.is_dir() else None
        if record is None or record.status != Status.COMPLETED or not record.best_checkpoint:
            why = f"result.json says {record.status}" if record else "no run directory with a result.json"
            raise InvalidValue(key, str(source), accepted, f"{why}: not a finished run with a tested best checkpoint")
        run_dir, checkpoint = path, Path(record.best_checkpoint)
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise InvalidValue(key, str(source), accepted, f"{run_dir / '.hydra' / 'config.yaml'} not found")
    if not checkpoint.is_file():
        raise InvalidValue(key, str(source), accepted, f"checkpoint {checkpoint} not found")
    return run_dir, checkpoint
