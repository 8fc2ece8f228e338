"""The race (experiment=race, tlexp.race) and the shared study underneath it (tlexp.study): one budget per
strategy, pruned trials, the best trial confirmed on seeds, a verdict with intervals; continued by the same
command and shared by two workers without a trial run twice."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from omegaconf import open_dict
from optuna.trial import TrialState
from scipy import stats

from conftest import NO_REPORT, PYTHON, REPO, START_TOGETHER, TINY, compose_config, merge_overrides, read_json, subprocess_env
from tlexp import race, study as studies, verdict

WANDB = Path(PYTHON).with_name("wandb")


def make_study(url=None, seed=7):
    return studies.open_study("s", url, optuna.samplers.RandomSampler, seed)


def test_the_verdict_intervals_come_from_the_t_distribution():
    """Mean and 95 % t interval over seeds; the paired difference to the winner on the same seeds, tied where
    its interval covers 0; the numbers checked against the textbook formulas."""
    entries = [{"strategy": "a", "test_acc": {0: 0.80, 1: 0.82, 2: 0.84}},
               {"strategy": "b", "test_acc": {0: 0.79, 1: 0.83, 2: 0.83}},  # diff -0.01, +0.01, -0.01
               {"strategy": "c", "test_acc": {0: 0.70, 1: 0.71, 2: 0.73}},
               {"strategy": "d", "test_acc": {}}]  # nothing confirmed: listed last, no verdict
    a, b, c, d = verdict.verdict(entries)
    t = stats.t.ppf(0.975, 2)
    assert (a["winner"] and a["mean"] == pytest.approx(0.82)
            and a["ci"] == pytest.approx((0.82 - t * 0.02 / 3 ** 0.5, 0.82 + t * 0.02 / 3 ** 0.5)))
    sd_b = (((-0.01 + 0.01 / 3) ** 2 * 2 + (0.01 + 0.01 / 3) ** 2) / 2) ** 0.5
    assert b["diff"] == pytest.approx(-0.01 / 3) and b["tied"] and not b["winner"]
    assert b["diff_ci"] == pytest.approx((-0.01 / 3 - t * sd_b / 3 ** 0.5, -0.01 / 3 + t * sd_b / 3 ** 0.5))
    assert c["diff"] == pytest.approx(-0.32 / 3) and not c["tied"] and c["diff_ci"][1] < 0
    assert d["strategy"] == "d" and "mean" not in d


def test_a_race_under_shift_reports_the_target_beside_never_ranks_by_it(tmp_path):
    """Confirmations that scored a shifted test split (data.target_domain) give each strategy its target mean, t
    interval and paired difference to the winner; the winner is still the best on the source test split, the
    printed verdict and the report's leaderboard show the target columns, and a race without a shift does not."""
    from tlexp.report.tables import verdict_display, verdict_table

    entries = [{"strategy": "full", "test_acc": {0: 0.84, 1: 0.85, 2: 0.83}, "target_acc": {0: 0.30, 1: 0.35, 2: 0.33}},
               {"strategy": "ssf", "test_acc": {0: 0.79, 1: 0.80, 2: 0.79}, "target_acc": {0: 0.42, 1: 0.47, 2: 0.44}},
               {"strategy": "frozen", "test_acc": {}}]
    for e in entries:
        e.update(search={"trials": 2, "pruned": 0, "failed": 0, "epochs": 6, "image_epochs": 600, "seconds": 1.0}, best_params={})
    full, ssf, frozen = verdict.verdict(entries)
    assert full["winner"] and full["target_diff"] == 0 and full["target_diff_ci"] == (0.0, 0.0)
    assert ssf["target_mean"] == pytest.approx(0.44333, abs=1e-4)
    assert ssf["target_ci"] == pytest.approx(verdict.interval([0.42, 0.47, 0.44]))
    low, high = stats.ttest_rel([0.42, 0.47, 0.44], [0.30, 0.35, 0.33]).confidence_interval(0.95)
    assert ssf["target_diff"] == pytest.approx(0.11667, abs=1e-4) and ssf["target_diff_ci"] == pytest.approx((low, high))
    assert "target_mean" not in frozen
    result = {"race_dir": "r", "storage": "s", "settings": {"seeds": 3}, "cells": [{"cell": "race", "strategies": [full, ssf, frozen]}]}
    printed = verdict.format_race(result)
    assert "target_acc [95% CI]" in printed and f"+0.1167 [{low:+.4f}, {high:+.4f}]" in printed
    unshifted = verdict.verdict([{k: v for k, v in e.items() if k in ("strategy", "test_acc", "search", "best_params")} for e in entries])
    assert "target_acc" not in verdict.format_race({**result, "cells": [{"cell": "race", "strategies": unshifted}]})
    (tmp_path / "race.json").write_text(json.dumps(result))
    shown = verdict_display(verdict_table(tmp_path))
    assert "test/target_acc [95% CI]" in shown.columns and shown.as_dicts()[1]["target vs winner [95% CI]"].startswith("+0.1167 [")


@pytest.mark.parametrize("storage", ["sqlite:///{}/s.db", "{}/journal/s.log"])
def test_each_trial_is_proposed_once_whoever_asks(tmp_path, storage):
    """Two processes on one storage (an SQLite file, or a journal file in a folder not made yet; two study objects
    here) with the same sampler seed propose different settings; the proposal depends on the trial number, not
    on the process that asks."""
    url = storage.format(tmp_path)
    one, two = make_study(url), make_study(url)
    space = optuna.distributions.FloatDistribution(0.0, 1.0)
    values = []
    for study in (one, two, one, two):
        trial = studies.claim(study, budget=4)
        values.append(trial.suggest_float("x", space.low, space.high))
        study.tell(trial, 0.5)
    assert len(set(values)) == 4 and studies.claim(one, budget=4) is None
    again = make_study(None)
    trial = again.ask()
    assert trial.suggest_float("x", 0.0, 1.0) == values[0]  # trial 0, seed 7: the same proposal


def test_a_killed_trial_is_run_again_and_counted_once(tmp_path):
    """A RUNNING trial whose process on this host is gone is released (FAIL, not counted) and its settings run
    again; a worker alive keeps its trial; an interrupted trial is queued again the same way."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url)
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = studies.claim(study, budget=3)
    x = killed.suggest_float("x", 0.0, 1.0)
    study._storage.set_trial_user_attr(killed._trial_id, studies.WORKER, f"{os.uname().nodename}:{dead.pid}")
    rerun = studies.claim(study, budget=3)  # reaps the killed trial first, then runs its settings again
    assert rerun.suggest_float("x", 0.0, 1.0) == x and studies.job_number(rerun) == killed.number
    assert {t.number: t.state for t in study.trials} == {0: TrialState.FAIL, 1: TrialState.RUNNING}
    assert studies.used(study) == 1
    studies.claim(study, budget=3).suggest_float("x", 0.0, 1.0)  # this process: alive, its trials are kept
    assert studies.reap(study) == 0 and studies.used(study) == 2 and studies.claim(study, budget=2) is None
    studies.release(study, rerun, "interrupted")  # Ctrl-C: not counted, queued again
    assert studies.used(study) == 1 and studies.claim(study, budget=2).suggest_float("x", 0.0, 1.0) == x


LPFT_SEARCH = ("experiment=race", "data.fraction=0.25", "trainer.max_epochs=2", "race.seeds=0", "race.strategies=[lpft]", NO_REPORT)


@pytest.mark.slow
def test_a_proposal_the_strategy_refuses_costs_no_budget(tmp_path, main_inprocess):
    """A sampled value the strategy's rules refuse for this run (lpft's probe_epochs >= trainer.max_epochs) is not a
    trial: uncounted, no job directory, another proposed, so every strategy gets its whole budget of runnable trials."""
    code, output = main_inprocess(tmp_path, *LPFT_SEARCH, "race.trials=2", "strategy.probe_epochs=int(interval(0,3))",
                                  f"hydra.sweep.dir={tmp_path}")
    assert code == 0, output[-4000:]
    study = optuna.load_study(study_name="race/lpft", storage=f"sqlite:///{tmp_path / 'race.db'}")
    refused = [t for t in study.trials if t.user_attrs.get(studies.RERUN) == studies.REFUSED]
    counted = [t for t in study.trials if studies.counted(t)]
    assert refused and all(t.params["strategy.probe_epochs"] >= 2 for t in refused)
    assert len(counted) == 2 and all(t.params["strategy.probe_epochs"] <= 1 and t.state != TrialState.FAIL for t in counted)
    assert sorted(p.name for p in (tmp_path / "race" / "lpft").iterdir()) == sorted(str(t.number) for t in counted)
    (entry,) = read_json(tmp_path / "race.json")["cells"][0]["strategies"]
    assert entry["search"]["trials"] == 2 and entry["search"]["failed"] == 0


def test_a_space_the_strategy_always_refuses_is_one_error(tmp_path, main_inprocess):
    """Where every proposal is refused (5 per trial of the budget), the race stops with one error naming the key, its
    space and what the strategy accepts, instead of proposing for ever or spending the budget on nothing."""
    code, output = main_inprocess(tmp_path, *LPFT_SEARCH, "race.trials=1", "strategy.probe_epochs=int(interval(2,5))",
                                  f"hydra.sweep.dir={tmp_path}")
    assert code != 0
    assert "strategy.probe_epochs='int(interval(2,5))' is not accepted; accepted: an integer in [0, 1]" in output, output[-3000:]
    assert not list((tmp_path / "race" / "lpft").glob("*/result.json"))


def test_the_command_line_splits_into_cells_and_search_spaces():
    cells, space = race.cells(["model=tiny", "data.fraction=0.1,0.5", "strategy.frozen_depth=int(interval(0,6))", "seed=1,2"])
    assert cells == [["model=tiny", "data.fraction=0.1", "seed=1"], ["model=tiny", "data.fraction=0.1", "seed=2"],
                     ["model=tiny", "data.fraction=0.5", "seed=1"], ["model=tiny", "data.fraction=0.5", "seed=2"]]
    assert space == {"strategy.frozen_depth": "int(interval(0,6))"}


RACE = ("experiment=race", "data.fraction=0.25", "trainer.max_epochs=2", "race.trials=2", "race.seeds=2", "race.strategies=[frozen,full]")


@pytest.mark.slow
def test_a_race_end_to_end_and_continued(tmp_path, main_inprocess):
    """frozen and full, 2 trials each, confirmed on 2 seeds: race.json holds what the studies and the jobs hold;
    the same command again runs nothing new and gives the same verdict."""
    run = (*RACE, f"hydra.sweep.dir={tmp_path}", NO_REPORT)  # the race in the report: test_the_verdict_in_the_report
    code, output = main_inprocess(tmp_path, *run)
    assert code == 0, output[-4000:]
    result = read_json(tmp_path / "race.json")
    (cell,) = result["cells"]
    by_name = {e["strategy"]: e for e in cell["strategies"]}
    assert set(by_name) == {"frozen", "full"} and sum(e["winner"] for e in by_name.values()) == 1
    for name, e in by_name.items():
        study = optuna.load_study(study_name=f"race/{name}", storage=result["storage"])
        done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == 2 and e["search"]["trials"] == 2
        assert e["search"]["epochs"] == sum(len(t.intermediate_values) for t in done)
        best = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        assert e["best_params"] == best.params and e["val_acc_best"] == best.value
        for trial in done:  # the search never tests
            assert "test_acc" not in read_json(tmp_path / "race" / name / str(trial.number) / "result.json")
        for seed in (42, 43):
            record = read_json(tmp_path / "race" / name / f"confirm_seed{seed}" / "result.json")
            assert record["seed"] == seed and e["test_acc"][str(seed)] == record["test_acc"]
            assert {f"{k}={v}" for k, v in best.params.items()} <= set(record["overrides"])
        assert e["mean"] == pytest.approx(sum(e["test_acc"].values()) / 2)
    assert "tlexp race" in output and "winner" in output
    jobs = sorted(p.parent for p in tmp_path.rglob("result.json"))
    code, output = main_inprocess(tmp_path, *run)
    assert code == 0, output[-4000:]
    assert sorted(p.parent for p in tmp_path.rglob("result.json")) == jobs
    again = read_json(tmp_path / "race.json")["cells"]
    assert [(e["strategy"], e["test_acc"]) for e in again[0]["strategies"]] == [(e["strategy"], e["test_acc"]) for e in cell["strategies"]]


TWO_WORKERS = ("experiment=race", "data.fraction=0.25", "trainer.max_epochs=1", "race.trials=3", "race.seeds=1", "race.strategies=[frozen]",
               "logger=wandb")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two train.py processes started at once with the same race directory and storage (offline W&B runs, the report):
    (the race dir, the task's overrides, their outputs). "At once": each waits, past its imports, for the other
    (``START_TOGETHER``): a trial here takes about a second, and the first process to get through its imports (several
    seconds, more on a busy CPU) would otherwise run all three alone."""
    race_dir = tmp_path_factory.mktemp("two_workers")
    task = merge_overrides(*TWO_WORKERS, f"paths.data_dir={race_dir / 'data'}", base=TINY)
    args = [*task, f"hydra.sweep.dir={race_dir}"]
    ready = race_dir / "ready"
    ready.mkdir()
    workers = [subprocess.Popen([PYTHON, "-c", START_TOGETHER, str(ready), "2", "-m", *args], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return race_dir, task, outputs


TWO_WORKERS_TESTS = pytest.mark.xdist_group("test_race.two_workers")
"""The tests that read the module fixture ``two_workers``: on one xdist worker, which runs it once."""


@pytest.mark.slow
@TWO_WORKERS_TESTS
def test_two_workers_share_one_race(two_workers):
    """3 trials in all, no settings run twice, each confirmation once, and both print the same verdict."""
    race_dir, _, outputs = two_workers
    result = read_json(race_dir / "race.json")
    study = optuna.load_study(study_name="race/frozen", storage=result["storage"])
    counted = [t for t in study.trials if studies.counted(t)]
    assert len(counted) == 3 and len({json.dumps(t.params, sort_keys=True) for t in counted}) == 3
    workers_seen = {t.user_attrs["worker"] for t in counted}
    assert len(workers_seen) == 2, workers_seen  # both took part
    confirmations = list(race_dir.glob("race/frozen/confirm_seed*/result.json"))
    assert len(confirmations) == 1 and read_json(confirmations[0])["status"] == "completed"
    assert all("tlexp race" in out for out in outputs)


@pytest.mark.slow
@TWO_WORKERS_TESTS
def test_two_workers_end_as_one_study(two_workers):
    """Both workers end the sweep, one after the other: every job of either in one W&B group (the race dir's name), one
    W&B summary run (the later worker resumed the earlier's) counting every job, sweep_summary.json and the report
    listing every job, and race.json and the printed verdict as the storage gives them read again now."""
    from tlexp import sweep

    race_dir, task, outputs = two_workers
    records = {str(p.parent.relative_to(race_dir)): read_json(p) for p in race_dir.glob("race/frozen/*/result.json")}
    assert len(records) == 4 and {r["group"] for r in records.values()} == {race_dir.name}
    runs = [wandb_run(path) for path in race_dir.glob("race/frozen/*/wandb/offline-run-*")]
    assert len(runs) == 4 and {run["run_group"] for run in runs} == {race_dir.name}
    (summary_run,) = race_dir.glob("wandb/offline-run-*")
    info, inspected = wandb_run(summary_run), wandb_run(summary_run, "--summary")
    assert info["run_group"] == race_dir.name and info["job_type"] == "summary" and inspected["summary"]["jobs/total"] == 4
    assert inspected["run_id"] == sweep.summary_run_id(race_dir.name, race_dir)
    assert all(out.count("tlexp sweep ") == 1 and ": 4 completed, " in out for out in outputs)
    assert {e["job"] for key in ("completed", "skipped") for e in read_json(race_dir / "sweep_summary.json")[key]} == set(records)
    assert {row["job"] for row in read_json(race_dir / "report.json")["tables"]["jobs"]} == set(records)
    config = compose_config(*task, base=())
    with open_dict(config):
        config.hydra = {"sweep": {"dir": str(race_dir)}}
    again = race.Race(config, task, run_job=None, compose=None).result()
    assert read_json(race_dir / "race.json")["cells"] == json.loads(json.dumps(again["cells"]))
    assert all(verdict.format_race(again) in out for out in outputs)


def wandb_run(run_dir, *options) -> dict:
    """An offline W&B run read back (``wandb leet inspect --json``): its run record, or with ``--summary`` its summary."""
    out = subprocess.run([str(WANDB), "leet", "inspect", *options, "--json", str(run_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if options:
        return json.loads(out.stdout)
    return next(r["run"] for r in map(json.loads, filter(str.strip, out.stdout.splitlines())) if r.get("type") == "run")


def test_a_pretrained_backbone_is_read_once_and_built_as_before(tmp_path):
    """In-process trials reuse the backbone built from the same weights file under the same seed: an equal copy
    (not the same object), and the torch RNG left exactly where building it anew leaves it (the head's init)."""
    import torch

    from tlexp import backbone as backbones

    path = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(backbones.create_backbone("test_efficientnet").state_dict(), path)

    def build():
        torch.manual_seed(1)
        model = backbones.create_backbone("test_efficientnet", weights=str(path), img_size=32)
        return model, torch.rand(3)

    backbones._BUILT.clear()
    fresh, after_fresh = build()
    reused, after_reused = build()
    assert reused is not fresh and len(backbones._BUILT) == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), reused.state_dict().values()))
    assert torch.equal(after_fresh, after_reused)
    torch.manual_seed(2)  # another seed: built again
    backbones.create_backbone("test_efficientnet", weights=str(path), img_size=32)
    assert len(backbones._BUILT) == 1


def test_the_verdict_in_the_report(tmp_path):
    """report.html shows race.json as a leaderboard with its intervals and each strategy's search as a figure
    (a strategy without trial histories, from an older race.json, is drawn empty); report.json holds the rows."""
    from tlexp.report import generate
    from tlexp.results import RunRecord, Status, write_result

    entries = verdict.verdict([{"strategy": "full", "test_acc": {"0": 0.81, "1": 0.83}, "best_params": {"strategy.lr_backbone": 1e-3},
                             "val_acc_best": 0.8,
                             "search": {"trials": 4, "pruned": 2, "failed": 0, "epochs": 10, "image_epochs": 6000, "seconds": 12.5}},
                            {"strategy": "frozen", "test_acc": {"0": 0.70, "1": 0.75}, "best_params": {}, "val_acc_best": 0.7,
                             "search": {"trials": 4, "pruned": 1, "failed": 0, "epochs": 11, "image_epochs": 6600, "seconds": 3.0}}])
    entries[0].update(best_trial=1, trials=[{"number": 0, "state": "pruned", "values": [0.5], "start": 0.0, "end": 2.0},
                                            {"number": 1, "state": "complete", "values": [0.6, 0.8], "start": 2.0, "end": 6.0}])
    (tmp_path / "race.json").write_text(json.dumps({"cells": [{"cell": "data.fraction=0.01", "strategies": entries}]}))
    for depth in (2, 3):  # search trials of partial: completed, never tested (no frozen-depth figure from them)
        write_result(tmp_path / "race" / "partial" / str(depth), RunRecord(status=Status.COMPLETED, strategy="partial",
                                                                         frozen_depth=depth, fraction=0.01, val_acc_best=0.8))
    page = generate(tmp_path).read_text()
    assert "Race verdict" in page and "<td>winner</td>" in page
    assert not read_json(tmp_path / "report.json")["tables"]["frozen_depth"]
    low, high = entries[0]["ci"]
    assert f"<td>0.8200 [{low:.4f}, {high:.4f}]</td>" in page and "<td>4 (2 pruned), 10 epochs, 12 s</td>" in page
    assert read_json(tmp_path / "report.json")["figures"]["race_search"] == "race_search.png"
    assert (tmp_path / "race_search.png").stat().st_size > 1000
    rows = read_json(tmp_path / "report.json")["tables"]["verdict"]
    full, frozen = rows
    assert full["verdict"] == "winner" and full["best_params"] == "lr_backbone=0.001" and full["pruned"] == 2
    assert frozen["acc_diff_to_winner"] == pytest.approx(-0.095) and frozen["test_acc_ci_low"] == pytest.approx(entries[1]["ci"][0])


@pytest.mark.parametrize("override, key", [("race.trials=0", "race.trials"), ("race.seeds=two", "race.seeds"),
                                           ("race.seeds=-1", "race.seeds"), ("race.start_at_defaults=maybe", "race.start_at_defaults"),
                                           ("race.strategies=[full,nope]", "race.strategies"),
                                           ("strategy.train_stages=[stem],[blocks.4]", "strategy.train_stages"),
                                           ("race.storage=nonsense", "race.storage"), ("race.storage=postgres://u@h/db", "race.storage"),
                                           ("race.workers=0", "race.workers"), ("race.heartbeat=-1", "race.heartbeat")])
def test_bad_race_settings_are_named(tmp_path, main_inprocess, override, key):
    """One clear error naming the key and what it accepts; nothing written. A sweep of a strategy's setting that no raced
    strategy searches (surgical's stage set) is refused rather than dropped; a storage URL that does not parse, or names
    no SQLAlchemy dialect (``postgres://``), is refused before any worker starts."""
    code, output = main_inprocess(tmp_path / "run", "experiment=race", override, f"hydra.sweep.dir={tmp_path / 'race'}")
    assert code != 0 and f"{key}=" in output and "accepted:" in output, output[-3000:]
    assert not (tmp_path / "race").exists()


def test_tuned_against_defaults_pairs_the_seeds(tmp_path):
    """scripts/race_vs_defaults.py: the race's confirmations against the default jobs of the same seeds, paired
    (scipy's ttest_rel interval); --where keeps the jobs that set the key to that value or leave it unset; the
    last source holding a strategy wins."""
    import csv
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    import race_vs_defaults

    entries = [{"strategy": "full", "test_acc": {"0": 0.83, "1": 0.84, "2": 0.86}, "best_params": {"strategy.lr_backbone": 1e-3}},
               {"strategy": "gradual", "test_acc": {"0": 0.80, "1": 0.81, "2": 0.80}, "best_params": {}}]
    (tmp_path / "race.json").write_text(json.dumps({"cells": [{"cell": "race", "overrides": ["experiment=race"], "strategies": entries}]}))
    columns = ["setting", "seed", "status", "test_acc"]
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    for path, rows in ((old, [("strategy=full strategy.bn_trainable=frozen_stats", s, v) for s, v in ((0, 0.80), (1, 0.82), (2, 0.81))]
                        + [("strategy=full strategy.bn_trainable=batch_stats", s, 0.5) for s in range(3)]
                        + [("strategy=gradual strategy.bn_trainable=frozen_stats", s, 0.6) for s in range(3)]),
                       (new, [("strategy=gradual", s, v) for s, v in ((0, 0.79), (1, 0.80), (2, 0.82))])):
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([setting, seed, "completed", value] for setting, seed, value in rows)
    assert race_vs_defaults.main([str(tmp_path), "--defaults", str(old), "--defaults", str(new),
                                  "--where", "strategy.bn_trainable=frozen_stats", "--md", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    low, high = stats.ttest_rel([0.83, 0.84, 0.86], [0.80, 0.82, 0.81]).confidence_interval(0.95)
    assert "| `full` | 0.810 [" in text and f"+0.033 [{low:+.3f}, {high:+.3f}]" in text and "lr_backbone=0.001" in text
    assert "| `gradual` | 0.803 [" in text  # the newer source's gradual, not the old one's 0.6
