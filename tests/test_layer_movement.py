"""Which layers moved, measured: CKA and weight distance are right on known cases, and in a partial run
the frozen stages read exactly 0 and 1 while the training ones move."""

from __future__ import annotations

import pytest
import torch

from test_finetuning import build, trainer
from tlexp.callbacks import LayerMovement
from tlexp.callbacks.layer_movement import linear_cka, relative_distance
from tlexp.stages import stage_outputs_modules
from tlexp.strategies import SSF, BitFit, Partial


def test_linear_cka_known_cases():
    torch.manual_seed(0)
    x = torch.randn(64, 20)
    rotation, _ = torch.linalg.qr(torch.randn(20, 20))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ rotation + 1) == pytest.approx(1.0)  # invariant to scale, rotation and shift
    assert linear_cka(x, torch.randn(64, 20)) < 0.5
    assert linear_cka(x.view(64, 5, 2, 2), x) == pytest.approx(1.0)  # feature maps are flattened per example


def test_relative_distance():
    start = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]
    assert relative_distance([torch.tensor([3.0, 0.0]), torch.tensor([4.0])], start) == 0.0
    assert relative_distance([torch.tensor([3.0, 5.0]), torch.tensor([4.0])], start) == pytest.approx(1.0)


def test_a_stage_output_is_its_common_parent_or_its_modules_in_order():
    _, module = build(Partial, frozen_depth=3)
    stages = {s.name: s for s in module.stages}
    backbone = module.backbone
    assert stage_outputs_modules(backbone, stages["blocks.2"].param_names) == [backbone.blocks[2]]
    assert stage_outputs_modules(backbone, stages["stem"].param_names) == [backbone.conv_stem, backbone.bn1]


def test_frozen_stages_do_not_move_and_training_ones_do(tmp_path):
    datamodule, module = build(Partial, frozen_depth=3)
    fit = trainer(2, tmp_path, [LayerMovement(batch_size=16)])
    fit.fit(module, datamodule=datamodule)
    metrics = fit.callback_metrics
    backbone_stages = [s.name for s in module.backbone_stages]
    for index, stage in enumerate(backbone_stages):
        distance, cka = float(metrics[f"movement/{stage}/weight_distance"]), float(metrics[f"movement/{stage}/cka"])
        if index < 3:
            assert distance == 0.0 and cka == pytest.approx(1.0, abs=1e-6), stage
        else:
            assert distance > 0, stage
    assert float(metrics[f"movement/{backbone_stages[-1]}/cka"]) < 1.0


@pytest.mark.parametrize("strategy", [BitFit, SSF])
def test_parameters_trained_apart_move_their_backbone_stage(tmp_path, strategy):
    """BitFit's biases and SSF's scales train as stages of their own (``<stage>.biases``); the movement is still per
    backbone stage, the same stages as any strategy's, with those parameters counted in the stage they belong to."""
    datamodule, module = build(strategy)
    fit = trainer(1, tmp_path, [LayerMovement(batch_size=16)])
    fit.fit(module, datamodule=datamodule)
    stages = [stage.name for stage in build(Partial)[1].backbone_stages]
    assert {key.split("/")[1] for key in fit.callback_metrics if key.startswith("movement/")} == set(stages)
    assert all(float(fit.callback_metrics[f"movement/{stage}/weight_distance"]) > 0 for stage in stages)
    assert float(fit.callback_metrics[f"movement/{stages[-1]}/cka"]) < 1.0
