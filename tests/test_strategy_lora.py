"""The lora strategy, measured: the pretrained weights and BatchNorm statistics are bit-identical after
training while every adapter moves; under 5 % of the parameters train on EfficientNet-Lite0, ResNet-18
and ViT-Tiny; the merged network gives the adapted one's logits within 1e-5; resume is exact; and
``train.py strategy=lora`` + ``tlexp-export`` give a network that runs without peft."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import read_json
from test_errors import assert_failed_cleanly
from test_finetuning import resume_differences, build, changed, snapshot, trainer
from tlexp.backbone import create_backbone
from tlexp.errors import InvalidValue
from tlexp.export import load, locate, restore
from tlexp.export import main as export_main
from tlexp.freeze_plan import freeze
from tlexp.strategies import Lora


def base_and_adapters(module) -> tuple[list[str], list[str]]:
    backbone = [s.name for s in module.backbone_stages]
    return [n for n in backbone if not n.endswith(".lora")], [n for n in backbone if n.endswith(".lora")]


def test_base_weights_and_bn_statistics_bit_identical_after_training(tmp_path):
    datamodule, module = build(Lora)
    base, adapters = base_and_adapters(module)
    assert adapters == [f"{n}.lora" for n in base]  # every stage of the tiny EfficientNet has a 1x1 or a stem conv
    assert module.plan.trainable(0) == [*adapters, "head"] and module.plan.trainable(5) == [*adapters, "head"]
    before_base, before_trained = snapshot(module, base), snapshot(module, [*adapters, "head"])
    assert any(".bn" in k for k in before_base)  # the BatchNorm statistics are part of what must not move
    trainer(2, tmp_path).fit(module, datamodule=datamodule)
    assert changed(before_base, snapshot(module, base)) == set()
    assert changed(before_trained, snapshot(module, [*adapters, "head"])) == set(before_trained)
    assert all(not bn.training for stage in module.stages for bn in stage.batchnorms)  # eval mode: frozen statistics


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18", "vit_tiny_patch16_224"])
def test_trainable_share_below_5_percent(name):
    module = Lora(create_backbone(name), 10)
    freeze(module, epoch=0)
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == module.plan.trainable_params(0)
    adapters = sum(p.numel() for n, p in module.named_parameters() if ".lora_" in n)
    assert trainable == adapters + sum(p.numel() for p in module.head.parameters())
    print(f"{name}: {trainable:,} of {total:,} trainable ({trainable / total:.2%})")
    assert 0 < trainable / total < 0.05


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_vit"])
def test_merged_network_gives_the_adapted_logits(name):
    torch.manual_seed(0)
    backbone = create_backbone(name)
    module = Lora(backbone, 10, rank=4, alpha=16.0).eval()
    with torch.no_grad():  # trained-like adapters: peft starts lora_B at zero, which would merge trivially
        for param_name, param in module.named_parameters():
            if ".lora_" in param_name:
                param.normal_(0, 0.1)
    size = backbone.pretrained_cfg["input_size"][1:] if name == "test_vit" else (32, 32)
    images = torch.randn(4, 3, *size)
    merged = module.export_network()
    with torch.no_grad():
        adapted, plain = module(images), merged(images)
    assert (adapted - plain).abs().max() < 1e-5
    # a plain timm network: no peft wrappers, timm's own key names; the adapted module keeps its adapters
    fresh = create_backbone(name)
    assert set(merged.backbone.state_dict()) == set(fresh.state_dict())
    assert not any(".lora_" in n for n in merged.state_dict())
    assert any(".lora_" in n for n in module.state_dict())


def test_target_stages_choose_the_adapted_stages():
    def adapted(target_stages):
        return base_and_adapters(Lora(create_backbone("test_efficientnet"), 10, target_stages=target_stages))[1]

    assert adapted("top:2") == ["blocks.3.lora", "blocks.4.lora"]
    assert adapted(["stem", "blocks.2"]) == ["stem.lora", "blocks.2.lora"]
    module = Lora(create_backbone("test_efficientnet"), 10, target_stages="top:1", lr_lora=2e-3, lr_decay=0.5)
    assert module.plan.frozen_depth == 6 and module.plan.base_lrs["blocks.4.lora"] == 2e-3
    for bad in ("top:9", "blocks.9", ["blocks.9"], "some"):
        with pytest.raises(InvalidValue, match="target_stages") as error:
            Lora(create_backbone("test_efficientnet"), 10, target_stages=bad)
        assert "blocks.4" in str(error.value)  # the accepted stage names


@pytest.mark.parametrize("override,fragments", [
    ("strategy.target_stages=blocks.9", ["strategy.target_stages", "top:<k>"]),  # the form: checked before building
    ("strategy.target_stages=[blocks.9]", ["strategy.target_stages", "blocks.4"]),  # the names: by the model
    ("strategy.rank=0", ["strategy.rank", "an integer >= 1"]),
    ("strategy.alpha=-1", ["strategy.alpha", "a number > 0"]),
])
def test_bad_settings_name_the_key(tmp_path, main_direct, override, fragments):
    code, output = main_direct(tmp_path, "strategy=lora", override)
    assert_failed_cleanly(code, output, tmp_path, fragments)


def test_resume_matches_the_uninterrupted_run(tmp_path):
    assert resume_differences(tmp_path, Lora) == []  # the anchors / adapters come from the checkpoint


@pytest.mark.slow
def test_train_then_export_gives_a_plain_network_with_the_same_logits(strategy_sweep, tmp_path, capsys):
    """``train.py strategy=lora``: the shared sweep's lora run (its settings as conf/strategy/lora.yaml; data.fraction=0.5,
    which the export does not read); ``tlexp-export`` (``tlexp.export:main``, in this process) writes into tmp_path."""
    run_dir, out = strategy_sweep[1]["lora"], tmp_path / "export" / "model.pt"
    result = read_json(run_dir / "result.json")
    assert result["status"] == "completed" and result["strategy"] == "lora"
    assert result["params_trainable"] < result["params_total"] and result["frozen_depth"] == 1
    assert export_main([str(run_dir), str(out)]) == 0, capsys.readouterr().err[-3000:]
    network = load(out)
    assert isinstance(network, nn.Sequential) and not any(".lora_" in n for n in network.state_dict())
    _, checkpoint = locate(run_dir)
    assert str(checkpoint) == result["best_checkpoint"]
    module, _ = restore(run_dir, checkpoint)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (module(images) - network(images)).abs().max() < 1e-5
    saved = torch.load(out, weights_only=True)
    assert saved["strategy"] == "lora" and saved["num_classes"] == module.hparams.num_classes
    capsys.readouterr()
    assert export_main([str(tmp_path / "nothing"), str(out)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_replicas_stay_identical(ddp_multirun):
    """Two CPU processes (gloo): the replica check finds no difference, the BatchNorm statistics never move.
    The run is the lora job of the DDP multirun test_ddp.py reads too (``ddp_multirun``)."""
    assert ddp_multirun["returncode"] == 0, ddp_multirun["output"]
    run_dir = next(p for p in Path(ddp_multirun["sweep"]).iterdir() if "strategy=lora" in p.name)
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("ddp/replica_max_abs_diff")]
    assert len(rows) == 2 and all(float(r["ddp/replica_max_abs_diff"]) == 0.0 for r in rows)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    stats = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")}
    assert stats and all(torch.equal(v, torch.ones_like(v) if k.endswith("running_var") else torch.zeros_like(v))
                         for k, v in stats.items())
