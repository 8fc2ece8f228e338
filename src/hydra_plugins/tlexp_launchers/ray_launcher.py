"""``hydra/launcher=ray``: each job of a multirun as one Ray task on a running Ray cluster (docs/hardware.md).

Written on Ray's own API, not on hydra-ray-launcher 1.2.2: that plugin pins ``cloudpickle<3``, which joblib 1.6 (the
joblib launcher's) refuses, so ``tlexp[sweep,ray]`` cannot be installed together, and it passes
``object_store_memory`` to ``ray.init``, which Ray 2.60 refuses when joining a running cluster.

Each task runs one job as Hydra's other launchers do (``hydra.core.utils.run_job`` in the worker, with the sweep's
config and Hydra's singletons), in a fresh worker process (``max_calls=1``: no state, and no CUDA context, carried
from one job to the next) and is never retried by Ray (``max_retries=0``: a job killed from outside is tlexp's to
resume, on the sweep's next run). A task whose worker died becomes a failed job, like a job that raised.

Bad settings, a missing ``ray`` and a cluster that does not answer end the sweep in ``setup``, before the sweep
directory exists, with one ``tlexp: error:`` line and exit status 1 (Hydra would wrap a raised error in a traceback).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from tlexp.errors import InvalidValue, fail
from tlexp.rules import Rule, number

log = logging.getLogger(__name__)

PROBE_SECONDS = 5  # Ray itself retries an address that does not answer for about 14 minutes (20 tries of ~41 s)
START_ONE = "start a cluster with `ray start --head`, or name a running one's head node as host:port"


def _fraction(value) -> bool:
    """Ray's resource quantities: fractions down to 0.0001 (Ray refuses finer ones when the task is defined)."""
    return abs(value * 10_000 - round(value * 10_000)) < 1e-6


def _host_port(value) -> bool:
    host, _, port = str(value).rpartition(":")
    return bool(host) and "://" not in host and port.isdigit() and 0 < int(port) < 65536


RULES = {
    "address": Rule("auto (the cluster `ray start --head` runs on this machine) or host:port (a running cluster's "
                    "head node, as `ray start --head` prints it)",
                    lambda v: v == "auto" or (isinstance(v, str) and _host_port(v))),
    "num_cpus": Rule("a number of CPUs > 0 (fractions down to 0.0001)", lambda v: number(v) and v > 0 and _fraction(v)),
    "num_gpus": Rule("a number of GPUs >= 0 (fractions down to 0.0001; 0: none)", lambda v: number(v) and v >= 0 and _fraction(v)),
}


def _unreachable(address: str) -> str | None:
    """Why no Ray cluster answers at ``address`` (Ray's own resolution of ``auto``, then a TCP connection to the
    head's GCS port within ``PROBE_SECONDS``), None if one does: what ``ray.init`` would retry for minutes."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        gcs = canonicalize_bootstrap_address_or_die(address)
    except ConnectionError as error:  # auto: none running here, or several
        return f"no Ray cluster to join on this machine ({str(error).split('. Please')[0]})"
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as error:
        return f"no Ray cluster answered at {gcs} ({error.strerror or f'no answer within {PROBE_SECONDS} s'})"
    return None


def _run_job(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction, singletons: dict) -> JobReturn:
    """One job inside a Ray worker: Hydra's state as the driver had it, then the job in its sweep subdirectory."""
    import ray

    setup_globals()
    Singleton.set_state(singletons)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = ray.get_runtime_context().get_task_id()
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


class RayLauncher(Launcher):
    """Submits a batch of jobs as Ray tasks of ``num_cpus`` CPUs and ``num_gpus`` GPUs each (Ray sets each task's
    ``CUDA_VISIBLE_DEVICES`` to its own GPUs), on the cluster at ``address`` (``auto``: the one ``ray start`` runs on
    this machine), and waits for all of them."""

    def __init__(self, address: str = "auto", num_cpus: float = 1, num_gpus: float = 0) -> None:
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Joins the cluster, once its settings are checked: nothing of the sweep is written before."""
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        try:
            for name, rule in RULES.items():
                rule.check(f"hydra.launcher.{name}", getattr(self, name))
        except InvalidValue as error:
            fail(str(error) + ("; Ray Client (ray://) is not supported: run the sweep on a node of the cluster"
                                if str(self.address).startswith("ray://") else ""))
        try:
            import ray
        except ImportError:
            fail("hydra/launcher=ray needs Ray, which is not installed: pip install 'tlexp[ray]'")
        if ray.is_initialized():
            return
        why = _unreachable(self.address)
        if why:
            fail(f"hydra.launcher.address={self.address!r}: {why}; {START_ONE}")
        try:
            ray.init(address=self.address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:  # a version mismatch, say
            fail(f"hydra.launcher.address={self.address!r}: Ray could not join the cluster: {str(error).splitlines()[0]}")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_calls=1, max_retries=0)(_run_job)
        log.info(f"Ray launcher: {len(job_overrides)} jobs on {ray.get_runtime_context().gcs_address}, "
                 f"{self.num_cpus} CPUs and {self.num_gpus} GPUs each; sweep output dir: {sweep_dir}")
        pending = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.num = idx
            pending.append(task.remote(self.hydra_context, sweep_config, self.task_function, Singleton.get_state()))
        return [self._result(ref, overrides) for ref, overrides in zip(pending, job_overrides)]

    @staticmethod
    def _result(ref: Any, overrides: Sequence[str]) -> JobReturn:
        """The job's JobReturn; a failed one where Ray lost the task (its worker killed, out of memory, ...)."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as error:
            log.error(f"Ray task of job {' '.join(filter_overrides(overrides))} failed: {error}")
            result = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            result.return_value = error
            return result
