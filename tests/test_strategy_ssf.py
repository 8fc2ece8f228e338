"""The ssf strategy, measured: at the start the network is exactly the pretrained one; only the scales, the shifts and
the head train, and after training every pretrained weight and BatchNorm statistic is bit-identical; the exported
network (scales and shifts folded into their layers) is a plain timm network giving the same outputs within 1e-5, on
EfficientNet, ResNet and ViT; resume is exact; ``train.py strategy=ssf`` + ``tlexp-export`` and its result.json's
trainable count."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import read_json
from test_finetuning import resume_differences, train_split_off
from tlexp.backbone import create_backbone
from tlexp.export import load, locate, restore
from tlexp.export import main as export_main
from tlexp.freeze_plan import freeze
from tlexp.strategies import SSF

MODELS = ["test_efficientnet", "test_resnet", "test_vit"]


def images(backbone) -> torch.Tensor:
    return torch.randn(4, 3, *(backbone.pretrained_cfg["input_size"][1:] if "vit" in backbone.pretrained_cfg["architecture"]
                                else (32, 32)))


@pytest.mark.parametrize("name", MODELS)
def test_starts_as_the_pretrained_network_with_only_scales_shifts_and_head_trainable(name):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    pretrained = copy.deepcopy(backbone)
    module = SSF(backbone, 10).eval()
    inputs = images(backbone)
    with torch.no_grad():
        assert torch.equal(module.backbone(inputs), pretrained(inputs))
    freeze(module, epoch=0)
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    scales = {n for n, _ in module.named_parameters() if n.endswith((".ssf.scale", ".ssf.shift"))}
    assert trained == scales | {f"head.{n}" for n, _ in module.head.named_parameters()}
    assert len(scales) == 2 * len(module.scaled_layers) and module.scaled_layers
    assert module.plan.trainable_params(0) == sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_pretrained_weights_and_bn_statistics_bit_identical_after_training(tmp_path):
    train_split_off(tmp_path, SSF, ".ssf")


@pytest.mark.parametrize("name", MODELS)
def test_exported_network_folds_the_scales_and_shifts_with_the_same_outputs(name):
    torch.manual_seed(0)
    backbone = create_backbone(name)
    module = SSF(backbone, 10).eval()
    with torch.no_grad():  # trained-like values: at 1 and 0 the folding would be trivial
        for param_name, param in module.named_parameters():
            if ".ssf." in param_name:
                param.normal_(1.0 if param_name.endswith("scale") else 0.0, 0.2)
    inputs = images(backbone)
    exported = module.export_network()
    with torch.no_grad():
        assert (module(inputs) - exported(inputs)).abs().max() < 1e-5
    assert set(exported.backbone.state_dict()) == set(create_backbone(name).state_dict())  # a plain timm network
    assert not any(".ssf." in n for n in exported.state_dict()) and any(".ssf." in n for n in module.state_dict())
    fresh = create_backbone(name).eval()
    fresh.load_state_dict(exported.backbone.state_dict())  # no hook left behind: timm's network computes the same
    with torch.no_grad():
        assert torch.equal(fresh(inputs), exported.backbone(inputs))


def test_resume_matches_the_uninterrupted_run(tmp_path):
    assert resume_differences(tmp_path, SSF) == []


@pytest.mark.slow
def test_train_then_export_gives_a_plain_network_with_the_same_outputs(strategy_sweep, tmp_path):
    """``train.py strategy=ssf``: the shared sweep's ssf run; result.json counts the scales, shifts and head as trainable
    and the rest as frozen; ``tlexp-export`` (in this process) writes a network that gives the run's outputs."""
    run_dir, out = strategy_sweep[1]["ssf"], tmp_path / "export" / "model.pt"
    record = read_json(run_dir / "result.json")
    assert record["status"] == "completed" and record["strategy"] == "ssf"
    module, _ = restore(run_dir, locate(run_dir)[1])
    added = sum(p.numel() for n, p in module.named_parameters() if ".ssf." in n)
    head = sum(p.numel() for p in module.head.parameters())
    assert record["params_trainable"] == added + head and record["params_total"] == sum(p.numel() for p in module.parameters())
    assert export_main([str(run_dir), str(out)]) == 0
    network = load(out)
    assert isinstance(network, nn.Sequential) and sum(p.numel() for p in network.parameters()) == record["params_total"] - added
    inputs = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (module(inputs) - network(inputs)).abs().max() < 1e-5
