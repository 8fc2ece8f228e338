"""Batch Spectral Shrinkage, measured: the penalty is the squared smallest singular values of the batch's pooled
features (against a hand-computed value), it is added to the loss at ``bss_weight``, ``bss_weight=0`` trains bit for
bit like ``full``, and a resume is exact."""

from __future__ import annotations

import math

import pytest
import torch
from test_finetuning import build, resume_differences, trainer

from tlexp.errors import InvalidValue
from tlexp.strategies import BSS, Full
from tlexp.strategies.bss import spectral_penalty


def test_penalty_is_the_squared_smallest_singular_values():
    """[[1, 2], [3, 4]]: F^T F = [[10, 14], [14, 20]], eigenvalues (the squared singular values) 15 -+ sqrt(221)."""
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert spectral_penalty(features, 1).item() == pytest.approx(15 - math.sqrt(221), rel=1e-4)
    assert spectral_penalty(features, 2).item() == pytest.approx(30, rel=1e-6)  # all: the squared Frobenius norm
    assert spectral_penalty(features, 5).item() == pytest.approx(30, rel=1e-6)  # k beyond the rank: all of them
    wide = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]])  # (batch 2, width 3): singular values 3 and 0.5
    assert spectral_penalty(wide, 1).item() == pytest.approx(0.25, rel=1e-6)


def test_training_loss_adds_the_weighted_penalty_of_the_pooled_features():
    datamodule, module = build(BSS, bss_weight=0.5, bss_k=2)
    images, labels = next(iter(datamodule.train_dataloader()))
    images = datamodule.normalize(images)
    module.train()
    logits = module(images)
    loss = module.training_loss(images, logits, labels)
    expected = module.criterion(logits, labels) + 0.5 * spectral_penalty(module.backbone(images), 2)
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the penalty's gradient reaches the backbone
    assert all(p.grad is not None for p in module.backbone.parameters() if p.requires_grad)


def test_weight_zero_trains_like_full(tmp_path):
    states = []
    for strategy, kwargs in ((BSS, {"bss_weight": 0.0}), (Full, {})):
        datamodule, module = build(strategy, **kwargs)
        trainer(1, tmp_path / strategy.__name__).fit(module, datamodule=datamodule)
        states.append(module.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[1])


@pytest.mark.parametrize("key,value,accepted", [("bss_weight", -0.1, "a weight >= 0"), ("bss_k", 0, "an integer >= 1")])
def test_bad_settings_are_refused(key, value, accepted):
    with pytest.raises(InvalidValue, match=f"{key}=.* accepted: {accepted}"):
        build(BSS, **{key: value})


def test_resume_matches_an_uninterrupted_run(tmp_path):
    assert resume_differences(tmp_path, BSS, bss_weight=0.1) == []
