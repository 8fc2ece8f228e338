"""Schedules stated relative to the run: ``unfreeze_by`` (share of trainer.max_epochs after which every
stage trains) and ``lr_ratio`` (lowest stage's rate / top stage's) mean the same for any number of
backbone stages and epochs; the per-stage keys (``unfreeze_every``, ``milestones``, ``lr_decay``) still work."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import compose_config
from tlexp import config
from tlexp.backbone import create_backbone
from tlexp.errors import ConfigError, InvalidValue
from tlexp.module import stage_factors
from tlexp.strategies import Gradual
from tlexp.strategies.gradual import spread_starts

MODELS = {  # backbone stage count -> overrides (no weights: nothing is downloaded)
    5: ("model=timm", "model.name=test_resnet"),
    6: ("model=tiny",),
    8: ("model=timm", "model.name=efficientnet_lite0"),
}


@pytest.mark.parametrize("count, unfreeze_by, max_epochs, starts", [
    (8, 0.5, 8, [1, 1, 2, 2, 3, 3, 4, 4]),  # EfficientNet-Lite0, two stages per epoch, all from epoch 4
    (6, 0.5, 8, [1, 2, 2, 3, 4, 4]),
    (5, 0.5, 8, [1, 2, 3, 4, 4]),  # ResNet
    (8, 0.5, 3, [1, 1, 1, 1, 2, 2, 2, 2]),  # the default 3 epochs: every stage trains in the last one
    (8, 1.0, 8, [1, 2, 3, 4, 5, 6, 7, 7]),  # the last epoch at the latest
    (5, 0.25, 20, [1, 2, 3, 4, 5]),
    (5, 0.1, 30, [1, 2, 2, 3, 3]),  # 0.1 * 30 is 3.0000000000000004 in floating point: still 3
    (6, 0.5, 1, [0] * 6),  # one epoch: everything trains in it
    (6, 0.01, 8, [1] * 6),  # the head alone in epoch 0 at least
])
def test_spread_starts(count, unfreeze_by, max_epochs, starts):
    assert spread_starts(count, unfreeze_by, max_epochs) == starts


def last_start(unfreeze_by: float, max_epochs: int) -> int:
    """The epoch from which every stage trains: ceil(unfreeze_by * max_epochs), within [1, max_epochs - 1]."""
    return min(max_epochs - 1, max(1, math.ceil(round(unfreeze_by * max_epochs, 9))))


@pytest.mark.parametrize("count, max_epochs", itertools.product((1, 5, 6, 8, 12), (2, 3, 8, 20)))
@pytest.mark.parametrize("unfreeze_by", (0.1, 0.3, 0.5, 0.75, 1.0))
def test_every_stage_trains_by_the_share_whatever_the_stage_count(count, max_epochs, unfreeze_by):
    """The head alone in epoch 0; by epoch e, e / last of the stages train (rounded down), the lowest from ``last``."""
    starts = spread_starts(count, unfreeze_by, max_epochs)
    last = last_start(unfreeze_by, max_epochs)
    assert len(starts) == count and starts == sorted(starts) and starts[0] >= 1 and starts[-1] == last
    for epoch in range(last + 1):
        assert sum(start <= epoch for start in starts) == epoch * count // last


@pytest.mark.parametrize("count", (1, 2, 5, 6, 8))
def test_stage_factors_run_from_one_to_the_ratio_geometrically(count):
    factors = stage_factors(count, lr_ratio=0.01)
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.01 if count > 1 else 1.0, rel=1e-12)
    steps = [b / a for a, b in zip(factors, factors[1:])]
    assert steps == pytest.approx([0.01 ** (1 / max(count - 1, 1))] * len(steps), rel=1e-12)
    assert stage_factors(count, lr_ratio=0.01, lr_decay=0.5) == [0.5**k for k in range(count)]  # lr_decay wins


def build_strategy(*overrides: str):
    cfg = compose_config(*overrides)
    backbone = config.instantiate("model", cfg.model, img_size=cfg.data.image_size)
    return config.instantiate("strategy", cfg.strategy, backbone=backbone, num_classes=10)


@pytest.mark.parametrize("count, max_epochs", [(5, 8), (6, 3), (8, 3), (8, 8)])
def test_gradual_defaults_give_the_same_schedule_on_5_6_and_8_stages(count, max_epochs):
    """The shipped defaults: every stage trains once half the run is over, and the lowest stage's rate is
    lr_ratio times the top one's, on any backbone."""
    module = build_strategy("strategy=gradual", *MODELS[count], f"trainer.max_epochs={max_epochs}")
    cfg = compose_config("strategy=gradual")
    plan = module.plan
    backbone = list(plan.backbone_stages)
    assert len(backbone) == count
    starts = [plan.start[name] for name in reversed(backbone)]
    last = last_start(cfg.strategy.unfreeze_by, max_epochs)
    assert plan.start["head"] == 0 and starts == spread_starts(count, cfg.strategy.unfreeze_by, max_epochs)
    assert min(starts) == 1 and max(starts) == last
    assert plan.trainable(0) == ["head"] and plan.trainable(last) == [*backbone, "head"]
    rates = [plan.base_lrs[name] for name in reversed(backbone)]
    assert rates[0] == cfg.strategy.lr_backbone and rates[-1] == pytest.approx(cfg.strategy.lr_backbone * cfg.strategy.lr_ratio)
    assert plan.base_lrs["head"] == cfg.strategy.lr_head


@pytest.mark.parametrize("strategy", ("discriminative", "reinit"))
@pytest.mark.parametrize("count", sorted(MODELS))
def test_discriminative_rates_span_lr_ratio_on_any_stage_count(strategy, count):
    module = build_strategy(f"strategy={strategy}", *MODELS[count], "strategy.lr_ratio=0.02", "strategy.lr_backbone=1e-4")
    rates = [module.plan.base_lrs[name] for name in module.plan.backbone_stages]
    assert len(rates) == count and rates == sorted(rates)
    assert rates[-1] == 1e-4 and rates[0] == pytest.approx(2e-6, rel=1e-12)


def test_the_per_stage_keys_take_precedence():
    """unfreeze_every over unfreeze_by, milestones over both, lr_decay over lr_ratio."""
    every = build_strategy("strategy=gradual", "strategy.unfreeze_every=2", "strategy.lr_decay=0.5", "strategy.lr_backbone=1e-4").plan
    assert [every.start[s] for s in reversed(every.backbone_stages)] == [2, 4, 6, 8, 10, 12]
    assert [every.base_lrs[s] for s in reversed(every.backbone_stages)] == [1e-4 * 0.5**k for k in range(6)]
    named = build_strategy("strategy=gradual", "strategy.unfreeze_every=2", "strategy.milestones={blocks.4:1}").plan
    assert named.start == {"stem": None, "blocks.0": None, "blocks.1": None, "blocks.2": None, "blocks.3": None,
                           "blocks.4": 1, "head": 0}


def test_gradual_built_in_python_needs_the_run_length_for_unfreeze_by():
    backbone = create_backbone("test_efficientnet")
    with pytest.raises(InvalidValue, match="max_epochs") as error:
        Gradual(backbone, 10)
    assert "unfreeze_by" in str(error.value)
    assert Gradual(backbone, 10, unfreeze_every=1).plan.start["blocks.4"] == 1  # the per-stage form needs none


@pytest.mark.parametrize("override, key", [
    ("strategy.lr_ratio=0", "strategy.lr_ratio"),
    ("strategy.lr_ratio=1.5", "strategy.lr_ratio"),
    ("strategy.lr_ratio=null", "strategy.lr_ratio"),
    ("strategy.lr_decay=0", "strategy.lr_decay"),
    ("strategy.unfreeze_by=0", "strategy.unfreeze_by"),
    ("strategy.unfreeze_by=1.2", "strategy.unfreeze_by"),
    ("strategy.unfreeze_every=0", "strategy.unfreeze_every"),
])
def test_bad_schedule_values_name_the_key(override, key):
    cfg = compose_config("strategy=gradual", override)
    cfg.paths.output_dir = "/tmp/tlexp-test-schedule"
    with pytest.raises(ConfigError) as error:
        config.check(cfg)
    assert error.value.key == key and "accepted:" in str(error.value)


def test_run_record_holds_the_plan(tmp_path, run_task):
    """The run's record (result.json): the unfreeze epochs and rates the plan computed from the run's length and stage count."""
    record = run_task(tmp_path, "strategy=gradual", "model=timm", "model.name=test_resnet", "trainer.max_epochs=8",
                      "strategy.unfreeze_by=0.5", "strategy.lr_ratio=0.001", "strategy.lr_backbone=1e-4", "train=false", "test=false")
    assert record["unfreeze_epochs"] == {"stem": 4, "layer1": 4, "layer2": 3, "layer3": 2, "layer4": 1, "head": 0}
    assert record["lr_ratio"] == 0.001 and record["lr_decay"] is None  # a None field is left out of result.json
    rates = record["stage_lrs"]
    assert rates["layer4"] == 1e-4 and rates["stem"] == pytest.approx(1e-7)
    assert rates["layer3"] == pytest.approx(1e-4 * 0.001 ** 0.25)
    assert torch.tensor([rates[s] for s in ("stem", "layer1", "layer2", "layer3", "layer4")]).diff().gt(0).all()
