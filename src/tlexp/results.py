"""What a job leaves behind, and reading it back: the run record (``result.json``), the per-epoch
history (``metrics.csv``) and the jobs of a sweep directory.

The bottom layer of the reading side: ``train`` writes records, ``resume``, ``sweep``, ``report`` and
the scripts read them, and nothing here imports any of those, so the summary at the end of a sweep
(``sweep``) and the report (``report``) read jobs the same way without one depending on the other.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import threading
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

from tlexp import liveness
from tlexp.shared_files import write_atomic

RESULT_FILE = "result.json"
SUMMARY_FILE = "sweep_summary.json"
"""Written by ``sweep.SweepSummary`` into the sweep directory; the report shows its counts."""
RACE_FILE = "race.json"
"""Written by ``race.Race`` into the race directory: the verdict; the report and the W&B summary run show it."""

HISTORY_FILE = "metrics.csv"
EPOCH_KEYS = ("val/acc", "val/loss", "train/acc", "train/loss", "time/epoch_s", "time/elapsed_s")


def settings_text(params: dict | None) -> str:
    """A race's best settings as one line (``lr_head=0.000375, frozen_depth=3``): the ``strategy.`` prefix dropped,
    floats to 3 significant digits; the printed verdict, the report and scripts/race_vs_defaults.py show the same."""
    return ", ".join(f"{key.removeprefix('strategy.')}={format(value, '.3g') if isinstance(value, float) else value}"
                     for key, value in (params or {}).items())


def with_interval(value: float | None, ci: tuple[float, float] | None, spec: str = ".4f") -> str | None:
    """A mean and its interval in one cell (``0.8200 [0.8011, 0.8389]``), None without a mean: the printed verdict and
    the report's leaderboard show the same."""
    if value is None:
        return None
    return format(value, spec) + (f" [{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci else "")


class Status(str, Enum):
    """What became of a job. A str, so it compares equal to the text in ``result.json``."""

    RUNNING = "running"  # while the job runs (on disk also after a kill, which leaves no chance to write)
    COMPLETED = "completed"
    FAILED = "failed"  # an error (``error`` says which)
    DIVERGED = "diverged"  # non-finite loss, a result of its settings (``diverged`` says where)
    PRUNED = "pruned"  # a race trial its pruner stopped early, also a result of its settings (tlexp.race)
    INTERRUPTED = "interrupted"  # a signal stopped it after a checkpoint: re-running resumes it
    KILLED = "killed"  # never written by the job itself: read_result's name for a `running` record whose process is gone
    SKIPPED = "skipped"  # never in result.json: the sweep summary's name for a job an earlier run completed

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s for s in Status if s is not Status.SKIPPED)
"""The values ``result.json`` holds (``killed`` only in a record that a later attempt took over)."""
FINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.DIVERGED, Status.PRUNED)
DONE_STATUSES = (Status.COMPLETED, Status.DIVERGED, Status.PRUNED)
"""A re-run of a sweep skips these: running them again would give the same result."""


@dataclass
class RunRecord:
    """One job's ``result.json``. ``train.job`` creates it and fills it in with the fields the task (``train.train``)
    returns, and reports as it goes (``progress``), from the objects it built.

    A field that has no value (None) is left out of the file, so the keys on disk say how far the
    job got (a diverged job has no ``test_acc``); reading, a missing key is None and a key this
    class does not know is kept in ``extra`` and written back unchanged.
    """

    # --- when the job starts (train.job); strategy ... weight_decay once built (train.settings): until then, a job
    # that failed or was killed before has only the strategy, fraction and seed its config asked for
    status: str | None = None  # a Status value
    overrides: list[str] | None = None  # the job's command-line overrides; a sweep names its directory by them
    strategy: str | None = None  # the strategy's class name in lower case: scratch, frozen, partial, ...
    model: str | None = None  # timm model name (model.name)
    data: str | None = None  # the data module's class name in lower case, e.g. fashionmnist
    dataset: str | None = None  # which dataset: data.name (torchvision), data.path (hf), the folder's name, else `data`
    fraction: float | None = None  # data.fraction: share of the training pool used, in (0, 1]
    seed: int | None = None  # the global seed
    lr_head: float | None = None  # the head's base learning rate
    lr_backbone: float | None = None  # the top backbone stage's base learning rate
    lr_ratio: float | None = None  # the lowest backbone stage's rate / the top one's (per-stage rates; lr_decay wins)
    lr_decay: float | None = None  # when set: factor on the rate per backbone stage further down, instead of lr_ratio
    max_epochs: int | None = None  # trainer.max_epochs
    weight_decay: float | None = None  # the optimizer's weight decay
    group: str | None = None  # W&B group: the experiment's, or the sweep directory's name
    tags: list[str] | None = None  # the config's tags
    resumed_from: str | None = None  # path of the checkpoint this job resumed from
    attempts: list[dict] | None = None  # earlier attempts at this job, oldest first (RunRecord.as_attempt)
    # --- who runs it (liveness.identity), and a heartbeat while it runs (callbacks.Heartbeat)
    host: str | None = None
    pid: int | None = None
    pid_namespace: str | None = None  # e.g. pid:[4026531836]: the pid means a process only in this namespace
    started: str | None = None  # UTC, ISO 8601
    heartbeat: str | None = None  # UTC, ISO 8601: the last time the job was known to run
    epochs_done: int | None = None  # training epochs finished (and checkpointed)
    refused: dict | None = None  # a config error: {key, value, accepted} of the value refused
    peak_rss_mb: float | None = None  # peak resident memory of the training process so far (MB)
    oom_kill_counter: dict | None = None  # {file, at_start}: the job's memory cgroup's oom_kill count when it started
    launcher_job: str | None = None  # submitit's job id (SLURM: <array job>_<task>)
    launcher_logs: dict[str, int] | None = None  # submitit's log files -> their size when this attempt started
    # --- once the model and data are built (train.derived_values)
    params_total: int | None = None  # parameters of backbone and head
    params_trainable: int | None = None  # trainable at the first epoch
    params_frozen: int | None = None  # params_total - params_trainable
    frozen_depth: int | None = None  # backbone stages, from the input, frozen at the first epoch
    num_stages: int | None = None  # backbone stages (the head not counted)
    stages: list[str] | None = None  # stage names, input to output, ending with "head"
    unfreeze_epochs: dict[str, int | None] | None = None  # stage -> first epoch it trains (None: never)
    stage_lrs: dict[str, float] | None = None  # stage -> base learning rate
    num_classes: int | None = None
    train_size: int | None = None  # training images after the fraction (count)
    val_size: int | None = None  # validation images (count)
    test_size: int | None = None  # test images (count)
    skipped_files: int | None = None  # unreadable image files left out (image folders; count)
    # --- after fitting and testing (train.fit, train.train)
    fit_seconds: float | None = None  # wall-clock of trainer.fit (s)
    val_acc_final: float | None = None  # val/acc of the last epoch, in [0, 1]
    val_acc_best: float | None = None  # best val/acc of any epoch, in [0, 1]
    params_trainable_end: int | None = None  # trainable at the end (gradual unfreezing grows it)
    test_acc: float | None = None  # test/acc of the best checkpoint, in [0, 1]
    target_test_acc: float | None = None  # test/target_acc: the same on the data.target_domain-shifted test split
    best_checkpoint: str | None = None  # path of the checkpoint tested
    # --- when the job ends (train.job)
    metrics: dict[str, float] | None = None  # every final logged value, e.g. {"val/acc": ..., "test/loss": ...}
    error: str | None = None  # why it failed, diverged, was interrupted or killed (one line, or a traceback's message)
    cause: str | None = None  # killed: what the system says stopped it (the OOM killer, SLURM), where it says so
    diverged: dict | None = None  # where the loss became non-finite: loss, step, epoch, last_finite_loss, learning_rates
    resume_checkpoint: str | None = None  # interrupted: the checkpoint written on the signal
    wall_seconds: float | None = None  # wall-clock of the whole job after its start was recorded (s)
    resumed_in: str | None = None  # interrupted single run: the run directory that continued it
    extra: dict = field(default_factory=dict)  # keys of result.json this class does not know, kept as read

    def update(self, **values) -> RunRecord:
        """Set several fields at once; a name that is not a field is an error, not a new key."""
        for name, value in values.items():
            if name == "extra" or name not in _FIELDS:
                raise TypeError(f"RunRecord has no field {name!r}")
            setattr(self, name, value)
        return self

    def to_json(self) -> dict:
        """The record as ``result.json`` holds it: fields with a value, in declaration order, then ``extra``."""
        record = {name: _clean(getattr(self, name)) for name in _FIELDS}
        return {**{k: v for k, v in record.items() if v is not None}, **self.extra}

    def as_attempt(self) -> dict:
        """This record as an entry of a later attempt's ``attempts``."""
        keys = ("status", "epochs_done", "max_epochs", "error", "cause", "host", "pid", "started", "heartbeat", "peak_rss_mb")
        return {key: value for key, value in self.to_json().items() if key in keys}

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        known = {k: v for k, v in data.items() if k in _FIELDS}
        return cls(**known, extra={k: v for k, v in data.items() if k not in _FIELDS})


_FIELDS = tuple(f.name for f in fields(RunRecord) if f.name != "extra")


def _clean(value):
    """JSON has no NaN or infinity (None instead); tensors and numpy scalars become numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


_writing = threading.Lock()  # the job's main thread and its heartbeat thread both write the record


def write_result(output_dir: str | Path, record: RunRecord) -> Path:
    """Atomically (a reader never sees half a file); the record is read under the lock, so the last write is
    also the newest state."""
    with _writing:
        return write_atomic(Path(output_dir) / RESULT_FILE, json.dumps(record.to_json(), indent=2, default=str))


def read_result(job_dir: str | Path) -> RunRecord | None:
    """The job's record, None if it has no result.json. Older files with fewer or other keys read too.

    Every reader sees a job the same way: a ``running`` record whose process is gone (same host: that pid
    is not the process that wrote it; another host: no heartbeat for ``liveness.STALE_AFTER_S``) reads as
    ``killed``, with ``error`` saying after which epoch and ``cause`` what the system says killed it."""
    path = Path(job_dir) / RESULT_FILE
    if not path.is_file():
        return None
    record = RunRecord.from_json(json.loads(path.read_text()))
    if record.status == Status.RUNNING:
        notice = liveness.death_notice(record)
        if notice:
            record.update(status=Status.KILLED, error=notice[0], cause=notice[1])
    return record


# --- a job directory and a sweep directory --------------------------------------------------------------
@dataclass
class Job:
    """One job directory of a sweep: its record and its per-epoch history."""

    name: str  # the directory relative to the sweep directory
    path: Path
    record: RunRecord
    history: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.record.status or "missing"

    @property
    def completed(self) -> bool:
        return self.status == Status.COMPLETED

    @property
    def test_acc(self) -> float | None:
        return self.record.test_acc

    @property
    def seconds_per_epoch(self) -> float | None:
        """Mean training-epoch time (time/epoch_s in metrics.csv), else fit time / epochs."""
        times = [row["time/epoch_s"] for row in self.history if row.get("time/epoch_s") is not None]
        if times:
            return statistics.fmean(times)
        fit, epochs = self.record.fit_seconds, self.record.max_epochs
        return fit / epochs if fit and epochs else None

    @property
    def trainable_params(self) -> int | None:
        """Trainable parameters at the end of training (gradual unfreezing grows them), else at the start."""
        values = [v for v in (self.record.params_trainable, self.record.params_trainable_end) if v is not None]
        return max(values) if values else None


def _number(text: str | None) -> float | None:
    if text in ("", None):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_history(metrics_csv: str | Path) -> list[dict]:
    """Per-epoch rows from Lightning's CSVLogger file: {epoch, val/acc, time/elapsed_s, ...}, sorted by epoch.

    Lightning writes training-epoch and validation values on separate rows of the same epoch;
    they are merged. Test rows (only test/* values) add nothing.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        return []
    epochs: dict[int, dict] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = _number(row.get("epoch", ""))
            if epoch is None:
                continue
            values = {key: _number(row.get(key, "")) for key in EPOCH_KEYS}
            values = {key: value for key, value in values.items() if value is not None}
            if values:
                epochs.setdefault(int(epoch), {"epoch": int(epoch)}).update(values)
    return [epochs[e] for e in sorted(epochs)]


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every job directory under a sweep: those with a result.json or a Hydra job config (.hydra/)."""
    root = Path(sweep_dir)
    found = {p.parent for p in root.rglob(RESULT_FILE)}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    return sorted(d for d in found if "wandb" not in d.relative_to(root).parts)


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """All jobs of a sweep. A job directory without result.json (killed, or never got to the end)
    is a failed job with that as its error."""
    root = Path(sweep_dir)
    jobs = []
    for directory in job_dirs(root):
        record = read_result(directory)
        if record is None:
            record = RunRecord(status=Status.FAILED, error="no result.json: the job was killed or did not finish")
        jobs.append(Job(str(directory.relative_to(root)), directory, record, read_history(directory / HISTORY_FILE)))
    return jobs
