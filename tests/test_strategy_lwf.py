"""Learning without Forgetting, measured: the soft targets are the original model's outputs, the frozen
original stays bit-identical while the old head trains with the new one, and the loss is CE + lambda_old * KL."""

from __future__ import annotations

import pytest
import torch
from conftest import read_json, read_metrics
from test_finetuning import SEED, trainer

from tlexp.backbone import create_backbone
from tlexp.data import Synthetic
from tlexp.errors import InvalidValue
from tlexp.strategies import LwF
from tlexp.strategies.soft_targets import soft_target_kl

NAME = "test_efficientnet"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights file of the tiny model with its 1000-class classifier: the 'pretrained' model here."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(create_backbone(NAME, num_classes=1000).state_dict(), path)
    return str(path)


def build(weights, **kwargs):
    torch.manual_seed(SEED)
    backbone = create_backbone(NAME, weights=weights)
    datamodule = Synthetic(image_size=32, val_size=32, batch_size=32, seed=SEED)
    datamodule.prepare_for(backbone)
    return datamodule, LwF(backbone, datamodule.num_classes, model_name=NAME, weights=weights, **kwargs)


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_soft_targets_are_the_original_models_outputs(weights):
    datamodule, module = build(weights)
    original = create_backbone(NAME, weights=weights, num_classes=1000).eval()
    images = datamodule.normalize(next(iter(datamodule.train_dataloader()))[0])
    module.eval()
    with torch.no_grad():
        targets = module.original(images)
        assert targets.shape == (len(images), 1000)
        assert torch.allclose(targets, original(images), atol=1e-6)
        assert torch.equal(module.old_head.weight, original.get_classifier().weight)
        module(images)  # at the start the old head on the shared backbone *is* the original model: no old-task loss
        assert soft_target_kl(module.old_head(module._features), targets, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_loss_is_ce_plus_lambda_old_times_kl(weights):
    datamodule, module = build(weights, lambda_old=2.5, temperature=3.0)
    images, labels = next(iter(datamodule.train_dataloader()))
    images = datamodule.normalize(images)
    with torch.no_grad():
        # move away from the start so both terms are nonzero
        torch.nn.utils.vector_to_parameters(torch.randn(sum(p.numel() for p in module.head.parameters())), module.head.parameters())
        module.old_head.weight.add_(torch.randn_like(module.old_head.weight))
        logits = module(images)
        features = module._features
        loss = module.training_loss(images, logits, labels)
        old = soft_target_kl(module.old_head(features), module.original(images), 3.0)
    assert old > 0 and torch.allclose(loss, module.criterion(logits, labels) + 2.5 * old)


def test_original_frozen_and_old_head_trains_with_the_new_head(tmp_path, weights):
    datamodule, module = build(weights)
    original = state(module.original.model)
    old_head, head = module.old_head.weight.detach().clone(), torch.nn.utils.parameters_to_vector(module.head.parameters()).detach().clone()
    head_stage = module.stages[-1]
    assert any(p is module.old_head.weight for p in head_stage.params) and "old_head.weight" in head_stage.param_names
    assert not any(key.startswith("original") for key in module.state_dict())
    trainer(2, tmp_path).fit(module, datamodule=datamodule)
    after = state(module.original.model)
    assert all(torch.equal(original[k], after[k]) for k in original)
    assert not any(p.requires_grad for p in module.original.model.parameters())
    assert not torch.equal(old_head, module.old_head.weight) and not torch.equal(
        head, torch.nn.utils.parameters_to_vector(module.head.parameters()))
    groups = module.trainer.optimizers[0].param_groups
    assert any(p is module.old_head.weight for g in groups if g["stage"] == "head" for p in g["params"])


def test_bad_settings_are_refused(weights):
    for key, value in (("lambda_old", -1.0), ("temperature", 0.0)):
        with pytest.raises(InvalidValue) as error:
            build(weights, **{key: value})
        assert error.value.name == key
    with pytest.raises(InvalidValue) as error:  # a classifier that does not fit this backbone's features
        LwF(create_backbone(NAME), 4, model_name="test_resnet")
    assert error.value.name == "model_name"


def test_lwf_end_to_end_and_resume(tmp_path, main_direct):
    """The job strategy=lwf on the tiny model (random weights: the mechanism, not the result); then 1 more
    epoch resumed from last.ckpt (the old head from the checkpoint, the frozen original rebuilt). In this process
    (``main_direct``: the job train.py runs, result.json and metrics.csv included, without Hydra's runtime, which
    neither run uses); train.py itself runs lwf in the shared sweep (test_strategies_e2e.py)."""
    first = tmp_path / "first"
    code, output = main_direct(first, "strategy=lwf", "trainer.max_epochs=1")
    assert code == 0, output[-6000:]
    record = read_json(first / "result.json")
    assert record["status"] == "completed" and 0 <= record["test_acc"] <= 1
    assert any("train/loss_old" in row for row in read_metrics(first))
    resumed = tmp_path / "resumed"
    code, output = main_direct(resumed, "strategy=lwf", "trainer.max_epochs=2", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    assert code == 0, output[-6000:]
    record = read_json(resumed / "result.json")
    assert record["status"] == "completed" and record["resumed_from"]
    history = read_metrics(resumed)  # the first run's epoch (continued history), then the resumed run's
    assert {int(row["epoch"]) for row in history if "train/loss_old" in row} == {0, 1}
    assert [row for row in history if row["epoch"] == 0] == [row for row in read_metrics(first) if row["epoch"] == 0]
