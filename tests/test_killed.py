"""A job killed from outside (``kill -9``, the OOM killer, a time limit) cannot write its record: every reader
(``load_jobs``, the sweep summary, the report, the next attempt) shows it as killed after its last finished
epoch, with the system's cause where it gives one, and a re-run resumes it and keeps the history."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import NO_REPORT, PYTHON, REPO, merge_overrides, read_json, subprocess_env
from tlexp import liveness
from tlexp.callbacks import Heartbeat
from tlexp.report import generate
from tlexp.resume import find_interrupted_run
from tlexp.results import RunRecord, Status, load_jobs, read_result
from tlexp.sweep import format_summary, summarize

HOST = socket.gethostname()


def _iso(seconds_ago: float = 0.0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _running(job_dir: Path, **fields) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "running", "strategy": "full", "max_epochs": 5, "epochs_done": 2, "host": HOST, "pid": _dead_pid(),
              "started": _iso(60), "heartbeat": _iso(5), **fields}
    (job_dir / "result.json").write_text(json.dumps(record))
    return job_dir


def test_the_cause_comes_from_the_oom_counter_and_the_launchers_log(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 3\noom_kill 2\n")
    log = tmp_path / "77_3_0_log.err"
    stale = "slurmstepd: error: *** JOB 77 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***\n"
    oom = "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=77.batch. Some of your processes may have been killed.\n"
    log.write_text(stale + "Epoch 3: 100%\n" + oom)
    job = _running(tmp_path / "job", peak_rss_mb=1234.4, oom_kill_counter={"file": str(events), "at_start": 1},
                   launcher_job="77_3", launcher_logs={str(log): len(stale)})
    record = read_result(job)
    assert record.status == Status.KILLED
    assert record.error.startswith(f"killed from outside after epoch 2 of 5 (process {record.pid} on {HOST} is gone;")
    assert "the kernel's OOM killer acted in its memory cgroup (oom_kill 1 -> 2); peak resident 1234 MB" in record.cause
    assert f"job 77_3 says: {oom.strip()}" in record.cause and "TIME LIMIT" not in record.cause  # only this attempt's lines
    assert record.cause in record.error

    events.write_text("oom_kill 1\n")  # no OOM kill since the start; no log line after the offset
    job = _running(tmp_path / "quiet", oom_kill_counter={"file": str(events), "at_start": 1}, launcher_logs={str(log): log.stat().st_size})
    record = read_result(job)
    assert record.status == Status.KILLED and record.cause is None and record.error.endswith("; no cause found")


def test_a_job_whose_process_still_runs_stays_running(tmp_path):
    alive = read_result(_running(tmp_path / "alive", pid=os.getpid(), started=_iso()))
    assert alive.status == Status.RUNNING and alive.error is None
    # the same pid, but a process started after the job was: the system gave the job's pid to another process
    reused = read_result(_running(tmp_path / "reused", pid=os.getpid(), started=_iso(10 * 24 * 3600)))
    assert reused.status == Status.KILLED and "is gone" in reused.error
    # another host, or this host's name in another container: only the heartbeat can tell
    assert read_result(_running(tmp_path / "there", host="elsewhere", heartbeat=_iso(60))).status == Status.RUNNING
    assert read_result(_running(tmp_path / "container", pid_namespace="pid:[1]", heartbeat=_iso(60))).status == Status.RUNNING
    silent = read_result(_running(tmp_path / "silent", host="elsewhere", heartbeat=_iso(3600)))
    assert silent.status == Status.KILLED and "no heartbeat from process" in silent.error and "on elsewhere since" in silent.error
    # written before tlexp recorded hosts and heartbeats: cannot tell, as before
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps({"status": "running"}))
    assert read_result(tmp_path / "old").status == Status.RUNNING


def test_summary_and_report_show_a_killed_job_with_its_epochs_and_cause(tmp_path):
    sweep = tmp_path / "sweep"
    events = tmp_path / "oom_control"
    events.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")  # cgroup v1
    _running(sweep / "strategy=full", oom_kill_counter={"file": str(events), "at_start": 0}, peak_rss_mb=900.0)
    jobs = load_jobs(sweep)
    summary = summarize(sweep, jobs, set(), "g")
    assert summary["counts"]["killed"] == 1 and summary["counts"]["interrupted"] == 0
    entry = summary["killed"][0]
    assert entry["epochs_done"] == 2 and entry["max_epochs"] == 5 and "oom_kill 0 -> 1" in entry["cause"]
    text = format_summary(summary)
    assert "1 killed" in text and "  killed      strategy=full  killed from outside after epoch 2 of 5" in text

    generate(sweep, figures=False)
    tables = json.loads((sweep / "report.json").read_text())["tables"]
    row = tables["unfinished"][0]
    assert row["status"] == "killed" and row["epochs_done"] == 2 and "OOM killer" in row["cause"]
    assert [r["status"] for r in tables["jobs"]] == ["killed"]
    page = (sweep / "report.html").read_text()
    assert "Diverged, interrupted and killed jobs" in page and "running" not in page.split("id='jobs'")[1]


def test_this_process_finds_its_oom_counter_where_the_system_has_one():
    counter = liveness.oom_counter_file()
    if counter is None:
        pytest.skip("no readable memory cgroup oom_kill counter here")
    assert isinstance(liveness.read_oom_kills(counter), int)
    assert liveness.identity()["oom_kill_counter"] == {"file": str(counter), "at_start": liveness.read_oom_kills(counter)}


def test_heartbeat_thread_beats_and_stops(tmp_path):
    record = RunRecord(status=Status.RUNNING, heartbeat="before")
    with Heartbeat(record, tmp_path, interval_s=0.05) as heartbeat:
        time.sleep(0.4)
    assert not heartbeat._thread.is_alive()
    written = read_json(tmp_path / "result.json")
    assert written["heartbeat"] != "before" and written["peak_rss_mb"] > 0


def test_a_run_directory_in_use_is_not_started_twice(tmp_path, main_direct):
    _running(tmp_path, pid=os.getpid(), started=_iso())
    code, output = main_direct(tmp_path)
    assert code == 1 and f"is in use by process {os.getpid()} on {HOST}" in output
    assert read_json(tmp_path / "result.json")["status"] == "running"  # untouched


def test_a_single_run_continues_the_newest_killed_twin_not_a_live_one(tmp_path):
    overrides = ["strategy=full", "seed=1"]
    for name, fields in (("killed", {}), ("live", {"pid": os.getpid(), "started": _iso()}), ("other", {"overrides": ["seed=2"]})):
        _running(tmp_path / name, **{"overrides": overrides, **fields})
        (tmp_path / name / "checkpoints").mkdir()
        (tmp_path / name / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert find_interrupted_run(tmp_path, list(reversed(overrides)), tmp_path / "new") == tmp_path / "killed"


def _epochs_done(job_dir: Path) -> int:
    try:
        return read_json(job_dir / "result.json").get("epochs_done") or 0
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_training_reads_as_killed_and_the_rerun_resumes_with_its_history(tmp_path, main_inprocess):
    """A real train.py killed with SIGKILL; the re-run goes through train.py's entry point in this process (it is
    another process, as a re-run is, and its record must say so)."""
    sweep, run = tmp_path / "sweep", ("trainer.max_epochs=3", "hydra.sweep.subdir=job", NO_REPORT)  # the report: generate below
    job = sweep / "job"
    args = merge_overrides(*run, f"paths.data_dir={sweep / 'data'}", f"hydra.sweep.dir={sweep}")
    child = subprocess.Popen([PYTHON, "train.py", "-m", *args], cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _epochs_done(job) < 1 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert child.poll() is None, "the job ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()

    record = read_result(job)
    done = record.epochs_done
    assert record.status == Status.KILLED and done in (1, 2), record
    assert record.error.startswith(f"killed from outside after epoch {done} of 3 (process {child.pid} on {HOST} is gone")
    [entry] = summarize(sweep, load_jobs(sweep), set(), "g")["killed"]
    assert entry["epochs_done"] == done
    generate(sweep, figures=False)
    assert json.loads((sweep / "report.json").read_text())["tables"]["unfinished"][0]["status"] == "killed"

    code, again = main_inprocess(sweep, *run, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}")
    assert code == 0, again[-4000:]
    assert f"previous attempt was killed from outside after epoch {done} of 3" in again
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in again
    final = read_json(job / "result.json")
    assert final["status"] == "completed" and final["epochs_done"] == 3 and final["pid"] != child.pid
    [attempt] = final["attempts"]
    assert attempt["status"] == "killed" and attempt["epochs_done"] == done and attempt["pid"] == child.pid
    summary = read_json(sweep / "sweep_summary.json")
    assert summary["completed"][0]["earlier_attempts"] == ["killed"] and "after earlier attempts: killed" in again
