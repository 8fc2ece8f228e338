"""An Optuna study that several processes share and a re-run continues: its storage, a sampler that
proposes each trial once, and a trial budget counted the same way by every worker.

Used by the Hydra sweeper (``hydra_plugins.tlexp_sweepers``) and the race (``tlexp.race``).
A trial's life: ``claim`` asks for it within the budget and marks it as this process's; it ends
COMPLETE, PRUNED or FAIL (``tell``), or, stopped by a signal, is ``release``d: marked FAIL and
``rerun`` (not counted) with its parameters queued again. A trial whose process was killed without a
word stays RUNNING; the next ``claim`` on the same host sees its process gone and releases it. On a
database server shared by several hosts (``postgresql://...``), a storage opened with a ``heartbeat``
records every running trial's heartbeat (``beating``), and any worker's ``claim`` releases the trials
whose heartbeat stopped (Optuna's heartbeat, ``RDBStorage(heartbeat_interval=...)``), whatever host ran them.
A release is one atomic RUNNING -> FAIL transition: of two workers releasing the same trial, one queues it again.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlexp import liveness
from tlexp.errors import ConfigError, InvalidValue

log = logging.getLogger(__name__)

RERUN = "rerun"
"""user attr of a FAIL trial that does not count: interrupted (queued again), over the budget or refused."""
OVER_BUDGET = "over budget"
REFUSED = "refused"
"""The reason of a trial whose sampled settings the config rules refused (``tlexp.race``): outside what the strategy
accepts, so not a trial of it, and not queued again."""
RERUN_OF = "rerun_of"
"""user attr of a queued re-run: the number of the trial it repeats, whose job directory it continues."""
WORKER = "worker"
"""user attr: ``host:pid`` of the process running the trial."""


STORAGES = ("sqlite:///<path>, postgresql://<user>[:<password>]@<host>[:<port>]/<database> (pip install 'tlexp[postgres]'), "
            "another SQLAlchemy database URL (mysql+pymysql://...), or a journal file <path>.log / journal:///<path>")
"""What ``storage`` accepts, for error messages."""


class StorageUnreachable(RuntimeError):
    """The database of an RDB storage could not be opened, after the retries."""


def is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".log", ".journal"))


def shown(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a database URL: nothing to hide
        return url


def check_url(url: str) -> str:
    """The database URL with its driver (``postgresql://`` -> ``postgresql+psycopg2://`` where SQLAlchemy's default
    PostgreSQL driver is not installed but psycopg2 is); raises ``InvalidValue("storage", ...)`` unless ``url`` is a
    storage URL whose driver is installed. Nothing is opened or written."""
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise InvalidValue("storage", shown(url), STORAGES, str(error).splitlines()[0]) from None
    try:
        dialect.import_dbapi()
        return url
    except ImportError as error:
        missing = error
    if parsed.drivername == "postgresql":  # no driver named: whichever of the two is installed
        for driver in ("psycopg2", "psycopg"):
            other = parsed.set(drivername=f"postgresql+{driver}")
            try:
                other.get_dialect().import_dbapi()
            except ImportError:
                continue
            return other.render_as_string(hide_password=False)
    hint = " (pip install 'tlexp[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
    raise InvalidValue("storage", shown(url), STORAGES, f"its driver is not installed{hint}: {missing}") from None


def storage(url: str | None, heartbeat: int | None = None):
    """An Optuna storage from a URL: ``sqlite:///...`` or any RDB URL, a journal file (``*.log``,
    ``*.journal``, or ``journal:///path``; safe on network file systems), or None (in memory).

    ``heartbeat`` (seconds) on a database server (not SQLite, a file of one host): running trials record a
    heartbeat that often (``beating``) and a trial silent for twice as long is released by the next ``claim``."""
    if not url:
        return None
    url = str(url)
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:"):
        heartbeat = None
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return rdb_storage(check_url(url), heartbeat=heartbeat or None)


RETRY_WAIT = 0.5
"""Seconds ``rdb_storage`` waits before its second attempt, and more by as much before each later one (5 attempts: 5 s
in all, time for a database server that is starting to answer)."""


def rdb_storage(url: str, attempts: int = 5, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, tried again when another worker is creating the same new database at the same moment
    (both insert its schema's version row: one of them gets an IntegrityError, or SQLite's "database is locked")
    or the database server does not answer yet; ``StorageUnreachable`` after the last attempt."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    start = time.monotonic()
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9: said once, in the docs
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat)
        except (IntegrityError, OperationalError) as error:
            if attempt == attempts - 1:
                reason = " ".join(str(getattr(error, "orig", None) or error).split())
                raise StorageUnreachable(f"cannot open the Optuna storage {shown(url)} ({attempts} attempts in "
                                         f"{time.monotonic() - start:.0f} s): {reason}") from error
            time.sleep(RETRY_WAIT * (attempt + 1))


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
               pruner: optuna.pruners.BasePruner | None = None, direction: str = "maximize",
               heartbeat: int | None = None) -> optuna.Study:
    """The study ``name`` in the storage at ``url``, created on first use (``heartbeat``: see ``storage``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage(url, heartbeat), sampler=PerTrialSeed(make_sampler, seed),
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


def release(study: optuna.Study, trial: FrozenTrial | optuna.Trial, reason: str) -> bool:
    """Mark a trial that did not finish as an uncounted FAIL and queue its parameters again; False where it had
    finished meanwhile or another worker released it first (one RUNNING -> FAIL transition, row-locked on an RDB)."""
    store = study._storage
    try:
        store.set_trial_user_attr(trial._trial_id, RERUN, reason)  # first: never a counted FAIL in between
        if not store.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if reason not in (OVER_BUDGET, REFUSED):
        study.enqueue_trial(trial.params, user_attrs={RERUN_OF: job_number(trial)})
    return True


REFUSALS_PER_TRIAL = 5
"""Proposals refused per trial of the budget before a search says its space is wrong for this run."""


def refuse(study: optuna.Study, trial: optuna.Trial, record, searched: Mapping[str, str], budget: int, job_dir) -> bool:
    """Whether the job refused a value this search proposed (``record.refused``, a key of ``searched``: {key: its
    space as written}). Such a value (a range that depends on the run: lpft's ``probe_epochs`` below
    ``trainer.max_epochs``, partial's ``frozen_depth`` up to the backbone's stages) lies outside what can run, so the
    proposal is no trial: uncounted, not queued again, its job directory removed, and the sampler proposes another. A
    space that keeps yielding such values is one error naming the key, its space and what is accepted."""
    refused = record.refused if record else None
    if not (refused and refused["key"] in searched):
        return False
    log.warning("trial %d: %s=%s is refused (accepted: %s): not counted, another is proposed", trial.number,
                refused["key"], refused["value"], refused["accepted"])
    shutil.rmtree(job_dir, ignore_errors=True)  # not a trial: no job directory that reads as one
    release(study, trial, REFUSED)
    refusals = sum(t.user_attrs.get(RERUN) == REFUSED for t in study.get_trials(deepcopy=False))
    if refusals >= REFUSALS_PER_TRIAL * budget:
        raise ConfigError(refused["key"], searched[refused["key"]], refused["accepted"],
                          f"{refusals} proposals were refused: narrow the search space")
    return True


def heartbeat_of(study: optuna.Study) -> int | None:
    """The storage's heartbeat interval in seconds, or None where it records none."""
    from optuna.storages._heartbeat import BaseHeartbeat

    store = study._storage
    return store.get_heartbeat_interval() if isinstance(store, BaseHeartbeat) else None


def reap(study: optuna.Study) -> int:
    """Release the RUNNING trials whose process on this host is gone and, on a storage with a heartbeat, those
    whose heartbeat stopped (on any host); how many this process released."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = {t._trial_id for t in running if _gone(t.user_attrs.get(WORKER))}
    if heartbeat_of(study):  # as optuna.storages.fail_stale_trials finds them, released the race's way
        stale |= set(study._storage._get_stale_trial_ids(study._study_id))
    return sum(release(study, t, "its process was killed") for t in running if t._trial_id in stale)


@contextmanager
def beating(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """While the trial runs, record its heartbeat every interval of the storage (nothing without one)."""
    interval = heartbeat_of(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                study._storage.record_heartbeat(trial._trial_id)
            except Exception:  # noqa: BLE001 - the database away for a moment: the next beat tries again
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
        release(study, trial, OVER_BUDGET)
        return None
    return trial
