"""The race (``python train.py -m experiment=race``): every strategy at its best under one budget, and a
verdict with its uncertainty.

For each cell (a combination of the command line's sweeps, e.g. ``data.fraction=0.01,0.1``) and each
strategy in ``race.strategies``:

1. search: an Optuna study (``<cell>/<strategy>`` in ``race.storage``) over the strategy's space
   (tlexp.search_space), ``race.trials`` trials, each a job run in this process (``train.job``, composed
   by Hydra like any sweep job, into ``<race dir>/<cell>/<strategy>/<trial>``) without testing, pruned per
   epoch on ``val/acc`` by ``race.pruner`` through optuna-integration's Lightning callback;
2. confirm: the best trial by ``val/acc_best`` re-run on ``race.seeds`` seeds and tested
   (``<cell>/<strategy>/confirm_seed<seed>``); ``race.seeds=0`` stops after the search (the pocket race of
   ``tlexp-advise``: ranked on validation alone);
3. verdict: per strategy the test/acc mean and 95 % t interval over the seeds, the paired difference to the
   winner on the same seeds with its interval (scipy.stats.ttest_rel), "tied" where it covers 0, and the
   compute spent; with ``data.target_domain``, test/target_acc beside (reported, never selected on). Printed,
   and written to ``<race dir>/race.json``.

The studies live in the storage (default ``<race dir>/race.db``; ``postgresql://...`` for workers on several
hosts), so the same command continues a race and several workers share one (tlexp.study); a confirmation job
is run by the worker that locks it first. ``race.workers=N`` submits N such workers as one array job (tlexp.race_workers).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from tlexp import search_space, study as studies
from tlexp.errors import ConfigError, InvalidValue
from tlexp.results import RACE_FILE, RunRecord, Status, read_result
from tlexp.shared_files import claimed, write_atomic
from tlexp.verdict import format_race, verdict

log = logging.getLogger("tlexp.race")
OBJECTIVE = "val/acc_best"
"""What a trial is selected by: the best validation accuracy over its epochs (the test split is never seen)."""

TRIAL = ("test=false", "callbacks.layer_movement=null")
"""A search trial is not tested (selection on validation only) and skips the per-stage movement analysis
(seconds per trial; the confirmation runs keep it)."""

RunJob = Callable[[list[str], str, Callable[[DictConfig], Any]], Any]
"""(overrides, job subdirectory, task(cfg)) -> the task's value: runs one job composed by Hydra."""
Compose = Callable[[list[str]], DictConfig]
"""overrides -> the job's config as Hydra composes it (without running it)."""


def cells(arguments: list[str]) -> tuple[list[list[str]], dict[str, str]]:
    """The command line split into (cells: one override list per combination of its sweeps, search-space
    overrides: ``strategy.<key>=<sweep>``, which replace that key's entry in the spaces that have it)."""
    fixed, sweeps, space = [], [], {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override() and key.startswith("strategy."):
            space[key] = override.input_line.split("=", 1)[1]
        elif override.is_sweep_override():
            sweeps.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            fixed.append(override.input_line)
    return [[*fixed, *combination] for combination in itertools.product(*sweeps)], space


def cell_name(cell: list[str], arguments: list[str]) -> str:
    """The cell's directory: its swept values (``data.fraction=0.01``), or ``race`` without sweeps."""
    swept = [o for o in cell if o not in arguments]
    return ",".join(swept) or "race"


class Race:
    """One race over ``config.race`` (the composed config with Hydra's node); ``run_job`` runs one job."""

    def __init__(self, config: DictConfig, arguments: list[str], run_job: RunJob, compose: Compose):
        self.settings = config.race
        self.dir = Path(str(config.hydra.sweep.dir))
        self.arguments = list(arguments)
        self.run_job = run_job
        self.compose = compose
        self.seed = int(config.seed)
        self.storage = self.settings.storage or f"sqlite:///{(self.dir / 'race.db').resolve()}"
        self.strategies = list(self.settings.strategies)
        for key, least in (("trials", 1), ("seeds", 0), ("workers", 1), ("heartbeat", 0)):
            if isinstance(self.settings[key], bool) or not isinstance(self.settings[key], int) or self.settings[key] < least:
                raise ConfigError(f"race.{key}", self.settings[key], f"an integer >= {least}")
        try:
            studies.check_url(str(self.storage))
        except InvalidValue as error:
            raise ConfigError("race.storage", error.value, error.accepted, error.detail) from None
        if not isinstance(self.settings.start_at_defaults, bool):
            raise ConfigError("race.start_at_defaults", self.settings.start_at_defaults, "true or false")
        if not self.strategies:
            raise ConfigError("race.strategies", self.strategies, "a list of one or more strategies")
        self.cells, self.space_overrides = cells(self.arguments)
        try:
            self.spaces = {name: self.space(name) for name in self.strategies}
        except InvalidValue as error:  # a strategy without a search space
            raise ConfigError("race.strategies", error.value, error.accepted) from None
        searched = sorted({key for name in self.strategies for key in search_space.strategy_space(name)})
        for key, value in self.space_overrides.items():  # else it would be dropped, and the race run without it
            if key not in searched:
                raise ConfigError(key, value, f"a sweep of a key the raced strategies search ({', '.join(searched)}); a setting "
                                  "they do not search takes one value per race (strategy.train_stages=[blocks.6])")

    def space_texts(self, strategy: str) -> dict[str, str]:
        """{key: its space as written}: the strategy's, with the command line's for the keys it searches."""
        entries = search_space.strategy_space(strategy)
        return {**entries, **{k: v for k, v in self.space_overrides.items() if k in entries}}

    def space(self, strategy: str) -> dict:
        return search_space.parse(search_space.as_overrides(self.space_texts(strategy)))[0]

    def study(self, cell: str, strategy: str) -> optuna.Study:
        sampler = hydra.utils.instantiate(self.settings.sampler, _partial_=True)
        pruner = hydra.utils.instantiate(self.settings.pruner)
        return studies.open_study(f"{cell}/{strategy}", self.storage, sampler, int(self.settings.sampler_seed), pruner=pruner,
                                  heartbeat=int(self.settings.heartbeat))

    # --- 1. search
    def search(self, cell: list[str], name: str, strategy: str) -> optuna.Study:
        study = self.study(name, strategy)
        if self.settings.start_at_defaults:
            self.enqueue_defaults(study, cell, name, strategy)
        while (trial := studies.claim(study, int(self.settings.trials))) is not None:
            overrides = [*cell, f"strategy={strategy}", *search_space.suggest(trial, self.spaces[strategy]), *TRIAL]
            subdir = f"{name}/{strategy}/{studies.job_number(trial)}"
            trial.set_user_attr("job", subdir)
            try:
                with studies.beating(study, trial):  # on a database server: another host's worker re-queues it if this one dies
                    record = self.run_job(overrides, subdir, lambda cfg: self.trial_task(cfg, trial))
            except BaseException as error:  # noqa: BLE001 - Ctrl-C or a signal: the trial runs again next time
                if not isinstance(error, Exception):
                    studies.release(study, trial, "interrupted")
                    raise
                record = RunRecord(status=Status.FAILED, error=f"{type(error).__name__}: {error}")
            # skip_if_finished: released meanwhile by another worker (its heartbeat lost for the grace period), it runs again
            if record.status == Status.PRUNED:  # told here, not raised through Hydra's job runner: not an error
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            elif record.status == Status.COMPLETED and record.val_acc_best is not None:
                study.tell(trial, float(record.val_acc_best), skip_if_finished=True)
            elif not studies.refuse(study, trial, record, self.space_texts(strategy), int(self.settings.trials), self.dir / subdir):
                log.warning("%s trial %d failed: %s", strategy, trial.number, record.error or f"status {record.status}")
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)  # counted: its settings used the budget
        return study

    def enqueue_defaults(self, study: optuna.Study, cell: list[str], name: str, strategy: str) -> None:
        """Queue the strategy's configured settings (its tuned defaults) as the study's first trial, once, whichever
        worker gets there first; values outside the space are used as they are (Optuna warns)."""
        with claimed(self.dir / f"{name}/{strategy}/defaults.lock") as mine:
            if not mine or study.user_attrs.get("defaults_enqueued"):
                return
            config = self.compose([*cell, f"strategy={strategy}"])
            study.enqueue_trial({key: OmegaConf.select(config, key) for key in self.spaces[strategy]},
                                user_attrs={"defaults": True})
            study.set_user_attr("defaults_enqueued", True)

    def trial_task(self, cfg: DictConfig, trial: optuna.Trial) -> RunRecord:
        """One search trial as a job, pruned per epoch by the study's pruner; its record (``search`` tells the study)."""
        from optuna_integration import PyTorchLightningPruningCallback

        from tlexp import train

        record = train.job(cfg, callbacks=[PyTorchLightningPruningCallback(trial, monitor=str(self.settings.metric))])
        trial.set_user_attr("train_size", record.train_size)  # the compute spent: images x epochs
        return record

    # --- 2. confirm
    def wait(self, study: optuna.Study) -> bool:
        """Until no trial of the study runs (in another worker): the best trial is final only then. True where a
        killed worker's trial was queued again meanwhile (within the budget): this worker runs it (``search``)."""
        while studies.reap(study) or study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.info("waiting for the trials other workers run in %s", study.study_name)
            time.sleep(1 if studies.heartbeat_of(study) else 5)
        return (bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
                and studies.used(study) < int(self.settings.trials))

    def confirmations(self, name: str, strategy: str) -> dict[int, str]:
        """seed -> the confirmation job's subdirectory."""
        return {seed: f"{name}/{strategy}/confirm_seed{seed}" for seed in (self.seed + k for k in range(int(self.settings.seeds)))}

    def confirm(self, cell: list[str], name: str, strategy: str, best: optuna.trial.FrozenTrial) -> None:
        jobs = self.confirmations(name, strategy)
        for wait in (False, True):  # first the free jobs, then those another worker held (done by now, or ours)
            for seed, subdir in jobs.items():
                while not self.finished(subdir):
                    with claimed(self.dir / f"{subdir}.lock") as mine:
                        if mine:  # free, or freed by a worker that died running it: run (resume) it once here
                            overrides = [*cell, f"strategy={strategy}", *search_space.as_overrides(best.params), f"seed={seed}"]
                            self.run_job(overrides, subdir, self.confirm_task)
                            break
                    if not wait:
                        break
                    time.sleep(2)

    @staticmethod
    def confirm_task(cfg: DictConfig) -> None:
        from tlexp import train

        train.job(cfg)

    def finished(self, subdir: str) -> bool:
        record = read_result(self.dir / subdir)
        return bool(record) and record.status in (Status.COMPLETED, Status.FAILED, Status.DIVERGED)

    # --- the whole race
    def run(self) -> dict:
        for cell in self.cells:
            name = cell_name(cell, self.arguments)
            searched = {strategy: self.search(cell, name, strategy) for strategy in self.strategies}
            for strategy, study in searched.items():
                while self.wait(study):
                    self.search(cell, name, strategy)
                if best := best_trial(study):
                    self.confirm(cell, name, strategy, best)
        result = self.result()
        write_atomic(self.dir / RACE_FILE, json.dumps(result, indent=2, default=str))  # every worker writes the same
        print("\n" + format_race(result), flush=True)
        return result

    def result(self) -> dict:
        """The verdict from the storage (every worker's trials) and the confirmations' result.json, whichever worker ran
        them: the same for every worker once the race is done, and for anyone who reads it again later."""
        verdicts = []
        for cell in self.cells:
            name = cell_name(cell, self.arguments)
            entries = []
            for strategy in self.strategies:
                study = self.study(name, strategy)
                best = best_trial(study)
                runs = [self.dir / subdir for subdir in self.confirmations(name, strategy).values()] if best else []
                entries.append(entry(strategy, study, best, runs))
            verdicts.append({"cell": name, "overrides": cell, "strategies": verdict(entries)})
        settings = OmegaConf.to_container(self.settings, resolve=True)
        settings["storage"] = settings["storage"] and studies.shown(str(settings["storage"]))  # no password in race.json
        return {"race_dir": str(self.dir), "storage": studies.shown(str(self.storage)), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "settings": settings, "cells": verdicts}


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the best val/acc_best; None before any completed."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(completed, key=lambda t: t.value) if completed else None


def spent(study: optuna.Study) -> dict:
    """The search's compute: counted trials, how many pruned, epochs, training images x epochs, seconds."""
    trials = [t for t in study.get_trials(deepcopy=False) if studies.counted(t)]
    epochs = [len(t.intermediate_values) for t in trials]
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete]
    return {"trials": len(trials), "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "epochs": sum(epochs),
            "image_epochs": sum(n * (t.user_attrs.get("train_size") or 0) for n, t in zip(epochs, trials)),
            "seconds": round(sum(seconds), 2)}


def history(study: optuna.Study) -> list[dict]:
    """Every counted trial of the search, for the report's search figure: its state, val/acc per epoch, and
    when it started and ended in seconds after the study's first trial started."""
    trials = [t for t in study.get_trials(deepcopy=False) if studies.counted(t) and t.datetime_start]
    if not trials:
        return []
    origin = min(t.datetime_start for t in trials)
    return [{"number": t.number, "state": t.state.name.lower(),
             "values": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
             "start": round((t.datetime_start - origin).total_seconds(), 2),
             "end": round((t.datetime_complete - origin).total_seconds(), 2) if t.datetime_complete else None}
            for t in trials]


def entry(strategy: str, study: optuna.Study, best: optuna.trial.FrozenTrial | None, runs: list[Path]) -> dict:
    records = [(run, read_result(run)) for run in runs]
    done = [r for _, r in records if r and r.status == Status.COMPLETED and r.test_acc is not None]
    scores = {r.seed: r.test_acc for r in done}
    targets = {r.seed: r.target_test_acc for r in done if r.target_test_acc is not None}  # data.target_domain's split
    return {"strategy": strategy, "best_trial": best.number if best else None, "best_params": best.params if best else None,
            "val_acc_best": best.value if best else None, "test_acc": scores, "target_acc": targets,
            "search": spent(study), "trials": history(study),
            "confirm": {"runs": len(records), "epochs": sum((r.max_epochs or 0) if r else 0 for _, r in records),
                        "seconds": round(sum((r.wall_seconds or 0) if r else 0 for _, r in records), 2),
                        "failed": [str(run) for run, r in records if not (r and r.seed in scores)]}}
