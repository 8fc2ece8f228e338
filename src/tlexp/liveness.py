"""Who runs a job, whether it still runs, and what the system says stopped it when it does not.

A job killed from outside (the OOM killer, a node's time limit, ``kill -9``) cannot write its own
record: its ``result.json`` keeps ``running``. So the job records at its start who runs it (host,
pid, start time, its memory cgroup's OOM-kill counter, its launcher's log files) and, while it runs, a
heartbeat (``callbacks.heartbeat``); a reader (``results.read_result``) then tells a live job from a
dead one, and quotes the system's own words on why it died. Nothing here imports the rest of tlexp.
"""

from __future__ import annotations

import os
import re
import resource
import socket
from datetime import datetime, timezone
from pathlib import Path

import psutil

HEARTBEAT_S = 60
"""How often a running job rewrites its heartbeat (s), also between epochs and outside training."""
STALE_AFTER_S = 15 * 60
"""A job on another host whose heartbeat is older than this is taken for dead: 15 beats, a margin for
clocks that disagree a little and for a slow shared file system."""
SAME_PROCESS_SLACK_S = 2.0
"""psutil's process start times are good to about a second (the boot time it adds is whole seconds)."""
LAUNCHER_LINE = re.compile(r"(slurmstepd|srun)\b.*(oom|out of memory|cancelled|due to|time limit|preempt|node fail)",
                           re.IGNORECASE)
"""What SLURM writes into a job's stderr when it ends it: ``slurmstepd: error: Detected 1 oom-kill event(s)``,
``*** JOB 12 ON n1 CANCELLED AT ... DUE TO TIME LIMIT ***``, ``srun: error: n1: task 0: Out Of Memory``."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _seconds(timestamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(timestamp).timestamp() if timestamp else None
    except ValueError:
        return None


def oom_counter_file() -> Path | None:
    """The file holding this process's memory cgroup's ``oom_kill`` counter: cgroup v2 ``memory.events``, else
    v1 ``memory.oom_control`` (kernels >= 4.13); in a container whose cgroup path is not mounted as such, the
    mount's root (the container's own cgroup). None where there is none to read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            candidates += [Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events", Path("/sys/fs/cgroup/memory.events")]
        elif "memory" in controllers.split(","):  # v1
            root = Path("/sys/fs/cgroup/memory")
            candidates += [root / path.lstrip("/") / "memory.oom_control", root / "memory.oom_control"]
    return next((c for c in candidates if read_oom_kills(c) is not None), None)


def read_oom_kills(path: str | Path) -> int | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    match = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _launcher_logs() -> tuple[str | None, dict[str, int] | None]:
    """(job id, {log file: its size now}) of a submitit job (``hydra/launcher=slurm`` or ``submitit_local``):
    a kill is looked for only in what the logs gain after this attempt started."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None, None
    try:
        import submitit

        environment = submitit.JobEnvironment()
        paths = environment.paths
        logs = {str(p): (p.stat().st_size if p.is_file() else 0) for p in (paths.stderr, paths.stdout)}
        return str(environment.job_id), logs
    except Exception:  # not a submitit job after all, or one this submitit cannot describe
        return None, None


def pid_namespace() -> str | None:
    """Containers that share a host name (Docker's host network) can still number processes apart."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def identity() -> dict:
    """What a job records when it starts (``RunRecord`` fields)."""
    counter = oom_counter_file()
    job, logs = _launcher_logs()
    now = utc_now()
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": pid_namespace(), "started": now, "heartbeat": now,
            "oom_kill_counter": {"file": str(counter), "at_start": read_oom_kills(counter)} if counter else None,
            "launcher_job": job, "launcher_logs": logs}


def usage() -> dict:
    """A heartbeat: the time and the training process's peak resident memory so far (MB)."""
    return {"heartbeat": utc_now(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def same_process_alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` is, on this host, still the process that started at ``started``: a pid that the
    system gave to a newer process, or a zombie, is not."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or process.create_time() <= started + SAME_PROCESS_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process with that pid exists
        return True


def _state(record) -> str:
    """``alive`` (this host, the very process), ``gone`` (this host, no such process), ``silent`` (no heartbeat
    for STALE_AFTER_S) or ``unknown`` (a record from before tlexp wrote hosts and heartbeats, or a recent
    heartbeat from another host or another container's processes)."""
    if record.host == socket.gethostname() and record.pid and record.pid_namespace in (None, pid_namespace()):
        return "alive" if same_process_alive(record.pid, _seconds(record.started)) else "gone"
    beat = _seconds(record.heartbeat)
    if beat is not None and datetime.now(timezone.utc).timestamp() - beat > STALE_AFTER_S:
        return "silent"
    return "unknown"


def still_running(record) -> bool:
    """Certainly still running: on this host, in the process that wrote the record."""
    return _state(record) == "alive"


def cause_of_death(record) -> str | None:
    """What the system says, where it says it: the job's cgroup counted an OOM kill since the job started
    (read on the job's host, while the cgroup exists), or SLURM wrote why it ended the job into its log."""
    causes = []
    counter = record.oom_kill_counter or {}
    if record.host == socket.gethostname() and counter.get("file") and counter.get("at_start") is not None:
        now = read_oom_kills(counter["file"])
        if now is not None and now > counter["at_start"]:
            peak = f"; peak resident {record.peak_rss_mb:.0f} MB" if record.peak_rss_mb is not None else ""
            causes.append(f"the kernel's OOM killer acted in its memory cgroup (oom_kill {counter['at_start']} -> {now}){peak}")
    lines = []
    for path, offset in (record.launcher_logs or {}).items():
        try:
            with open(path, errors="replace") as handle:
                handle.seek(offset)
                lines += [line.strip() for line in handle if LAUNCHER_LINE.search(line)]
        except OSError:
            continue
    if lines:
        job = f" {record.launcher_job}" if record.launcher_job else ""
        causes.append(f"the launcher's log of job{job} says: " + " | ".join(dict.fromkeys(lines[-2:])))
    return "; ".join(causes) or None


def death_notice(record) -> tuple[str, str | None] | None:
    """For a ``running`` record whose process is gone or silent: (the explanation, the cause where the system
    gives one); None while it may still run."""
    state = _state(record)
    if state not in ("gone", "silent"):
        return None
    done = record.epochs_done or 0
    of = f" of {record.max_epochs}" if record.max_epochs else ""
    if state == "gone":
        how = f"process {record.pid} on {record.host} is gone; last heartbeat {record.heartbeat}"
    else:
        how = f"no heartbeat from process {record.pid} on {record.host} since {record.heartbeat}"
    cause = cause_of_death(record)
    return f"killed from outside after epoch {done}{of} ({how})" + (f"; {cause}" if cause else "; no cause found"), cause
