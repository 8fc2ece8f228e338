"""tlexp-advise, measured: the divergence is zero where the target statistics are the source's, the
decision table's rows map to tlexp settings, and a run on the tiny model prints, writes and logs its advice (with the
transferability scores beside the probe)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO, subprocess_env
from test_sweep import wandb_summary

from tlexp.advise import domain_distance, gaussian_divergence, recommend
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


@pytest.mark.slow
def test_advise_prints_writes_and_logs(tmp_path):
    out = subprocess.run([PYTHON, "-m", "tlexp.advise", "model=tiny", "data=synthetic", "logger=wandb",
                          f"hydra.run.dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"], cwd=REPO,
                         env=subprocess_env(WANDB_MODE="offline"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "recommended: python train.py strategy=" in out.stdout and "linear probe: pretrained features" in out.stdout
    advice = json.loads((tmp_path / "advice.json").read_text())
    assert advice["figures"]["train_size"] > 0 and set(advice["figures"]["domain_distance"]) >= {"stem"}
    assert "LogME (evidence, not the decision): pretrained" in out.stdout and "k-NN probe" in out.stdout
    scores = ("logme_pretrained", "logme_random", "knn_acc_pretrained", "knn_acc_random")
    assert all(math.isfinite(advice["figures"][key]) for key in scores)
    assert all(0 <= advice["figures"][key] <= 1 for key in scores[2:])
    summary = wandb_summary(next(tmp_path.glob("wandb/offline-run-*")))["summary"]
    assert summary["advise/probe_acc_pretrained"] == pytest.approx(advice["figures"]["probe_acc_pretrained"])
    assert all(summary[f"advise/{key}"] == pytest.approx(advice["figures"][key]) for key in scores)
