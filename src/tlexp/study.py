"""An Optuna study that several processes share and a re-run continues: its storage, a sampler that
proposes each trial once, and a trial budget counted the same way by every worker.

Used by the Hydra sweeper (``hydra_plugins.tlexp_sweepers``) and the race (``tlexp.race``).
A trial's life: ``claim`` asks for it within the budget and marks it as this process's; it ends
COMPLETE, PRUNED or FAIL (``tell``), or, stopped by a signal, is ``release``d: marked FAIL and
``rerun`` (not counted) with its parameters queued again. A trial whose process was killed without a
word stays RUNNING; the next ``claim`` on the same host sees its process gone and releases it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlexp import liveness

RERUN = "rerun"
"""user attr of a FAIL trial that does not count: interrupted (queued again) or over the budget."""
RERUN_OF = "rerun_of"
"""user attr of a queued re-run: the number of the trial it repeats, whose job directory it continues."""
WORKER = "worker"
"""user attr: ``host:pid`` of the process running the trial."""


def storage(url: str | None):
    """An Optuna storage from a URL: ``sqlite:///...`` or any RDB URL, a journal file (``*.log``,
    ``*.journal``, or ``journal:///path``; safe on network file systems), or None (in memory)."""
    if not url:
        return None
    url = str(url)
    if url.startswith("journal://") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return rdb_storage(url)


def rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, tried again when another worker is creating the same new database at the same moment
    (both insert its schema's version row: one of them gets an IntegrityError, or SQLite's "database is locked")."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler seeded anew for every trial from ``seed`` + the trial's number.

    An Optuna sampler seeded once draws the same sequence in every process: two workers sharing a study,
    or the same command run again to continue one, would propose the trials already run. A trial's number
    is unique in the study and a sampler such as TPE reads the history from the storage, so one history
    and one trial number always give the same proposal, in whichever process.
    """

    def __init__(self, make: Callable[..., optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed = make, int(seed)
        self._current: tuple[int, optuna.samplers.BaseSampler] | None = None

    def _of(self, trial) -> optuna.samplers.BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._make(seed=self._seed + trial.number))
        return self._current[1]

    def infer_relative_search_space(self, study, trial):
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._of(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._of(trial).after_trial(study, trial, state, values)


def open_study(name: str, url: str | None, make_sampler: Callable[..., optuna.samplers.BaseSampler], seed: int,
               pruner: optuna.pruners.BasePruner | None = None, direction: str = "maximize") -> optuna.Study:
    """The study ``name`` in the storage at ``url``, created on first use."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage(url), sampler=PerTrialSeed(make_sampler, seed),
                               pruner=pruner, direction=direction, load_if_exists=True)


def counted(trial: FrozenTrial) -> bool:
    """Whether the trial uses the budget: run or running, not interrupted, not over the budget."""
    if trial.state == TrialState.WAITING:
        return False
    return not (trial.state == TrialState.FAIL and trial.user_attrs.get(RERUN))


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(worker: str | None) -> bool:
    """Whether ``host:pid`` names a process of this host that no longer runs."""
    host, _, pid = (worker or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not liveness.same_process_alive(int(pid))


def release(study: optuna.Study, trial: FrozenTrial | optuna.Trial, reason: str) -> None:
    """Mark a trial that did not finish as an uncounted FAIL and queue its parameters again."""
    study._storage.set_trial_user_attr(trial._trial_id, RERUN, reason)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    if reason != "over budget":
        study.enqueue_trial(trial.params, user_attrs={RERUN_OF: job_number(trial)})


def reap(study: optuna.Study) -> int:
    """Release the RUNNING trials whose process on this host is gone; how many."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _gone(t.user_attrs.get(WORKER))]
    for trial in stale:
        release(study, trial, "its process was killed")
    return len(stale)


def job_number(trial: FrozenTrial | optuna.Trial) -> int:
    """The trial's job directory number: its own, or for a re-run the first attempt's (which it resumes)."""
    return int(trial.user_attrs.get(RERUN_OF, trial.number))


def used(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def claim(study: optuna.Study, budget: int) -> optuna.Trial | None:
    """The next trial of this process, or None once ``budget`` trials are done or running.

    Two workers may ask at the same moment; the one whose trial numbers past the budget gives it back."""
    reap(study)
    if used(study) >= budget:
        return None
    trial = study.ask()
    trial.set_user_attr(WORKER, _worker())
    before = sum(counted(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
    if before >= budget:
        release(study, trial, "over budget")
        return None
    return trial
