"""One summary record per job (``result.json``), so a run or a sweep can be reviewed without W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULT_FILE = "result.json"

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
"""``running`` while the job runs (left behind if it was killed without a chance to write);
``completed``; ``failed`` (an error); ``diverged`` (non-finite loss, a result of its settings);
``interrupted`` (a signal stopped it after a checkpoint: re-running resumes it)."""
FINAL_STATUSES = ("completed", "failed", "diverged")
DONE_STATUSES = ("completed", "diverged")
"""A re-run of a sweep skips these: running them again would give the same result."""


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def write_result(output_dir: str | Path, record: dict) -> Path:
    path = Path(output_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: _clean(v) for k, v in record.items()}, indent=2, default=str))
    return path


def read_result(job_dir: str | Path) -> dict | None:
    path = Path(job_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
