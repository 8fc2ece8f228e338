"""``hparams_search=optuna``: a Hydra sweeper that lets Optuna propose each job's settings and the
launcher run them (train.main in each job), ``n_jobs`` at a time.

The study lives in ``storage`` (an RDB URL or a journal file; none: in memory), where ``n_trials`` is
the study's budget: the same command run again continues the study (completed trials kept, an
interrupted one re-run in its own job directory, which it resumes), and several processes started with
the same storage share it (tlexp.study). The space: ``params`` plus the command line's sweeps
(tlexp.search_space).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from tlexp import search_space, study as studies
from tlexp.results import read_result

log = logging.getLogger("tlexp.optuna")


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: functools.partial, direction: str, storage: str | None, study_name: str, n_trials: int,
                 n_jobs: int, max_failure_rate: float, params: DictConfig | None = None) -> None:
        self.sampler, self.direction, self.storage, self.study_name = sampler, direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate, self.params = int(n_trials), int(n_jobs), max_failure_rate, params
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function,
                                                                config=config)

    def sweep(self, arguments: list[str]) -> None:
        distributions, fixed = search_space.parse([*search_space.as_overrides(self.params or {}), *arguments])
        seed = self.sampler.keywords.get("seed") or 0  # a partial (_partial_: true): seeded per trial
        study = studies.open_study(self.study_name, self.storage, self.sampler, seed, direction=self.direction)
        log.info("Optuna study %s (storage %s): %d of %d trials done", study.study_name, self.storage or "in memory",
                 studies.used(study), self.n_trials)
        failures = launched = 0
        while batch := self._claim(study):
            returns = self._launch(batch, distributions, fixed)
            for trial, ret in zip(batch, returns):
                if self._refused(study, trial, ret, distributions, arguments):
                    continue
                try:
                    value = float(ret.return_value)  # re-raises the job's error
                    if math.isnan(value):
                        raise ValueError("the job returned no value (it failed: see its result.json)")
                    study.tell(trial, value)
                except Exception as error:
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning("trial %d failed: %s", trial.number, error)
                    failures += 1
            launched += len(batch)
            if failures > self.max_failure_rate * launched:
                raise RuntimeError(f"{failures} of {launched} trials failed (hydra.sweeper.max_failure_rate={self.max_failure_rate})")
        self._write_best(study)

    def _refused(self, study, trial, ret, distributions: dict, arguments: list[str]) -> bool:
        """Whether the job refused a value this search proposed (``studies.refuse``: no trial, another is proposed)."""
        output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
        if not output_dir:
            return False
        texts = search_space.texts([*search_space.as_overrides(self.params or {}), *arguments])
        searched = {key: text for key, text in texts.items() if key in distributions}
        return studies.refuse(study, trial, read_result(output_dir), searched, self.n_trials, output_dir)

    def _claim(self, study) -> list:
        batch = []
        while len(batch) < self.n_jobs and (trial := studies.claim(study, self.n_trials)) is not None:
            batch.append(trial)
        return batch

    def _launch(self, batch: list, distributions: dict, fixed: dict) -> list[Any]:
        """The batch's jobs, numbered like their trials (runs of consecutive numbers launched together)."""
        overrides = [tuple(search_space.suggest(t, distributions) + search_space.as_overrides(fixed)) for t in batch]
        numbers = [studies.job_number(t) for t in batch]
        returns: list[Any] = []
        try:
            start = 0
            for end in range(1, len(batch) + 1):
                if end == len(batch) or numbers[end] != numbers[end - 1] + 1:
                    returns += self.launcher.launch(overrides[start:end], initial_job_idx=numbers[start])
                    start = end
        except BaseException:  # Ctrl-C, a signal: the unfinished trials run again next time
            for trial in batch[len(returns):]:
                studies.release(study=trial.study, trial=trial, reason="interrupted")
            raise
        return returns

    def _write_best(self, study) -> None:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed:
            log.warning("no trial completed")
            return
        best = study.best_trial
        log.info("best trial %d: %s = %s", best.number, best.params, best.value)
        OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name, "storage": self.storage,
                                         "best_trial": best.number, "best_params": best.params, "best_value": best.value,
                                         "trials": len(completed)}),
                       f"{self.config.hydra.sweep.dir}/optimization_results.yaml")
