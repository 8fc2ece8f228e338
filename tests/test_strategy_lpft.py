"""LP-FT, measured: its plan is gradual's with every stage at one milestone; through the probe epochs every backbone
weight and BatchNorm statistic stays bit-identical while the head trains at ``lr_probe``; then everything trains at
the fine-tuning rates; a resume across the switch is exact; a finished frozen run's head can start it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import run_config
from lightning.pytorch.callbacks import Callback
from test_finetuning import build, changed, resume_differences, snapshot, trainer

from tlexp.errors import ConfigError, InvalidValue
from tlexp.strategies import LPFT, Gradual
from tlexp.train import build as build_run

PROBE = dict(probe_epochs=1, max_epochs=2, lr_probe=0.02, lr_head=5e-4, lr_backbone=3e-4)


class AtEpochStart(Callback):
    """Per epoch, before its first step: the backbone's weights and BN buffers, and every group's rate."""

    def __init__(self):
        self.backbone, self.rates = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            epoch = trainer.current_epoch
            self.backbone[epoch] = snapshot(pl_module, [s.name for s in pl_module.backbone_stages])
            self.rates[epoch] = {g["stage"]: g["lr"] for g in trainer.optimizers[0].param_groups}


def test_plan_is_gradual_with_every_stage_at_one_milestone():
    lpft = build(LPFT, probe_epochs=2, max_epochs=4)[1]
    milestones = {stage.name: 2 for stage in lpft.backbone_stages}
    gradual = build(Gradual, milestones=milestones)[1]
    assert lpft.plan.start == gradual.plan.start == {**milestones, "head": 0}
    assert lpft.plan.phase_lr("head", 1) is None  # lr_probe unset: the head at lr_head throughout


def test_probe_keeps_the_backbone_bit_identical_then_everything_trains(tmp_path):
    """``bn_trainable=batch_stats``: once the backbone trains its running statistics move, so their staying put
    through the probe epoch is the freeze plan's doing. A constant schedule makes the rates the plan's."""
    datamodule, module = build(LPFT, **PROBE, schedule="constant", bn_trainable="batch_stats")
    stages = [s.name for s in module.backbone_stages]
    before = snapshot(module, stages)
    seen = AtEpochStart()
    trainer(2, tmp_path, [seen]).fit(module, datamodule=datamodule)
    assert changed(before, seen.backbone[1]) == set()  # weights and BN buffers, after the probe epoch and its validation
    moved = changed(seen.backbone[1], snapshot(module, stages))
    assert any("running_mean" in key for key in moved) and any(".bn" not in key for key in moved)
    assert {stage: rate for stage, rate in seen.rates[0].items() if rate} == {"head": PROBE["lr_probe"]}
    assert seen.rates[1]["head"] == PROBE["lr_head"]
    assert {rate for stage, rate in seen.rates[1].items() if stage != "head"} == {PROBE["lr_backbone"]}


def test_resume_across_the_switch_matches_an_uninterrupted_run(tmp_path):
    """From the probe epoch's checkpoint: the resumed run unfreezes the backbone and changes the head's rate itself."""
    assert resume_differences(tmp_path, LPFT, **PROBE, head_dropout=0.1) == []


@pytest.mark.parametrize("settings,key", [(dict(probe_epochs=2, max_epochs=2), "probe_epochs"),
                                          (dict(probe_epochs=-1), "probe_epochs"), (dict(lr_probe=0.0), "lr_probe")])
def test_bad_settings_are_refused(settings, key):
    with pytest.raises(InvalidValue, match=f"^{key}=") as error:
        build(LPFT, **settings)
    assert error.value.name == key


def lpft_module(run_dir, *overrides: str) -> LPFT:
    """``strategy=lpft`` built as ``train.train`` builds it (seeded: model=tiny's backbone is a seeded random init)."""
    cfg = run_config(run_dir, "strategy=lpft", *overrides)
    L.seed_everything(cfg.seed)
    return build_run(cfg)[1]


def test_head_from_a_finished_frozen_run(tmp_path, main_inprocess, teacher_run, restored_environ):
    """The frozen run's head starts the fine-tuning; a run whose backbone trained (``full``) is refused, as is a
    directory that holds no finished run."""
    code, output = main_inprocess(tmp_path / "probe", "strategy=frozen", "trainer.max_epochs=1")
    assert code == 0, output[-3000:]
    checkpoint = torch.load(next((tmp_path / "probe" / "checkpoints").glob("epoch*.ckpt")), weights_only=True)
    module = lpft_module(tmp_path / "lpft", "strategy.probe_epochs=0", f"strategy.probe_run={tmp_path / 'probe'}")
    module.setup("fit")
    assert all(torch.equal(value, checkpoint["state_dict"][f"head.{name}"]) for name, value in module.head.state_dict().items())
    for source, why in ((teacher_run, "is not this run's pretrained one"), (tmp_path, "no run directory")):
        module = lpft_module(tmp_path / "lpft", f"strategy.probe_run={source}")  # rebuilding a run needs no probe run
        with pytest.raises(ConfigError, match=why) as error:
            module.setup("fit")
        assert error.value.key == "strategy.probe_run"
