"""The l2sp strategy, measured: the penalty is zero at the pretrained weights, its gradient is
``alpha * (w - w0)`` on the backbone (towards the pretrained weights) and ``beta * w`` on the head,
the optimizer decays nothing, and the pretrained weights travel in checkpoints so resume is exact."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import read_json, read_metrics
from test_errors import assert_failed_cleanly
from test_finetuning import resume_differences

from tlexp.backbone import create_backbone
from tlexp.errors import InvalidValue
from tlexp.strategies import L2SP

ALPHA, BETA = 0.1, 0.01


def l2sp(**kwargs) -> L2SP:
    torch.manual_seed(0)
    return L2SP(create_backbone("test_efficientnet"), 10, **{"alpha": ALPHA, "beta": BETA, **kwargs})


def test_penalty_is_zero_at_the_pretrained_weights():
    assert l2sp(beta=0.0).penalty().item() == 0.0
    module = l2sp()
    head = sum(p.pow(2).sum() for p in module.head.parameters())
    assert torch.equal(module.penalty(), BETA / 2 * head)  # the backbone term adds exactly 0


def test_gradient_points_to_the_pretrained_weights():
    module = l2sp()
    pretrained = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    with torch.no_grad():
        for param in module.backbone.parameters():
            param.add_(torch.randn_like(param))
    module.penalty().backward()
    for name, param in module.backbone.named_parameters():
        torch.testing.assert_close(param.grad, ALPHA * (param.detach() - pretrained[name]), rtol=1e-6, atol=0)
    for param in module.head.parameters():
        torch.testing.assert_close(param.grad, BETA * param.detach(), rtol=1e-6, atol=0)
    distance = sum((p - pretrained[n]).pow(2).sum() for n, p in module.backbone.named_parameters()).item()
    with torch.no_grad():  # one plain gradient step moves every backbone weight towards its pretrained value
        for param in module.backbone.parameters():
            param.sub_(param.grad)
    closer = sum((p - pretrained[n]).pow(2).sum() for n, p in module.backbone.named_parameters()).item()
    assert closer == pytest.approx((1 - ALPHA) ** 2 * distance, rel=1e-5)


def test_pretrained_weights_are_buffers_not_parameters():
    module = l2sp()
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in [*module.backbone.parameters(),
                                                                                  *module.head.parameters()])
    anchors = [k for k in module.state_dict() if k.startswith("anchor.")]
    assert len(anchors) == len(list(module.backbone.parameters()))
    module.double()  # buffers follow the module (as to a device)
    assert all(b.dtype == torch.float64 for b in module.anchor.buffers())


@pytest.mark.parametrize("optimizer,decay", [(partial(torch.optim.AdamW), 0.01),
                                             (partial(torch.optim.AdamW, weight_decay=1e-4), 1e-4),
                                             (partial(torch.optim.SGD, lr=0.1, weight_decay=0.1), 0.1)])
def test_optimizer_weight_decay_is_refused(optimizer, decay):
    with pytest.raises(InvalidValue, match=r"accepted: 0.0 \(L2-SP's penalty replaces") as error:
        l2sp(optimizer=optimizer)
    assert error.value.name == "optimizer.weight_decay" and error.value.value == decay
    l2sp(optimizer=partial(torch.optim.SGD, lr=0.1))  # SGD decays nothing by default


@pytest.mark.parametrize("key,value", [("alpha", -0.1), ("beta", "x")])
def test_negative_strength_is_refused(key, value):
    with pytest.raises(InvalidValue, match=f"{key}=.* accepted: a penalty strength >= 0"):
        l2sp(**{key: value})


def test_weight_decay_config_error_names_the_key(tmp_path, main_direct):
    code, output = main_direct(tmp_path / "run", "strategy=l2sp", "strategy.optimizer.weight_decay=0.01")
    assert_failed_cleanly(code, output, tmp_path / "run", ["strategy.optimizer.weight_decay=0.01 ", "0.0"])


def test_resume_restores_the_pretrained_weights_and_matches_an_uninterrupted_run(tmp_path):
    assert resume_differences(tmp_path, L2SP, alpha=ALPHA) == []  # the anchors / adapters come from the checkpoint


@pytest.mark.slow
def test_l2sp_end_to_end(strategy_sweep):
    """``train.py strategy=l2sp``: the shared sweep's l2sp run (2 epochs, conf/strategy/l2sp.yaml: alpha 0.01, beta 0.01,
    no weight decay). What is asserted holds for any alpha >= 0: the head's term, beta / 2 * |w|^2, keeps the penalty
    above 0, and it is logged once per epoch (on_epoch) whatever data.fraction and log_every_n_steps are."""
    run_dir = strategy_sweep[1]["l2sp"]
    record = read_json(run_dir / "result.json")
    assert record["status"] == "completed" and record["strategy"] == "l2sp"
    assert record["weight_decay"] == 0.0 and record["params_trainable"] == record["params_total"]
    penalties = [r["train/l2sp_penalty"] for r in read_metrics(run_dir) if "train/l2sp_penalty" in r]
    assert len(penalties) == 2 and all(0 < v < math.inf for v in penalties)
