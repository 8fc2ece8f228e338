"""Domain-adversarial training, measured: the gradient reversal layer flips and scales the gradient, the
domain loss reaches the backbone negated and scaled by lambda (and the domain classifier unreversed),
lambda follows DANN's ramp, target batches are a seeded function of the step whose labels never reach a
loss, and a run without ``data.target_domain`` is refused naming the key."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import metric_columns, read_json
from test_finetuning import SEED

from tlexp.backbone import create_backbone
from tlexp.data import Synthetic
from tlexp.errors import InvalidValue
from tlexp.strategies import DANN
from tlexp.strategies.dann import GradientReversal, TargetBatches, grl_coefficient


def build(target_domain="invert", **kwargs):
    torch.manual_seed(SEED)
    backbone = create_backbone("test_efficientnet")
    data = Synthetic(image_size=32, val_size=32, batch_size=16, seed=SEED, target_domain=target_domain).prepare_for(backbone)
    return data, DANN(backbone, data.num_classes, target_domain=target_domain, **kwargs)


def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(7, 3, dtype=torch.float64)

    def downstream(features):
        return torch.tanh(features @ weights).square().sum()

    plain = torch.autograd.grad(downstream(x), x)[0]
    reversed_ = GradientReversal.apply(x, 0.37)
    assert torch.equal(reversed_, x)
    assert torch.allclose(torch.autograd.grad(downstream(reversed_), x)[0], -0.37 * plain)


def test_lambda_ramps_from_zero_to_the_domain_weight():
    assert grl_coefficient(0.0, 2.0) == 0.0
    assert grl_coefficient(0.5, 2.0) == pytest.approx(2.0 * (2 / (1 + math.exp(-5)) - 1))
    assert grl_coefficient(1.0, 2.0) == pytest.approx(2.0, rel=1e-4)
    assert all(grl_coefficient(p / 10, 1.0) < grl_coefficient((p + 1) / 10, 1.0) for p in range(10))


def grads(parameters, loss) -> list[torch.Tensor]:
    found = torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)
    return [g if g is not None else torch.zeros_like(p) for p, g in zip(parameters, found)]


def test_the_domain_loss_reaches_the_backbone_reversed_and_scaled():
    """d(total)/d(backbone) = d(CE)/d(backbone) - lambda * d(domain BCE)/d(backbone), while the domain
    classifier gets the plain d(BCE)/d(classifier): one adversarial step, against autograd without the layer."""
    data, module = build()
    module.eval()  # BatchNorm on running statistics: the same features in every pass
    source, labels = next(iter(data.train_dataloader()))
    target = TargetBatches(module.target_set(data), 16, SEED, data.normalize)(0)
    module._target = target
    logits = module(data.normalize(source))
    features = module._features
    backbone = list(module.backbone.parameters())
    classifier = list(module.domain_classifier.parameters())
    lam = 0.6
    domain, _ = module.domain_loss(features, len(labels), lam)
    total = module.criterion(logits, labels) + domain
    plain_bce = F.binary_cross_entropy_with_logits(module.domain_classifier(features).squeeze(1),
                                                   torch.cat([torch.zeros(len(labels)), torch.ones(len(target))]))
    ce_only, bce_backbone = grads(backbone, module.criterion(logits, labels)), grads(backbone, plain_bce)
    total_backbone = grads(backbone, total)
    assert torch.allclose(domain, plain_bce)
    assert sum(g.abs().sum() for g in bce_backbone) > 0
    for got, ce, bce in zip(total_backbone, ce_only, bce_backbone):
        assert torch.allclose(got, ce - lam * bce, atol=1e-6)
    for got, bce in zip(grads(classifier, total), grads(classifier, plain_bce)):
        assert torch.allclose(got, bce, atol=1e-7)
    domain_zero, _ = module.domain_loss(features, len(labels), 0.0)  # lambda = 0: the backbone sees CE only
    for got, ce in zip(grads(backbone, module.criterion(logits, labels) + domain_zero), ce_only):
        assert torch.allclose(got, ce, atol=1e-7)


def test_target_batches_are_a_seeded_function_of_the_step():
    data, module = build()
    dataset = module.target_set(data)
    batches = TargetBatches(dataset, 16, SEED, lambda x: x)
    again = TargetBatches(dataset, 16, SEED, lambda x: x)
    assert torch.equal(batches(3), again(3)) and not torch.equal(batches(3), batches(4))
    one_pass = torch.cat([batches(step) for step in range(batches.per_pass)])
    assert len(rows(one_pass)) == len(one_pass) == batches.per_pass * 16  # a pass draws each image at most once
    ranks = [TargetBatches(dataset, 16, SEED, lambda x: x, rank=r, world=2)(5) for r in (0, 1)]
    assert not rows(ranks[0]) & rows(ranks[1])


def rows(images) -> set[bytes]:
    return {bytes(image.contiguous().numpy()) for image in images}


def fit_steps(module, data, tmp_path, steps=1):
    L.seed_everything(SEED)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    return trainer, torch.nn.utils.parameters_to_vector(module.parameters()).detach().clone()


def test_target_labels_never_reach_the_loss(tmp_path):
    """The target set keeps no labels (-1); written over with random classes, training is bit-identical."""
    data, module = build()
    trainer, before = fit_steps(module, data, tmp_path)
    assert (module.target_set(data).labels == -1).all()
    assert {"train/loss_domain", "train/domain_acc", "train/grl_lambda"} <= set(trainer.callback_metrics)
    data, module = build()
    target = module.target_set(data)  # what training will draw from: the same dataset
    target.labels = torch.randint(0, data.num_classes, target.labels.shape)
    _, after = fit_steps(module, data, tmp_path)
    assert torch.equal(before, after)


def test_dann_without_a_target_domain_is_refused_naming_the_key(tmp_path, main_direct):
    with pytest.raises(InvalidValue) as error:
        build(target_domain=None)
    assert error.value.name == "target_domain" and "rotate" in error.value.accepted
    code, output = main_direct(tmp_path, "strategy=dann")
    assert code == 1
    assert "data.target_domain=None is not accepted" in output and "invert | rotate | blur | noise | contrast" in output
    assert read_json(tmp_path / "result.json")["status"] == "failed"


@pytest.mark.slow
def test_dann_end_to_end_on_an_inverted_target(strategy_sweep):
    """``train.py strategy=dann data.target_domain=invert``: the shared sweep's dann run, which is that command (with
    data.fraction=0.5 and lr logged every step, which change neither the record's fields nor the logged keys)."""
    run_dir = strategy_sweep[1]["dann"]
    record = read_json(run_dir / "result.json")
    assert record["status"] == "completed" and record["strategy"] == "dann"
    assert 0 <= record["target_test_acc"] <= 1 and 0 <= record["test_acc"] <= 1
    assert {"train/loss_domain", "train/domain_acc", "train/grl_lambda", "test/target_acc", "test/target_loss"} <= set(
        metric_columns(run_dir))
