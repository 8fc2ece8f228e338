"""``experiment=race``: a Hydra sweeper that runs the race (tlexp.race) in this process, each trial and
confirmation a job composed by Hydra from the race's config and overrides, as a sweep's jobs are;
``race.workers=N`` submits N such processes instead (tlexp.race_workers)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.utils import run_job, setup_globals
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from tlexp.errors import ConfigError, InvalidValue, fail


class RaceSweeper(Sweeper):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.jobs = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context  # train.main is not used: the race runs train.job

    def run_job(self, overrides: list[str], subdir: str, task):
        """One job into ``<sweep dir>/<subdir>``, composed as Hydra's launchers compose a sweep's jobs."""
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = self.jobs
            config.hydra.sweep.subdir = subdir
        self.jobs += 1
        return run_job(hydra_context=self.hydra_context, task_function=task, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir").return_value

    def compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def sweep(self, arguments: list[str]) -> None:
        from tlexp import race_workers, study
        from tlexp.race import Race

        try:
            race = Race(self.config, arguments, self.run_job, self.compose)  # checks race.* before anything is written
            slurm = str(self.config.hydra.launcher.get("_target_", "")).endswith(race_workers.SLURM)
            if race.settings.workers > 1 and slurm and str(race.storage).startswith("sqlite:"):
                raise ConfigError("race.storage", race.settings.storage, "postgresql://user@host:port/db or a journal file "
                                  "<shared path>.log, for race.workers > 1 on SLURM (SQLite is one host's file)")
            if not (str(race.storage).startswith("sqlite:") or study.is_journal(str(race.storage))):
                study.storage(race.storage)  # the database server answers (retried), before any worker starts
        except InvalidValue as error:
            fail(error)
        except study.StorageUnreachable as error:
            fail(f"race.storage: {error}")
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if race.settings.workers > 1:
            try:
                code = race_workers.launch(self.config, arguments, str(race.storage))
            except InvalidValue as error:
                fail(error)
            if code:
                sys.exit(code)
            return
        race.run()
