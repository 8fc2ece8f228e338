"""``race.workers=N``: N workers of one race, submitted as one submitit array job (tlexp.race).

The race is a Hydra sweeper that runs its trials in its own process, so Hydra's launchers do not spread it: N
workers are N copies of the same ``train.py -m experiment=race ...`` command (``race.workers=1``, the same
``hydra.sweep.dir`` and ``race.storage``), each an array task of ``submitit`` with the resources of the
composed ``hydra/launcher`` config, as hydra-submitit-launcher passes them: ``hydra/launcher=slurm`` submits
to SLURM (one task and ``gpus_per_node`` GPUs each: SLURM pins each task to its own GPU), any other launcher
runs the workers on this machine through submitit's local executor (the same code path). The command waits for
the workers, like Hydra's submitit launcher, then prints the verdict they wrote (``race.json``); a failed
worker is one line naming its log, and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tlexp import devices, errors
from tlexp.errors import ConfigError

SLURM = "SlurmLauncher"
"""The hydra-submitit-launcher ``_target_`` whose resources go to SLURM; any other launcher: this machine."""
OWN_KEYS = ("race.workers", "race.storage", "hydra.sweep.dir")
"""Overrides each worker gets from the submitting command, not from its command line."""
LAUNCHER_KEYS = ("hydra/launcher", "hydra.launcher")
"""Overrides that choose where the workers run: not the workers' business (each runs the race in-process)."""


LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60
"""A local worker's time limit where the launcher names none (the basic or joblib launcher): a week, the race's length
on one machine, not submitit's 2 minutes; ``hydra/launcher=submitit_local`` brings its own ``timeout_min``."""


def worker_command(config: DictConfig, arguments: list[str], storage: str) -> list[str]:
    """One worker's command: the same script and overrides, one worker, the race dir and storage made explicit
    (a sweep dir with ``${now:...}`` would differ per worker, and the default SQLite file lives in it)."""
    script = str(Path(sys.argv[0]).resolve())
    hydra_overrides = [o for o in config.hydra.overrides.hydra if not o.lstrip("+~").startswith((*LAUNCHER_KEYS, *OWN_KEYS))]
    task = [o for o in arguments if not o.lstrip("+~").startswith(OWN_KEYS)]
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    return [sys.executable, script, "-m", *task, *hydra_overrides, f"hydra.sweep.dir={sweep_dir}", f"race.storage={storage}",
            "race.workers=1"]


def executor(config: DictConfig, folder: Path):
    """A submitit executor with the composed launcher's resources, translated as hydra-submitit-launcher does."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("race.workers", int(config.race.workers), "1 without submitit (pip install 'tlexp[sweep]')") from None

    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    target = str(launcher.pop("_target_", ""))
    cluster = "slurm" if target.endswith(SLURM) else "local"
    if cluster != "slurm":  # the basic or joblib launcher, or submitit_local: only the local executor's keys
        launcher = {k: v for k, v in launcher.items() if k in ("timeout_min", "gpus_per_node", "tasks_per_node", "name")}
    launcher.pop("submitit_folder", None)
    init = {f"slurm_{k}": launcher.pop(k) for k in ("max_num_timeout",) if k in launcher}
    result = submitit.AutoExecutor(folder=str(folder), cluster=cluster, **(init if cluster == "slurm" else {}))
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name", "stderr_to_stdout"}
    params = {(k if k in base else f"slurm_{k}"): v for k, v in launcher.items() if v is not None}
    params.setdefault("name", "tlexp-race")
    if cluster == "local":  # submitit's local default (2 min) would stop a worker mid-race, and requeue it only 3 times
        params.setdefault("timeout_min", LOCAL_TIME_LIMIT_MIN)
    if cluster == "slurm" and "slurm_array_parallelism" not in params:
        params["slurm_array_parallelism"] = int(config.race.workers)
    result.update_parameters(**params)
    return result, cluster


try:
    from submitit.helpers import Checkpointable
except ImportError:  # the sweep extra is not installed: race.workers > 1 says so where it is used
    Checkpointable = object


class Worker(Checkpointable):
    """One array task: the worker's command, on its own GPU of ``gpus`` with ``threads`` (its share of this machine's
    cores, tlexp.devices); its output (submitit's FailedJobError where it exits non-zero).
    Checkpointable: at the SLURM time limit or a preemption submitit requeues the task (``max_num_timeout``), and
    the requeued worker continues the race like any worker started again."""

    def __init__(self, command: list[str], cwd: str, gpus: list[str] = (), threads: dict[str, str] | None = None):
        self.command, self.cwd, self.gpus, self.threads = command, cwd, list(gpus), dict(threads or {})

    def __call__(self, index: int) -> str:
        from submitit.helpers import CommandFunction

        env = {**os.environ, **self.threads, "TLEXP_RACE_WORKER": str(index), **devices.worker_env(index, self.gpus)}
        return CommandFunction(self.command, cwd=self.cwd, env=env, verbose=True)()


def submit(config: DictConfig, arguments: list[str], storage: str) -> tuple[list, str, Path]:
    """Submit ``race.workers`` workers of this race as one ``map_array``: (the jobs, the cluster, their log folder)."""
    n = int(config.race.workers)
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    folder = Path(str(OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None) or sweep_dir / ".submitit" / "%j"))
    pool, cluster = executor(config, folder)
    command = worker_command(config, arguments, storage)
    cwd = str(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or os.getcwd())
    # this machine's GPUs, one each, and its cores, shared (tlexp.devices); SLURM pins its own
    gpus, threads = (devices.visible(), devices.thread_env(n)) if cluster == "local" else ([], {})
    return pool.map_array(Worker(command, cwd, gpus, threads), range(n)), cluster, folder.parent


def reason(error: str) -> str:
    """The worker's own error line (``tlexp: error: ...``) from submitit's report of a failed job, else its exit status."""
    lines = [line.strip() for line in error.splitlines()]
    own = [line.split("tlexp: error: ", 1)[1] for line in lines if "tlexp: error: " in line]
    if own:
        return own[-1]
    status = [line for line in lines if "non-zero exit status" in line]
    return f"exit status {status[-1].rsplit(' ', 1)[-1].rstrip('.')}" if status else (lines[0] if lines else "no report")


def launch(config: DictConfig, arguments: list[str], storage: str) -> int:
    """Submit ``race.workers`` workers of this race, wait for them and print the verdict; the exit code."""
    import json

    import submitit

    from tlexp.results import RACE_FILE
    from tlexp.verdict import format_race

    from tlexp.study import shown

    jobs, cluster, logs = submit(config, arguments, storage)
    print(f"tlexp: {len(jobs)} race workers submitted ({cluster}): jobs {', '.join(j.job_id for j in jobs)}; logs in {logs}; "
          f"storage {shown(storage)}", flush=True)
    failed = []
    for job in jobs:
        try:
            job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as error:
            failed.append(f"race worker {job.job_id} failed ({reason(str(error))}; log: {job.paths.stderr})")
    for line in failed:
        errors.report(line)
    if failed:
        return 1
    result_file = Path(str(config.hydra.sweep.dir)).resolve() / RACE_FILE
    if result_file.exists():
        print("\n" + format_race(json.loads(result_file.read_text())), flush=True)
    return 0
