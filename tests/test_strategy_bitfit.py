"""The bitfit strategy, measured: exactly the backbone's biases (BatchNorm's betas among them) and the head train, on
EfficientNet, ResNet and ViT; after training every other weight and every BatchNorm statistic is bit-identical and
every bias has moved; resume is exact."""

from __future__ import annotations

import pytest

from test_finetuning import resume_differences, train_split_off
from tlexp.backbone import create_backbone
from tlexp.freeze_plan import freeze
from tlexp.strategies import BitFit


def trained_names(module) -> set[str]:
    """The parameters that train in the first epoch, by their name in the module."""
    freeze(module, epoch=0)
    return {name for name, param in module.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_vit", "tf_efficientnet_lite0"])
def test_exactly_the_biases_and_the_head_train(name):
    module = BitFit(create_backbone(name), 10)
    biases = {f"backbone.{n}" for n, _ in module.backbone.named_parameters() if n.endswith(".bias")}
    assert trained_names(module) == biases | {f"head.{n}" for n, _ in module.head.named_parameters()}
    assert module.plan.trainable_params(0) == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert module.plan.trainable(0) == [s.name for s in module.stages if s.name.endswith(".biases")] + ["head"]
    if name == "tf_efficientnet_lite0":  # no convolution has a bias: the BatchNorm betas are all BitFit trains
        norms = {f"backbone.{n}.bias" for n, m in module.backbone.named_modules() if type(m).__name__ == "BatchNormAct2d"}
        assert biases == norms


def test_weights_and_bn_statistics_bit_identical_after_training_and_every_bias_moved(tmp_path):
    module = train_split_off(tmp_path, BitFit, ".biases")
    assert all(not bn.training for stage in module.stages for bn in stage.batchnorms)  # bn_policy=frozen: eval mode


def test_resume_matches_the_uninterrupted_run(tmp_path):
    assert resume_differences(tmp_path, BitFit) == []
