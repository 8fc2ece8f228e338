"""A race shared through PostgreSQL (``race.storage=postgresql://...``): each trial once, a killed worker's trial
queued again (this host: its pid; any host: Optuna's heartbeat), every worker's verdict the same. The server is the
session's ``postgres`` fixture (skipped without one)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import NO_REPORT, PYTHON, REPO, START_TOGETHER, TINY, merge_overrides, read_json, subprocess_env
from tlexp import study as studies


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


def test_an_unreachable_database_is_one_error(tmp_path, main_inprocess):
    """No server at the URL: the storage is tried 5 times, then one line names race.storage, the URL (no password) and
    the driver's reason; nothing is written."""
    url = "postgresql://me:secret@127.0.0.1:1/race"
    code, output = main_inprocess(tmp_path / "run", "experiment=race", f"race.storage={url}", f"hydra.sweep.dir={tmp_path / 'race'}")
    assert code != 0 and "tlexp: error: race.storage: cannot open the Optuna storage postgresql" in output
    assert "me:***@127.0.0.1:1/race (5 attempts in " in output and "Connection refused" in output
    assert "secret" not in output and not (tmp_path / "race").exists()


def trials_by_study(url: str, names) -> dict:
    store = studies.storage(url)
    return {name: optuna.load_study(study_name=f"race/{name}", storage=store).trials for name in names}


def verdict_of(output: str) -> str:
    """The printed verdict: from its title line to its last (``race.json: <path>``)."""
    verdict = output[output.index("tlexp race "):]
    return verdict[:verdict.index("\n", verdict.index("\nrace.json: ") + 1)]


@pytest.mark.slow
def test_workers_share_a_race_through_postgres_and_one_is_killed(tmp_path, postgres):
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
    while victim is None and time.monotonic() < deadline:  # the first worker seen in a trial's first epoch is killed
        try:
            trials = [t for ts in trials_by_study(url, strategies[:1]).values() for t in ts]
        except KeyError:  # the study is not created yet
            trials = []
        for trial in trials:
            pid = int(trial.user_attrs.get(studies.WORKER, ":0").rpartition(":")[2])
            if trial.state == TrialState.RUNNING and not trial.intermediate_values and pid in {w.pid for w in workers}:
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
    again = subprocess.run([PYTHON, "train.py", "-m", *args], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:]

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
    assert result["storage"] == url and verdict_of(first) == verdict_of(again.stdout)
    for e in result["cells"][0]["strategies"]:
        counted = [t for t in studies_now[e["strategy"]] if studies.counted(t)]
        best = max((t for t in counted if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        assert e["best_trial"] == best.number and e["best_params"] == best.params and e["search"]["trials"] == 3
