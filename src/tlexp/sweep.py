"""The end of a multirun: which jobs completed, which were skipped (done by an earlier run of the same
sweep), which failed and why; then the report and one W&B summary run of the sweep.

Registered in ``conf/hydra/default.yaml`` under ``hydra.callbacks``. It runs in the process that
launched the sweep (also with the joblib and submitit launchers) and reads only the job directories,
so it sees the jobs of every launcher and of every earlier invocation into the same sweep directory. Several
processes that end one sweep (race workers, invocations on several hosts into one sweep directory, the command that
submitted race workers) do it one after the other (a lock in the sweep directory), each from every job found there,
and log to the same W&B summary run (``summary_run_id``): the last to end leaves the whole study.
WandbProbe, registered beside it, asks whether the W&B server answers once per sweep, before any job starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlexp.errors import InvalidValue
from tlexp.loggers import resolve_wandb_mode
from tlexp.report.wandb_charts import charts
from tlexp.report import generate, report_figures
from tlexp.report.tables import verdict_table
from tlexp.results import SUMMARY_FILE, Job, Status, load_jobs
from tlexp.shared_files import claimed, write_atomic

log = logging.getLogger("tlexp.sweep")
LOCK_FILE = ".sweep_summary.lock"
"""Held by the process that ends the sweep: the summary, the report and the summary run are made by one at a time."""


def sweep_group(config: DictConfig, sweep_dir: Path, jobs: list[Job] = ()) -> str:
    """The sweep's W&B group: the one its jobs recorded (train.job_identity), else the config's
    ``group``, else the sweep directory's name: the same rule the jobs follow."""
    groups = {job.record.group for job in jobs if job.record.group}
    if len(groups) == 1:
        return groups.pop()
    return config.get("group") or sweep_dir.name


def summary_run_id(group: str, sweep_dir: Path) -> str:
    """The W&B id of the sweep's summary run: the same in every process that ends the sweep, so that each later one
    resumes the run rather than adding one. From the group and the sweep directory's name (not its path, which hosts
    that mount a shared file system at different places see differently; two sweeps of one experiment share a group)."""
    return "summary-" + hashlib.sha1(f"{group}\0{sweep_dir.resolve().name}".encode()).hexdigest()[:16]


def keep_newest_offline(run_dir: Path, run_id: str) -> None:
    """Offline, W&B writes each resumption of a run into a directory of its own (``offline-run-<time>-<id>-1``):
    only the newest is kept, which holds every job, so the sweep directory has one summary run to sync."""
    for older in run_dir.parent.glob(f"offline-run-*-{run_id}*"):
        if older != run_dir:
            shutil.rmtree(older, ignore_errors=True)


BUCKETS = (Status.COMPLETED, Status.SKIPPED, Status.PRUNED, Status.DIVERGED, Status.INTERRUPTED, Status.KILLED,
           Status.FAILED)


def summarize(sweep_dir: Path, jobs: list[Job], done_before: set[str], group: str) -> dict:
    """The sweep_summary.json record: jobs sorted into completed (this invocation), skipped
    (completed before it started), diverged, interrupted (resumed by the next run), killed (from outside,
    with the epochs it finished and the system's cause; resumed by the next run too) and failed. A job
    that got there only after earlier attempts lists their statuses."""
    summary: dict[str, Any] = {"sweep_dir": str(sweep_dir), "group": group, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                               **{bucket: [] for bucket in BUCKETS}}
    for job in jobs:
        record = job.record
        entry = {"job": job.name, "strategy": record.strategy, "fraction": record.fraction, "seed": record.seed}
        if record.attempts:
            entry["earlier_attempts"] = [attempt.get("status") for attempt in record.attempts]
        if job.completed:
            entry.update(test_acc=job.test_acc, val_acc_best=record.val_acc_best, wall_seconds=record.wall_seconds)
            summary[Status.SKIPPED if job.name in done_before else Status.COMPLETED].append(entry)
        else:
            entry.update(status=job.status, error=record.error or f"status {job.status}")
            if job.status == Status.KILLED:
                entry.update(epochs_done=record.epochs_done, max_epochs=record.max_epochs, cause=record.cause)
                summary[Status.KILLED].append(entry)
            elif job.status in (Status.INTERRUPTED, Status.RUNNING):  # running: a record too old to tell whether it was killed
                summary[Status.INTERRUPTED].append(entry)
            elif job.status == Status.PRUNED:
                summary[Status.PRUNED].append(entry)
            else:
                summary[Status.DIVERGED if job.status == Status.DIVERGED else Status.FAILED].append(entry)
    summary["counts"] = {key: len(summary[key]) for key in BUCKETS}
    summary["counts"]["total"] = len(jobs)
    return summary


def format_summary(summary: dict) -> str:
    counts = summary["counts"]
    lines = [f"tlexp sweep {summary['sweep_dir']} (group {summary['group']}): {counts['completed']} completed, "
             f"{counts['skipped']} skipped (already completed), "
             + (f"{counts['pruned']} pruned, " if counts["pruned"] else "") + f"{counts['diverged']} diverged, "
             f"{counts['interrupted']} interrupted, {counts['killed']} killed, {counts['failed']} failed, {counts['total']} jobs"]
    for key in ("completed", "skipped"):
        for entry in summary[key]:
            acc = entry.get("test_acc")
            earlier = (f"  (after earlier attempts: {', '.join(map(str, entry['earlier_attempts']))})"
                       if entry.get("earlier_attempts") else "")
            lines.append(f"  {key:11s} {entry['job']}" + (f"  test/acc={acc:.4f}" if acc is not None else "") + earlier)
    for key in ("pruned", "diverged", "interrupted", "killed", "failed"):
        for entry in summary[key]:
            error = [line for line in str(entry["error"]).splitlines() if line.strip()] or [""]
            lines.append(f"  {key:11s} {entry['job']}  {error[-1].strip()}")  # the cause: the last line
    return "\n".join(lines)


def _cell(value):
    """A wandb.Table cell: numbers, text and None as they are; lists and dicts as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


def jobs_as_table(jobs: list[Job]):
    """A wandb.Table of every job's result.json record (nested values as JSON text), one row per job."""
    import wandb

    records = [job.record.to_json() for job in jobs]
    columns = ["job"]
    for record in records:
        columns += [key for key in record if key not in columns]
    rows = [[job.name] + [_cell(record.get(key)) for key in columns[1:]] for job, record in zip(jobs, records)]
    return wandb.Table(columns=columns, data=rows, allow_mixed_types=True)


def log_summary_run(logger_cfg: DictConfig, sweep_dir: Path, group: str, jobs: list[Job], summary: dict,
                    figures: list[Path]) -> str | None:
    """One W&B run (job_type=summary) in the sweep's group, resumed by every process that ends the sweep
    (``summary_run_id``): the jobs table, the report's figures and its views as custom charts (``tlexp.report.wandb_charts``).
    Offline without credentials or a server that answers (tlexp.loggers.resolve_wandb_mode); never prompts."""
    import wandb

    options = dict(logger_cfg.wandb)
    mode = resolve_wandb_mode(options, sweep_dir)
    if mode == "disabled":
        return None
    run_id = summary_run_id(group, sweep_dir)
    run = wandb.init(project=options.get("project"), entity=options.get("entity"), group=group, job_type="summary",
                     id=run_id, resume="allow", name=f"{group}/summary", dir=str(sweep_dir), mode=mode, tags=["sweep-summary"],
                     config={"sweep_dir": str(sweep_dir), "group": group},
                     settings=wandb.Settings(init_timeout=60, silent=True))
    try:
        payload = {"jobs": jobs_as_table(jobs), **charts(jobs)}
        verdict = verdict_table(sweep_dir)
        if verdict.rows:  # experiment=race: the leaderboard with its intervals
            payload["race/verdict"] = wandb.Table(columns=verdict.columns, data=[[_cell(v) for v in row] for row in verdict.rows])
            run.summary.update({f"race/{row[0]}/{row[1]}/test_acc_mean": row[3] for row in verdict.rows if row[3] is not None})
        payload.update({f"report/{path.stem}": wandb.Image(str(path)) for path in figures})
        run.log(payload)
        run.summary.update({f"jobs/{key}": value for key, value in summary["counts"].items()})
        completed = [job.test_acc for job in jobs if job.completed and job.test_acc is not None]
        if completed:
            run.summary["test/acc_best"] = max(completed)
    finally:
        run.finish()
    if mode == "offline":
        keep_newest_offline(Path(run.dir).parent, run_id)
    return run.dir


class SweepSummary(Callback):
    """Hydra callback: on_multirun_end writes ``<sweep dir>/sweep_summary.json`` and prints it, writes the
    report (tlexp.report) and logs one W&B summary run. Nothing here can fail the sweep."""

    def __init__(self, report: bool = True, wandb: bool = True):
        self.report = report
        self.wandb = wandb
        self.sweep_dir: Path | None = None
        self.done_before: set[str] = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.done_before = {job.name for job in load_jobs(self.sweep_dir) if job.completed} if self.sweep_dir.is_dir() else set()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        with claimed(sweep_dir / LOCK_FILE, wait=True):  # another worker ending the sweep: after it, with its jobs too
            self.finish(config, sweep_dir)

    def finish(self, config: DictConfig, sweep_dir: Path) -> None:
        jobs = load_jobs(sweep_dir)
        group = sweep_group(config, sweep_dir, jobs)
        summary = summarize(sweep_dir, jobs, self.done_before, group)
        summary_path = write_atomic(sweep_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))  # the report reads it
        figures: list[Path] = []
        if self.report:
            try:
                summary["report"] = str(generate(sweep_dir))
                figures = report_figures(sweep_dir)
            except Exception as error:  # a report problem must not hide the summary
                log.exception("report failed")
                summary["report_error"] = f"{type(error).__name__}: {error}"
        logger_cfg = config.get("logger") or {}
        if self.wandb and "wandb" in logger_cfg:
            try:
                summary["wandb_summary_run"] = log_summary_run(logger_cfg, sweep_dir, group, jobs, summary, figures)
            except Exception as error:
                log.exception("W&B summary run failed")
                summary["wandb_error"] = f"{type(error).__name__}: {error}"
        write_atomic(summary_path, json.dumps(summary, indent=2, default=str))
        print("\n" + format_summary(summary) + f"\nsummary: {summary_path}"
              + (f"\nreport:  {summary['report']}" if "report" in summary else ""), flush=True)


class WandbProbe(Callback):
    """Hydra callback: before the jobs start, probes the W&B server once for the whole sweep, in the launching
    process (tlexp.loggers.resolve_wandb_mode). A server found unreachable is recorded in the environment,
    which the jobs inherit under every launcher, so they log offline without each waiting and warning."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        logger_cfg = config.get("logger") or {}
        if "wandb" in logger_cfg:
            try:
                resolve_wandb_mode(logger_cfg.wandb, config.hydra.sweep.dir)
            except InvalidValue:  # each job reports it in its result.json, the sweep summary lists them
                pass
