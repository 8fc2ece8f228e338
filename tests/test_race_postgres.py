"""A race shared through PostgreSQL (``race.storage=postgresql://...``): each trial once, a killed worker's trial
queued again (this host: its pid; any host: Optuna's heartbeat), every worker's verdict the same. The server is the
session's ``postgres`` fixture (skipped without one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import CONF_DIR, NO_REPORT, PYTHON, REPO, START_TOGETHER, TINY, merge_overrides, read_json, subprocess_env
from tlexp import study as studies


@pytest.mark.slow
def test_a_trial_whose_heartbeat_stopped_is_run_again_once(postgres):
    """A trial of a worker on another host (no pid check there) whose heartbeat stopped is released by the next claim on
    any host and its settings run again; a trial whose heartbeat goes on (``beating``) is kept; two workers releasing
    the same trial queue it once (one RUNNING -> FAIL transition)."""
    url = postgres.database()
    one, two = (studies.open_study("s", url, optuna.samplers.RandomSampler, 7, heartbeat=1) for _ in range(2))
    assert studies.heartbeat_of(one) == 1
    lost = studies.claim(one, budget=3)
    x = lost.suggest_float("x", 0.0, 1.0)
    one._storage.set_trial_user_attr(lost._trial_id, studies.WORKER, "elsewhere:1")  # not this host: no pid to check
    one._storage.record_heartbeat(lost._trial_id)  # its last heartbeat
    alive = studies.claim(two, budget=3)
    alive.suggest_float("x", 0.0, 1.0)
    with studies.beating(two, alive):
        time.sleep(3.5)  # past the grace period (2 heartbeats)
        snapshot = two.trials[lost.number]
        rerun = studies.claim(two, budget=3)
    assert rerun.params == {} and rerun.suggest_float("x", 0.0, 1.0) == x and studies.job_number(rerun) == lost.number
    states = {t.number: t.state for t in one.trials}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING, 2: TrialState.RUNNING}, states
    assert one.trials[0].user_attrs[studies.RERUN] == "its process was killed" and studies.used(one) == 2
    assert not studies.release(one, snapshot, "its process was killed")  # the other worker's release, too late: no second copy
    assert len(one.get_trials(states=(TrialState.WAITING,))) == 0 and studies.reap(one) == 0


def test_an_unreachable_database_is_one_error(tmp_path, main_inprocess, monkeypatch):
    """No server at the URL: the storage is tried 5 times, then one line names race.storage, the URL (no password) and
    the driver's reason; nothing is written. (The waits between attempts, 5 s, are left out.)"""
    monkeypatch.setattr(studies, "RETRY_WAIT", 0.0)
    url = "postgresql://me:secret@127.0.0.1:1/race"
    code, output = main_inprocess(tmp_path / "run", "experiment=race", f"race.storage={url}", f"hydra.sweep.dir={tmp_path / 'race'}")
    assert code != 0 and "tlexp: error: race.storage: cannot open the Optuna storage postgresql" in output
    assert "me:***@127.0.0.1:1/race (5 attempts in " in output and "Connection refused" in output
    assert "secret" not in output and not (tmp_path / "race").exists()


def hydra_config(*overrides: str):
    """train.py's config with its ``hydra`` node, as the race's sweeper gets it (no Hydra runtime)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def trials_by_study(url: str, names) -> dict:
    store = studies.storage(url)
    return {name: optuna.load_study(study_name=f"race/{name}", storage=store).trials for name in names}


def verdict_of(output: str) -> str:
    """The printed verdict: from its title line to its last (``race.json: <path>``)."""
    verdict = output[output.index("tlexp race "):]
    return verdict[:verdict.index("\n", verdict.index("\nrace.json: ") + 1)]


@pytest.mark.slow
def test_workers_share_a_race_through_postgres_and_one_is_killed(tmp_path, postgres, main_inprocess):
    """Two workers started together on one PostgreSQL race; one killed (SIGKILL) during a trial. The other queues the
    killed trial again and runs it; then the command is run once more. Every trial number of the budget finished exactly
    once per study, each confirmation ran once, and the verdicts printed and race.json agree with the storage."""
    url = postgres.database()
    strategies = ("frozen", "full")
    args = merge_overrides("experiment=race", "data.fraction=0.25", "trainer.max_epochs=1", "race.trials=3", "race.seeds=1",
                           f"race.strategies=[{','.join(strategies)}]", f"race.storage={url}", "race.heartbeat=1",
                           f"hydra.sweep.dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}", NO_REPORT, base=TINY)
    ready = tmp_path / "ready"
    ready.mkdir()
    workers = [subprocess.Popen([PYTHON, "-c", START_TOGETHER, str(ready), "2", "-m", *args], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:  # the first worker seen running a trial's job is killed
        try:
            trials = [t for ts in trials_by_study(url, strategies[:1]).values() for t in ts]
        except KeyError:  # the study is not created yet
            trials = []
        for trial in trials:
            pid = int(trial.user_attrs.get(studies.WORKER, ":0").rpartition(":")[2])
            running = trial.state == TrialState.RUNNING and "job" in trial.user_attrs  # its settings drawn, its job started
            if running and not trial.intermediate_values and pid in {w.pid for w in workers}:
                victim = next(w for w in workers if w.pid == pid)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed = trial.number
                break
        time.sleep(0.05)
    assert victim is not None, "no worker was seen running a trial"
    survivor = next(w for w in workers if w is not victim)
    first = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, first[-4000:]
    code, again = main_inprocess(tmp_path / "again", *args, base=())  # the same command, in this process
    assert code == 0, again[-4000:]

    studies_now = trials_by_study(url, strategies)
    for name, trials in studies_now.items():
        counted = [t for t in trials if studies.counted(t)]
        jobs = [studies.job_number(t) for t in counted]  # a re-run continues its first attempt's job (and number)
        assert len(counted) == 3 and len(set(jobs)) == 3, [(t.number, t.state, t.user_attrs) for t in trials]
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
        assert len({json.dumps(t.params, sort_keys=True) for t in counted}) == 3
        assert {t.number for t in trials if not studies.counted(t)} <= set(jobs)  # every killed trial finished as a re-run
    frozen = studies_now["frozen"]
    assert frozen[killed].state == TrialState.FAIL and frozen[killed].user_attrs[studies.RERUN] == "its process was killed"
    (rerun,) = [t for t in frozen if t.user_attrs.get(studies.RERUN_OF) == killed]
    assert rerun.state in (TrialState.COMPLETE, TrialState.PRUNED) and rerun.params == frozen[killed].params
    assert rerun.user_attrs[studies.WORKER].endswith(f":{survivor.pid}")
    for name in strategies:
        (confirmation,) = tmp_path.glob(f"race/{name}/confirm_seed*/result.json")
        record = read_json(confirmation)
        assert record["status"] == "completed" and record["pid"] == survivor.pid  # run once, by the survivor
    result = read_json(tmp_path / "race.json")
    assert result["storage"] == url and verdict_of(first) == verdict_of(again)
    for e in result["cells"][0]["strategies"]:
        counted = [t for t in studies_now[e["strategy"]] if studies.counted(t)]
        best = max((t for t in counted if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        assert e["best_trial"] == best.number and e["best_params"] == best.params and e["search"]["trials"] == 3


@pytest.mark.slow
def test_race_workers_run_as_one_submitit_array(tmp_path):
    """``race.workers=2`` on this machine: one command submits two workers through submitit's local executor
    (``map_array``, as on SLURM) on the race's SQLite file; both run as submitit jobs, share the race (each trial once)
    and print the verdict the submitting command prints too."""
    args = merge_overrides("experiment=race", "data.fraction=0.25", "trainer.max_epochs=1", "race.trials=4", "race.seeds=1",
                           "race.strategies=[frozen]", "race.workers=2", f"hydra.sweep.dir={tmp_path}",
                           f"paths.data_dir={tmp_path / 'data'}", NO_REPORT, base=TINY)
    submitter = subprocess.Popen([PYTHON, "train.py", "-m", *args], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    output = submitter.communicate(timeout=600)[0]
    assert submitter.returncode == 0, output[-4000:]
    assert "2 race workers submitted (local)" in output
    logs = sorted(tmp_path.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2, logs  # submitit's local executor: one job per task (<pid>_0_log.out); SLURM: <array>_<task>
    results = sorted(tmp_path.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2
    printed = [verdict_of(p.read_text()) for p in logs]
    assert printed[0] == printed[1] == verdict_of(output)
    result = read_json(tmp_path / "race.json")
    trials = trials_by_study(result["storage"], ["frozen"])["frozen"]
    counted = [t for t in trials if studies.counted(t)]
    assert sorted(t.number for t in counted) == [0, 1, 2, 3] and len({json.dumps(t.params, sort_keys=True) for t in counted}) == 4
    pids = {int(t.user_attrs[studies.WORKER].rpartition(":")[2]) for t in counted}
    assert 1 <= len(pids) <= 2 and submitter.pid not in pids  # run by the workers, not by the submitting command
    assert len(list(tmp_path.glob("race/frozen/confirm_seed*/result.json"))) == 1



@pytest.mark.slow
def test_race_workers_on_slurm_are_one_array_of_one_gpu_tasks(tmp_path, monkeypatch):
    """``hydra/launcher=slurm race.workers=3``: one sbatch script, an array of 3 tasks (all at once), each one task
    with the launcher's GPUs, partition and time limit, running the same race command as one worker with the race
    dir and storage made explicit and without the launcher's overrides. ``sbatch`` and ``srun`` are stand-ins here (no
    cluster): the script submitit would hand to sbatch is kept and read."""
    from tlexp import race_workers

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$0")/submitted.sh"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    storage = "postgresql://me:secret@db.cluster:5432/race"
    task = ["experiment=race", "data.fraction=0.01", "race.workers=3", f"race.storage={storage}"]
    hydra_overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                       f"hydra.sweep.dir={tmp_path / 'race'}", NO_REPORT]
    config = hydra_config(*task, *hydra_overrides)
    jobs, cluster, logs = race_workers.submit(config, task, storage)
    assert cluster == "slurm" and [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    script = (bin_dir / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --time=90"):
        assert line in script, script
    command = race_workers.worker_command(config, task, storage)
    assert command[2] == "-m" and logs == tmp_path / "race" / ".submitit"
    assert command[-3:] == [f"hydra.sweep.dir={tmp_path / 'race'}", f"race.storage={storage}", "race.workers=1"]
    assert NO_REPORT in command and "experiment=race" in command
    assert not [c for c in command if c.startswith(("hydra/launcher", "hydra.launcher", "race.workers=3"))]


def test_sqlite_is_refused_for_slurm_workers(tmp_path, main_inprocess):
    """SLURM workers on several nodes cannot share one host's SQLite file: refused, naming race.storage; nothing written."""
    code, output = main_inprocess(tmp_path / "run", "experiment=race", "race.workers=2", "hydra/launcher=slurm",
                                  f"hydra.sweep.dir={tmp_path / 'race'}")
    assert code != 0 and "race.storage=None is not accepted; accepted: postgresql://" in output, output[-3000:]
    assert not (tmp_path / "race").exists()


@pytest.mark.slow
def test_a_failed_worker_is_one_error_naming_its_log(tmp_path, monkeypatch, capsys):
    """A worker that exits non-zero (here a stand-in command) makes the submitting command print one line per failed
    worker naming its submitit log, and return non-zero; no verdict is printed."""
    import sys

    from tlexp import race_workers

    config = hydra_config("experiment=race", "race.workers=2", f"hydra.sweep.dir={tmp_path}")
    failing = "import sys; print('tlexp: error: race.storage: cannot open', file=sys.stderr); sys.exit(1)"
    monkeypatch.setattr(race_workers, "worker_command", lambda *_: [sys.executable, "-c", failing])
    assert race_workers.launch(config, ["experiment=race", "race.workers=2"], "sqlite:///x.db") == 1
    captured = capsys.readouterr()
    assert captured.err.count("failed (race.storage: cannot open; log: ") == 2 and "_log.err)" in captured.err
    assert "tlexp race " not in captured.out


def test_no_password_in_what_is_shown():
    """``shown``: the URL with *** for a password (messages, race.json, the printed verdict); other storages as they are."""
    assert studies.shown("postgresql://me:secret@db:5432/race") == "postgresql://me:***@db:5432/race"
    assert studies.shown("sqlite:////tmp/race.db") == "sqlite:////tmp/race.db" and studies.shown("runs/race.log") == "runs/race.log"
