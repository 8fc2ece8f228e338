"""Shared fixtures: the composed config, train.py as a subprocess, the task and the entry point in-process, a teacher
run, one strategy sweep.

Everything runs on CPU with ``model=tiny data=synthetic`` (a ~0.1 M parameter timm EfficientNet on
small generated images), so a train.py subprocess costs ~10-20 s, mostly imports.

The suite runs on pytest-xdist workers (``-n auto --dist loadgroup`` in pyproject.toml; ``-n 0``: serially). Each
worker, and every process it starts, gets its share of the cores as torch threads (``OMP_NUM_THREADS``: several
threads per process on a shared CPU make these tiny runs many times slower); the session fixtures that train are
computed once for all workers (``once_per_suite``), and the tests that read ``strategy_sweep`` run on one worker
(``xdist_group``), so that no worker waits for another's sweep.
"""

from __future__ import annotations

import _posixsubprocess
import atexit
import contextlib
import copy
import csv
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from tlexp.strategies import NAMES as STRATEGIES

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
PYTHON = sys.executable

TINY = ("model=tiny", "data=synthetic", "logger=csv", "trainer.max_epochs=2", "trainer.enable_progress_bar=false")
"""The overrides every test run starts from; a test's own overrides of the same key replace them."""

SWEEP_FRACTION = 0.5

NO_REPORT = "hydra.callbacks.sweep_summary.report=false"
"""For a sweep whose test reads no report: the report a sweep ends with (report.html and its figures, 5-10 s of CPU)
cannot change the sweep's outcome (SweepSummary catches and logs a report's errors) nor its jobs, its
sweep_summary.json or its summary line, so leaving it out changes nothing such a test reads. The tests of the
report (test_sweep.py, test_divergence.py, test_report.py, test_killed.py, ...) keep it."""

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""This pytest-xdist worker's name (gw0, gw1, ...); None in a serial run."""
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))

FAST_TIER = "not slow"
"""``make test-fast``'s ``-m``: the tests that run in the pytest process and train no study (``in_process_only``)."""

ONE_WORKER_FIXTURES = ("strategy_sweep", "ddp_multirun", "postgres", "cache_workers", "benchmark_results")
"""Session and module fixtures whose tests form one xdist group: one worker computes the fixture and runs them all,
rather than each worker computing its own (a sweep, a database server, spawned processes importing torch, the
benchmark sections); a test that asks for one through ``request.getfixturevalue`` marks itself
``xdist_group(<fixture name>)``."""


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than cores (``--maxprocesses`` caps it): much of the suite's time is spent
    waiting on child processes (submitit's result wait, a silent W&B server, PostgreSQL and Ray starting), which a
    spare worker fills (2 cores: 6 min 46 s with 3 workers against 7 min 9 s with 2, 2026-12-07). The fast tier
    (``-m "not slow"``) starts no such process (``in_process_only``): one worker per core, as a spare one would only
    add its start-up (about 12 s of CPU importing torch, Lightning and timm)."""
    cores = len(os.sched_getaffinity(0))
    return cores if config.option.markexpr == FAST_TIER else cores + 1


def pytest_configure(config):
    """Under xdist, each worker and the processes it starts (``OMP_NUM_THREADS``) take their share of the cores
    as torch threads, unless OMP_NUM_THREADS is set already. torch is imported here, in a process that runs tests,
    not at this module's import: the xdist controller runs none and starts its workers without it (11 s sooner),
    and a test is not charged with the programs torch's import starts (``ldconfig``, see ``in_process_only``)."""
    if WORKER is None and config.getoption("numprocesses", None):
        return  # the xdist controller
    import torch

    if WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // WORKERS)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    if WORKER is not None and getattr(config.option, "loadgroup", False):
        config.pluginmanager.register(GroupSuffix(), "tlexp-xdist-group-suffix")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """An xdist worker, its results sent (``workerfinished``), runs its exit handlers and leaves without tearing the
    interpreter down: freeing what torch, Lightning and the tests left took 2-4 s a worker, which the controller
    waited for before it printed the summary. pytest's cleanups after this hook (capture, the unraisable-exception
    check) are skipped with it: their results could no longer reach the controller."""
    if WORKER is not None:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Mark the one-worker groups, and put the modules with slow tests first: xdist hands out the groups (largest
    first), then the single tests in collection order, so a minute-long subprocess test collected last would run
    alone at the end while the other workers idle. Whole modules move, so a module's fixtures are built once."""
    for item in items:
        for name in ONE_WORKER_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)  # stable: otherwise collection order


class GroupSuffix:
    """--dist=loadgroup learns a test's group from its node id, ``<id>@<group>``, which xdist's worker writes to
    ``item._nodeid``; pytest 9.2 keeps node ids in ``item._id`` (a NodeId) instead, so xdist 3.8's suffix is lost and
    the groups silently spread over all workers (pytest-dev/pytest-xdist#1386). After xdist's hook, this writes the
    suffix where this pytest reads it, where it is missing."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        for item in items:
            groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                             for mark in item.iter_markers("xdist_group")})
            suffix = f"@{'_'.join(groups)}"
            if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
                from _pytest.nodeid import NodeId

                item._id = NodeId.parse(item.nodeid + suffix)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*overrides: str, base=TINY) -> list[str]:
    """``base`` then ``overrides``, where an override replaces a base override of the same key
    (Hydra refuses two values for one config group, e.g. ``model=tiny model=timm``)."""
    keys = {override_key(o) for o in overrides}
    return [o for o in base if override_key(o) not in keys] + list(overrides)


def compose_config(*overrides: str, base=TINY, config_name="config"):
    """The real config from conf/ (``config_name``: train.py's, or ``advise``), composed with ``base`` + ``overrides``
    (no Hydra runtime)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return compose(config_name=config_name, overrides=merge_overrides(*overrides, base=base))


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_not_ignored():
    """A suite started in the background (``make test &``) inherits SIGINT ignored, and so would the train.py
    it starts; the tests that press Ctrl-C need it delivered, as it is in a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def base_cfg():
    return compose_config()


@pytest.fixture
def cfg(base_cfg, tmp_path):
    """A private copy of the tiny/synthetic config whose run directory is ``tmp_path``."""
    config = copy.deepcopy(base_cfg)
    config.paths.output_dir = str(tmp_path)
    config.paths.data_dir = str(tmp_path / "data")
    return config


def subprocess_env(**changes) -> dict:
    """The test environment for a child: W&B offline; a value of None removes a variable."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    # MASTER_PORT: a DDP child picks a free port of its own (Lightning), so that DDP runs on two workers never share one
    for inherited in ("PYTEST_CURRENT_TEST", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "MASTER_PORT", "STANDALONE_PORT"):
        env.pop(inherited, None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


START_TOGETHER = """
import os, runpy, sys, time
from pathlib import Path
import tlexp.train  # the imports (seconds), before the start line
ready, count = Path(sys.argv.pop(1)), int(sys.argv.pop(1))
(ready / str(os.getpid())).touch()
deadline = time.monotonic() + 300
while len(list(ready.iterdir())) < count and time.monotonic() < deadline:
    time.sleep(0.05)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""
"""``python -c START_TOGETHER <dir> <count> <train.py's arguments>``: train.py, run once <count> processes started so
have imported tlexp.train and written their pids into <dir> (race workers that start together: test_race.py,
test_race_postgres.py)."""


QUICK_PROGRAMS = frozenset({"true", "make"})
"""Programs a fast test may start: they take milliseconds (a pid that has exited, the Makefile's logic)."""

FAST_FITS = 4
"""Models a fast test may train (``Trainer.fit``), none of them as a sweep's job: a run and its interrupted and resumed
copies, or a few settings side by side. A study (a sweep, a search, a race, a benchmark section) is slow."""

FITS = pytest.StashKey[list]()
"""``[models trained]`` by the test, its setup and its call together."""


@contextlib.contextmanager
def in_process_only(item):
    """In a test not marked slow, starting a program other than ``QUICK_PROGRAMS`` (train.py or any Python, a console
    script, a spawned worker, a database server, a browser) fails the test: each costs seconds of start-up, and
    ``make test-fast`` runs in the pytest process. Python starts programs through ``_posixsubprocess.fork_exec``
    (``subprocess`` keeps its own reference; asyncio's subprocesses go through ``subprocess``, multiprocessing's spawn
    and forkserver through the module) or ``os.posix_spawn``; a plain ``os.fork`` (a DataLoader's workers) starts no
    program and is allowed. So does training more than ``FAST_FITS`` models, or any as a sweep's job (a study)."""
    if item.get_closest_marker("slow"):
        yield
        return

    def refuse(what: str):
        pytest.fail(f"{item.nodeid} {what} but is not marked slow: make test-fast starts no program but "
                    f"{', '.join(sorted(QUICK_PROGRAMS))} and trains at most {FAST_FITS} models, none as a sweep's job",
                    pytrace=False)

    def guarded(start, program_of):
        def start_if_quick(*args, **kwargs):
            program = os.path.basename(os.fsdecode(program_of(args)))
            if program not in QUICK_PROGRAMS:
                refuse(f"starts {program}")
            return start(*args, **kwargs)
        return start_if_quick

    from hydra.types import RunMode
    from lightning.pytorch import Trainer

    fits = item.stash.setdefault(FITS, [0])  # a fixture's training counts

    def counted_fit(trainer, *args, _fit=Trainer.fit, **kwargs):
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            refuse(f"trains a sweep's job ({HydraConfig.get().job.override_dirname or 'no overrides'})")
        fits[0] += 1
        if fits[0] > FAST_FITS:
            refuse(f"trains {fits[0]} models")
        return _fit(trainer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in ((_posixsubprocess, "fork_exec"), (subprocess, "_fork_exec")):  # (argv, executables, ...)
            patch.setattr(owner, name, guarded(getattr(owner, name), lambda args: args[0][0]))
        for name in ("posix_spawn", "posix_spawnp"):  # (path, argv, env, ...)
            patch.setattr(os, name, guarded(getattr(os, name), lambda args: args[0]))
        patch.setattr(Trainer, "fit", counted_fit)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with in_process_only(item):  # a session fixture built for a fast test counts (a database server, a teacher run)
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with in_process_only(item):
        return (yield)


_RUNNING: dict = {}
"""The test now running (``running_test``), so that ``run_train`` can refuse one that ``make test-fast`` would run."""


@pytest.fixture(autouse=True)
def running_test(request):
    _RUNNING["test"] = request.node
    yield
    _RUNNING.pop("test", None)


def run_train(tmp_path, *overrides: str, check: bool = True, multirun: bool = False, env: dict | None = None,
              base=TINY, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python train.py <TINY> <overrides> hydra.run.dir=<tmp_path>`` from the repository root.

    ``paths.data_dir`` defaults to ``<tmp_path>/data`` so runs write nothing into the checkout.

    With ``multirun`` the jobs go to ``hydra.sweep.dir=<tmp_path>``. ``env`` changes the child's
    environment (None removes a variable). stdout and stderr are captured together as text.
    """
    test = _RUNNING.get("test")
    if test is not None and test.get_closest_marker("slow") is None:
        pytest.fail(f"{test.nodeid} starts train.py but is not marked slow: make test-fast runs no train.py subprocess")
    tmp_path = Path(tmp_path)
    args = merge_overrides(*overrides, base=(*base, f"paths.data_dir={tmp_path / 'data'}"))
    args.append(f"hydra.sweep.dir={tmp_path}" if multirun else f"hydra.run.dir={tmp_path}")
    command = [PYTHON, "train.py", *(["-m"] if multirun else []), *args]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(**(env or {})), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"train.py {' '.join(args)} exited {result.returncode}:\n{result.stdout[-6000:]}")
    return result


def run_config(run_dir, *overrides: str, base=TINY, config_name="config"):
    """``compose_config`` for a run in ``run_dir`` (``paths.output_dir``), its data under ``run_dir/data``."""
    config = compose_config(*overrides, base=(*base, f"paths.data_dir={Path(run_dir) / 'data'}"), config_name=config_name)
    config.paths.output_dir = str(run_dir)
    return config


@pytest.fixture
def restored_environ():
    """``seed_everything`` sets PL_GLOBAL_SEED and PL_SEED_WORKERS, which later runs in this process would inherit."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def run_task(restored_environ):
    """The task function, ``tlexp.train.train``, on a composed config: ``call(run_dir, *overrides, base=TINY,
    **keywords) -> the run's record fields (with ``metrics``)``; whatever stops the run is raised."""
    from tlexp.train import train

    def call(run_dir, *overrides: str, base=TINY, **keywords) -> dict:
        return train(run_config(run_dir, *overrides, base=base), **keywords)

    return call


@pytest.fixture
def main_direct(restored_environ):
    """``tlexp.train.main`` called with a composed config (Hydra's decorator hands it straight to the function: no
    argv, no Hydra runtime, a single run): the job, ``result.json`` and the exit code, without the global state of
    ``main_inprocess``. Returns ``call(run_dir, *overrides, base=TINY) -> (exit_code, stdout, stderr and the log)``."""
    from tlexp.train import main

    def call(run_dir, *overrides: str, base=TINY) -> tuple[int, str]:
        config = run_config(run_dir, *overrides, base=base)
        output = io.StringIO()
        console = logging.StreamHandler(output)  # as Hydra's console logging
        root = logging.getLogger()
        saved_level = root.level
        root.addHandler(console)
        root.setLevel(logging.INFO)
        code = 0
        try:
            with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
                main(config)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            root.removeHandler(console)
            root.setLevel(saved_level)
        return code, output.getvalue()

    return call


def call_main(monkeypatch: pytest.MonkeyPatch, run_dir, *overrides: str, base=TINY) -> tuple[int, str]:
    """``tlexp.train.main`` (the Hydra entry point of train.py) in this process with argv set through ``monkeypatch``,
    for what needs Hydra's runtime (a sweeper, the run's ``.hydra/`` files): ``(exit_code, stdout and stderr)``.
    Hydra's logging setup and global state and the environment are undone afterwards."""
    from tlexp.train import main

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_environ = dict(os.environ)  # seed_everything sets PL_GLOBAL_SEED, which children would inherit
    args = merge_overrides(*overrides, base=(*base, f"paths.data_dir={Path(run_dir) / 'data'}"))
    monkeypatch.setattr(sys, "argv", ["train.py", *args, f"hydra.run.dir={run_dir}"])
    output = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        os.environ.clear()
        os.environ.update(saved_environ)
    return code, output.getvalue()


@pytest.fixture
def main_inprocess(monkeypatch):
    """Call ``tlexp.train.main`` (the Hydra entry point of train.py) in this process with argv (``call_main``): for
    the sweepers (``-m``: the race, Optuna). Returns ``call(run_dir, *overrides) -> (exit_code, stdout and stderr)``.
    A single run needs no Hydra runtime: ``run_task`` (the task) or ``main_direct`` (the job and its exit code)."""

    def call(run_dir, *overrides: str, base=TINY):
        return call_main(monkeypatch, run_dir, *overrides, base=base)

    return call


# --- run-directory helpers ----------------------------------------------------------------------------

def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir) -> list[dict]:
    """metrics.csv of a run as a list of rows (empty cells dropped, values as floats)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


TIME_COLUMNS = ("time/epoch_s", "time/elapsed_s")
"""The metrics.csv columns that measure time: they differ between runs that train the same."""


def timeless(rows: list[dict]) -> list[dict]:
    """metrics.csv rows without the ``TIME_COLUMNS``: what two runs that train the same have in common."""
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in rows]


def metric_columns(run_dir) -> list[str]:
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return next(csv.reader(handle))


def once_per_suite(tmp_path_factory, name: str, compute):
    """``compute(directory)`` once for the whole test session, its result as JSON holds it (lists, dicts, strings).

    In a serial run, in a new temporary directory. Under pytest-xdist, the first worker to ask computes it in a
    directory all workers share (beside their own base temporary directories) while the others wait on a file lock,
    then read its result; a computation that raised is tried again by the next worker that asks."""
    if WORKER is None:
        return json.loads(json.dumps(compute(tmp_path_factory.mktemp(name))))
    shared = tmp_path_factory.getbasetemp().parent
    record = shared / f"{name}.json"
    with FileLock(f"{record}.lock"):
        if not record.is_file():
            directory = shared / name
            shutil.rmtree(directory, ignore_errors=True)  # what a computation that raised left
            directory.mkdir()
            record.write_text(json.dumps(compute(directory)))
        return json.loads(record.read_text())


def _teacher(run_dir: Path) -> str:
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, output = call_main(monkeypatch, run_dir, "strategy=full", "trainer.max_epochs=1")
    if code != 0:
        pytest.fail(f"train.py strategy=full trainer.max_epochs=1 (in-process) exited {code}:\n{output[-6000:]}")
    return str(run_dir)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """A finished tiny run (1 epoch of strategy=full on synthetic data): a teacher for strategy=distill.
    Trained in this process (``call_main``), so the tests that only need a teacher start no train.py.
    Read-only: every worker's tests share it."""
    return Path(once_per_suite(tmp_path_factory, "teacher", _teacher))


def _strategy_sweep(sweep_dir: Path) -> dict:
    common = (f"data.fraction={SWEEP_FRACTION}", "trainer.log_every_n_steps=1")
    alone = {"distill": None, "dann": "data.target_domain=invert"}  # need a teacher run, a target domain
    swept = [name for name in STRATEGIES if name not in alone]
    result = run_train(sweep_dir, f"strategy={','.join(swept)}", *common, "hydra.sweep.subdir=${hydra.job.num}", NO_REPORT,
                       multirun=True, check=False)
    runs = {read_json(path)["strategy"]: path.parent for path in sweep_dir.glob("*/result.json")}
    alone["distill"] = f"strategy.teacher={runs['full']}" if "full" in runs else "strategy.teacher=none"
    for name, setting in alone.items():  # in this process: train.py's entry point, without another process's imports
        if result.returncode == 0:
            with pytest.MonkeyPatch.context() as monkeypatch:
                code, output = call_main(monkeypatch, sweep_dir / name, f"strategy={name}", setting, *common)
            result = subprocess.CompletedProcess([f"main(strategy={name})"], code, output)
    runs.update({read_json(path)["strategy"]: path.parent for path in sweep_dir.glob("*/result.json")})
    return {"args": result.args, "returncode": result.returncode, "stdout": result.stdout,
            "runs": {name: str(path) for name, path in runs.items()}}


@pytest.fixture(scope="session")
def strategy_sweep(tmp_path_factory):
    """Every strategy through one ``train.py -m`` (one process, so the imports are paid once):
    tiny/synthetic, 2 epochs, ``data.fraction=0.5``, seed 42, lr logged every step; then ``distill``,
    whose teacher is that sweep's ``full`` run, and ``dann`` with ``data.target_domain=invert``, each through
    train.py's entry point in this process (``call_main``).

    Returns (CompletedProcess of the sweep, or of distill where the sweep passed, {strategy: run dir}). The run
    directories are read-only: tests that read one leave it as the sweep wrote it (a test that trains or writes
    copies it first), so that the tests reading the sweep may run in any order.
    """
    done = once_per_suite(tmp_path_factory, "strategy_sweep", _strategy_sweep)
    result = subprocess.CompletedProcess(done["args"], done["returncode"], done["stdout"])
    return result, {name: Path(path) for name, path in done["runs"].items()}


DDP_STRATEGIES = ("lora", "dann", "lpft", "ssf", "bss", "bitfit", "surgical")
"""The strategies the DDP multirun trains: parts of their own (adapters, scales and shifts, a domain classifier and
target batches, a batch-spectral penalty), a switch of what trains mid-run (lpft), or a freeze plan of their own."""


def _ddp_multirun(sweep: Path) -> dict:
    done = run_train(sweep, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=wandb",
                     f"strategy={','.join(DDP_STRATEGIES)}", "data.target_domain=invert", NO_REPORT, multirun=True,
                     check=False)
    return {"returncode": done.returncode, "output": done.stdout[-3000:], "sweep": str(sweep)}


@pytest.fixture(scope="session")
def ddp_multirun(tmp_path_factory) -> dict:
    """One multirun under DDP (two CPU processes, gloo; tiny/synthetic, 2 epochs, W&B offline), a job per
    ``DDP_STRATEGIES``, on an inverted target domain: {returncode, output, sweep}. Read by test_ddp.py and
    test_strategy_lora.py; read-only."""
    return once_per_suite(tmp_path_factory, "ddp_multirun", _ddp_multirun)


class Postgres:
    """A PostgreSQL server of this test session (``postgres``): ``database()`` creates a fresh database, its URL."""

    def __init__(self, port: int):
        self.port, self.made = port, 0

    def url(self, name: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def database(self) -> str:
        import psycopg2

        self.made += 1
        name = f"race{os.getpid()}_{self.made}"
        connection = psycopg2.connect(self.url())
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        connection.close()
        return self.url(name)


def _postgres_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server in a temporary directory for the session (trust authentication, 127.0.0.1, a free port),
    stopped at the end; as root it runs as ``nobody`` (the server refuses root). Skipped where the binaries or the
    psycopg2 driver are missing, or the server does not start."""
    import socket
    import tempfile

    pytest.importorskip("psycopg2", reason="no psycopg2 (pip install 'tlexp[postgres]')")
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl)")
    home = Path(tempfile.mkdtemp(prefix="tlexp-pg-"))  # not under pytest's tmp dirs: those are private to root
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("nobody")
        os.chown(home, user.pw_uid, user.pw_gid)
        as_user = [shutil.which("runuser") or "runuser", "-u", "nobody", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = home / "data"
    started = False
    try:
        steps = ([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                 [pg_ctl, "-D", str(data), "-l", str(home / "server.log"), "-w", "-t", "30", "start",
                  "-o", f"-k {home} -c listen_addresses=127.0.0.1 -p {port} -F -c max_connections=200"])
        for step in steps:
            done = subprocess.run([*as_user, *step], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                log = (home / "server.log").read_text()[-500:] if (home / "server.log").exists() else ""
                said = (done.stderr or done.stdout or log).strip()[-300:]
                pytest.skip(f"PostgreSQL did not start: {Path(step[0]).name} exited {done.returncode}: {said}")
        started = True
        yield Postgres(port)
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
