"""tlexp-advise, measured: the divergence is zero where the target statistics are the source's, the seeds'
decision table's rows map to tlexp settings, the pocket race's shortlist and full-race estimate follow from its
race.json, bad advise.* settings are named, and a run on the tiny model races, prints, writes and logs its advice
(with the transferability scores, the backbones ranked and the seeds' table beside the pick)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from omegaconf import OmegaConf
from conftest import PYTHON, REPO, run_config, subprocess_env
from test_sweep import wandb_summary

from tlexp.advice import pocket_race
from tlexp.advice.evidence import domain_distance, gaussian_divergence
from tlexp.advice.seeds_table import recommend
from tlexp.backbone import create_backbone


def test_gaussian_divergence_is_symmetric_and_zero_only_for_equal_statistics():
    a, b = (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])), (torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.5]))
    assert torch.equal(gaussian_divergence(*a, *a), torch.zeros(2))
    assert torch.allclose(gaussian_divergence(*a, *b), gaussian_divergence(*b, *a))
    assert (gaussian_divergence(*a, *b) > 0).all()


def test_domain_distance_is_small_on_the_source_statistics_and_grows_with_a_shift():
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet")
    images = torch.randn(256, 3, 32, 32)
    for bn in (m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative: one pass sets the running statistics to these images'
    backbone.train()
    with torch.no_grad():
        backbone(images)
    same = domain_distance(backbone, images)
    shifted = domain_distance(backbone, images * 3 + 2)
    assert same["stem"] < 1e-3 and max(same.values()) < 0.05
    assert shifted["stem"] > 1 and all(shifted[s] > same[s] for s in same)


@pytest.mark.parametrize("size, gain, strategy", [(500, 0.3, "frozen"), (500, 0.0, "frozen"), (5000, 0.3, "gradual"),
                                                  (5000, 0.0, "gradual"), (50000, 0.3, "full"), (50000, 0.0, "full")])
def test_the_decision_table(size, gain, strategy):
    stages = ["stem", "blocks.0", "blocks.1", "blocks.2"]
    advice = recommend(size, gain, probe=0.8, stage_names=stages)
    assert advice["strategy"] == strategy and advice["bn_trainable"] == "frozen_stats"
    assert f"strategy={strategy}" in advice["overrides"]
    low, high = advice["expected_test_acc"]
    assert 0.8 <= low <= high <= 1
    if (size, gain) == (500, 0.0):
        assert "data.augment=true" in advice["overrides"]
    if (size, gain) == (5000, 0.3):
        assert "strategy.milestones={blocks.2:1,blocks.1:2}" in advice["overrides"]
    if (size, gain) == (5000, 0.0):
        assert "strategy.lr_ratio=0.01" in advice["overrides"]  # 1e-3 at the top to 1e-5 at the stem, any depth


def test_noise_is_the_95_percent_half_width_of_a_difference_and_stays_positive_at_100_percent():
    assert pocket_race.noise(0.8, 500) == pytest.approx(1.96 * math.sqrt(2 * (402 / 504) * (102 / 504) / 500))
    assert 0 < pocket_race.noise(1.0, 32) < 0.15
    assert pocket_race.noise(0.8, 2000) < pocket_race.noise(0.8, 500)


def test_the_race_gets_the_data_and_model_overrides_and_its_own_budget():
    task = ["data=digits", "model=tiny", "data.fraction=0.5", "strategy=full", "logger=wandb", "advise.trials=2",
            "seed=3", "trainer.max_epochs=9", "+data.extra=1"]
    assert pocket_race.passed_on(task) == ["data=digits", "model=tiny", "seed=3", "+data.extra=1"]
    settings = OmegaConf.create({"strategies": ["frozen", "full"], "trials": 3, "epochs": 2, "max_train_images": 250})
    overrides = pocket_race.pocket_overrides(settings, 0.5, 1000)
    assert "data.fraction=0.125" in overrides and "race.seeds=0" in overrides and "race.start_at_defaults=true" in overrides
    assert "race.strategies=[frozen,full]" in overrides and "trainer.max_epochs=2" in overrides
    assert "data.fraction=0.5" in pocket_race.pocket_overrides(settings, 0.5, 200)  # under the cap: as given


def fake_race(tmp_path, scores: dict[str, float], val_size: int = 500) -> dict:
    """A search-only race.json: each strategy's best trial (#0) with its val/acc; 10 s per 1,000 image-epochs."""
    strategies = []
    for name, score in scores.items():
        job = tmp_path / "race" / name / "0"
        job.mkdir(parents=True)
        (job / "result.json").write_text(json.dumps({"status": "completed", "val_size": val_size}))
        strategies.append({"strategy": name, "val_acc_best": score, "best_params": {"strategy.lr_head": 0.001}, "best_trial": 0,
                           "trials": [{"number": 0}], "test_acc": {},
                           "search": {"trials": 4, "pruned": 2, "epochs": 10, "image_epochs": 6000, "seconds": 60.0}})
    return {"race_dir": str(tmp_path), "cells": [{"cell": "race", "strategies": strategies}]}


def test_the_shortlist_is_the_leader_and_whoever_is_within_noise(tmp_path):
    race = fake_race(tmp_path, {"frozen": 0.70, "full": 0.81, "partial": 0.83})
    pocket = pocket_race.ranking(race)
    assert [r["strategy"] for r in pocket["ranked"]] == ["partial", "full", "frozen"]
    assert pocket["noise"] == pytest.approx(pocket_race.noise(0.83, 500)) and pocket["val_size"] == 500
    assert pocket["shortlist"] == ["partial", "full"]  # 0.02 apart: within 0.046; frozen 0.13 behind
    assert pocket["seconds"] == 180 and pocket["image_epochs"] == 18000
    full = pocket_race.full_race(pocket["shortlist"], ["data=digits", "data.fraction=0.01"], 600, pocket)
    per_strategy = 12 * 8 * pocket_race.SEARCHED_SHARE + 3 * 8  # epochs of the default budget, after pruning
    assert full["estimated_seconds"] == round(2 * per_strategy * 600 * 180 / 18000)
    assert full["command"] == "python train.py -m experiment=race data=digits data.fraction=0.01 'race.strategies=[partial,full]'"
    alone = pocket_race.ranking(fake_race(tmp_path / "b", {"frozen": 0.5, "full": 0.9}))
    assert pocket_race.full_race(alone["shortlist"], [], 600, alone)["strategies"] == ["full", "frozen"]  # the two leaders


@pytest.mark.parametrize("override, key", [("advise.trials=0", "advise.trials"), ("advise.race=maybe", "advise.race"),
                                           ("advise.strategies=[]", "advise.strategies")])
def test_bad_advise_settings_are_named_and_nothing_is_written(tmp_path, capsys, override, key):
    """tlexp-advise's task on its composed config (what Hydra's decorator hands it): exit 1, one error naming the key."""
    from tlexp import advise

    with pytest.raises(SystemExit) as stopped:
        advise.run(run_config(tmp_path / "run", "logger=csv", override, config_name="advise"))
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and f"{key}=" in error and "accepted:" in error, error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_advise_races_prints_writes_and_logs(tmp_path):
    """The whole command on the tiny model: evidence, two backbones ranked, a pocket race of two strategies (the
    first trial of each at its configured settings), the pick with its command, the full race with its estimate,
    the seeds' table with its record; advice.json and W&B hold the same."""
    out = subprocess.run([PYTHON, "-m", "tlexp.advise", "model=tiny", "data=synthetic", "logger=wandb",
                          "advise.strategies=[frozen,full]", "advise.trials=2", "advise.epochs=1", "advise.max_train_images=100",
                          "advise.models=[tiny,efficientnet_lite0]", f"hydra.run.dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"],
                         cwd=REPO, env=subprocess_env(WANDB_MODE="offline"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    advice = json.loads((tmp_path / "advice.json").read_text())
    assert advice["figures"]["train_size"] > 0 and set(advice["figures"]["domain_distance"]) >= {"stem"}
    scores = ("logme_pretrained", "logme_random", "knn_acc_pretrained", "knn_acc_random")
    assert all(math.isfinite(advice["figures"][key]) for key in scores)
    assert all(0 <= advice["figures"][key] <= 1 for key in scores[2:])
    assert "linear probe: pretrained features" in out.stdout and "LogME (evidence, not the decision): pretrained" in out.stdout
    assert "what the seeds' table says:" in out.stdout and "its record: wrong on 3 of the 3 tasks" in out.stdout

    assert {m["model"] for m in advice["models"]} == {"tiny", "efficientnet_lite0"}
    assert all(m["params"] > 0 and m["images_per_second"] > 0 for m in advice["models"])
    assert advice["models"][0]["probe_acc"] >= advice["models"][1]["probe_acc"]

    pocket, pick = advice["pocket_race"], advice["pick"]
    race = json.loads((tmp_path / "pocket_race" / "race.json").read_text())
    assert race["settings"]["seeds"] == 0 and not list((tmp_path / "pocket_race").rglob("confirm_seed*"))
    assert pick["strategy"] == pocket["ranked"][0]["strategy"] == race["cells"][0]["strategies"][0]["strategy"]
    assert pocket["ranked"][0]["val_acc_best"] >= pocket["ranked"][1]["val_acc_best"]
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "pocket_race").glob("race/*/*/result.json")]
    assert len(jobs) == 4 and {j["train_size"] for j in jobs} == {100} and {j["max_epochs"] for j in jobs} == {1}
    assert not list((tmp_path / "pocket_race").rglob("*.ckpt"))  # the trials' checkpoints, deleted once it finished
    first = [j for j in jobs if j["overrides"] and "strategy=full" in j["overrides"] and j["lr_head"] == 5e-4]
    assert len(first) == 1 and first[0]["lr_backbone"] == 3e-4  # full's tuned defaults, its first trial
    assert pick["command"].startswith(f"python train.py model=tiny data=synthetic paths.data_dir={tmp_path / 'data'}")
    assert f"strategy={pick['strategy']}" in pick["command"] and "-> start with" in out.stdout
    assert advice["full_race"]["estimated_seconds"] > 0 and advice["full_race"]["command"] in out.stdout

    summary = wandb_summary(next(tmp_path.glob("wandb/offline-run-*")))["summary"]
    assert summary["advise/probe_acc_pretrained"] == pytest.approx(advice["figures"]["probe_acc_pretrained"])
    assert all(summary[f"advise/{key}"] == pytest.approx(advice["figures"][key]) for key in scores)
    assert summary[f"advise/pocket/{pick['strategy']}/val_acc_best"] == pytest.approx(pocket["ranked"][0]["val_acc_best"])
    tiny = next(m for m in advice["models"] if m["model"] == "tiny")
    assert summary["advise/model/tiny/probe_acc"] == pytest.approx(tiny["probe_acc"])
