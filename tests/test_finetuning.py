"""The FineTuning callback, measured: frozen means bit-identical, the schedule unfreezes the
right stages at the right epochs with constant optimizer groups, and resume is exact."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tlexp.backbone import create_backbone
from tlexp.callbacks import EpochSeeder
from tlexp.data import Synthetic
from tlexp.strategies import Frozen, Gradual, Partial

SEED = 7


def build(strategy_cls, seed=SEED, **kwargs):
    torch.manual_seed(seed)
    backbone = create_backbone("test_efficientnet")
    datamodule = Synthetic(image_size=32, val_size=32, batch_size=32, seed=seed)
    datamodule.prepare_for(backbone)
    return datamodule, strategy_cls(backbone, datamodule.num_classes, **kwargs)


def trainer(epochs, root, callbacks=(), seed=SEED):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                     default_root_dir=root, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     callbacks=[EpochSeeder(seed), *callbacks])


def snapshot(module, stage_names):
    """Parameters and BN buffers (running stats, batch counters) of the named stages, copied."""
    state = {}
    for stage in module.stages:
        if stage.name in stage_names:
            for name, param in zip(stage.param_names, stage.params):
                state[name] = param.detach().clone()
            for i, bn in enumerate(stage.batchnorms):
                for buffer_name, buffer in bn.named_buffers():
                    state[f"{stage.name}.bn{i}.{buffer_name}"] = buffer.clone()
    return state


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def train_frozen_and_trained(tmp_path, module, datamodule, frozen: list[str], epochs: int = 2) -> tuple[set, set]:
    """Train ``epochs``; (what changed in the ``frozen`` stages: parameters and BatchNorm buffers; the parameters of
    the other stages that did not move). An exact freeze and a plan that trains what it says: both empty."""
    trained = [s.name for s in module.stages if s.name not in frozen]
    before_frozen, before_trained = snapshot(module, frozen), snapshot(module, trained)
    trainer(epochs, tmp_path).fit(module, datamodule=datamodule)
    params = {n for s in module.stages if s.name in trained for n in s.param_names}
    return changed(before_frozen, snapshot(module, frozen)), params - changed(before_trained, snapshot(module, trained))


def train_split_off(tmp_path, strategy_cls, suffix: str):
    """A ``ParameterEfficient`` strategy (bitfit, ssf) trained 2 epochs: its backbone stages come in pairs, each stage
    and its split-off ``<stage><suffix>``; the first stays bit-identical (BatchNorm buffers included), every
    parameter of the second moved. Returns the module."""
    datamodule, module = build(strategy_cls)
    frozen = [s.name for s in module.backbone_stages if not s.name.endswith(suffix)]
    assert [s.name for s in module.backbone_stages] == [n for f in frozen for n in (f, f"{f}{suffix}")]
    assert train_frozen_and_trained(tmp_path, module, datamodule, frozen) == (set(), set())
    return module


@pytest.mark.parametrize("strategy_cls,kwargs,frozen_names", [
    (Frozen, {}, "backbone"),
    (Partial, {"frozen_depth": 3}, 3),
])
def test_frozen_stages_are_bit_identical_and_trainable_ones_change(tmp_path, strategy_cls, kwargs, frozen_names):
    datamodule, module = build(strategy_cls, **kwargs)
    backbone = [s.name for s in module.backbone_stages]
    frozen = backbone if frozen_names == "backbone" else backbone[:frozen_names]
    trainable = [s.name for s in module.stages if s.name not in frozen]
    before_frozen, before_trainable = snapshot(module, frozen), snapshot(module, trainable)
    trainer(2, tmp_path).fit(module, datamodule=datamodule)  # validation runs each epoch in between
    assert changed(before_frozen, snapshot(module, frozen)) == set()
    moved = changed(before_trainable, snapshot(module, trainable))
    assert any(k.startswith("head.") for k in moved)
    weights = [k for k in before_trainable if ".bn" not in k]
    assert set(weights) <= moved, f"trainable parameters that did not move: {set(weights) - moved}"


def test_bn_policies_adapt_and_train(tmp_path):
    _, reference = build(Frozen)
    for policy in ("adapt", "train"):
        datamodule, module = build(Frozen, bn_policy=policy)
        names = [s.name for s in module.backbone_stages]
        before = snapshot(module, names)
        trainer(1, tmp_path).fit(module, datamodule=datamodule)
        moved = changed(before, snapshot(module, names))
        assert any("running_mean" in k for k in moved), policy
        conv_weights = {k for k in before if k.endswith("weight") and before[k].ndim > 1}
        assert not (moved & conv_weights), policy
        bn_affine = {k for k in before if before[k].ndim == 1 and "bn" in k.split(".")[-2] and "running" not in k}
        assert bool(moved & bn_affine) == (policy == "train"), policy


class Probe(Callback):
    """Records, at each epoch's first batch, which stages train, the groups and their rates."""

    def __init__(self):
        self.epochs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            optimizer = trainer.optimizers[0]
            self.epochs[trainer.current_epoch] = {
                "trainable": {s.name for s in pl_module.stages if all(p.requires_grad for p in s.params)},
                "frozen": {s.name for s in pl_module.stages if not any(p.requires_grad for p in s.params)},
                "groups": [g["name"] for g in optimizer.param_groups],
                "zero_lr": {g["stage"] for g in optimizer.param_groups if g["lr"] == 0.0},
            }


def test_gradual_unfreezes_top_down_with_constant_named_groups(tmp_path):
    datamodule, module = build(Gradual, unfreeze_every=1, lr_decay=0.5)
    probe = Probe()
    trainer(4, tmp_path, [probe]).fit(module, datamodule=datamodule)
    backbone = [s.name for s in module.backbone_stages]
    for epoch, seen in probe.epochs.items():
        expected = {"head", *backbone[len(backbone) - epoch:]} if epoch else {"head"}
        assert seen["trainable"] == expected, epoch
        assert seen["frozen"] | seen["trainable"] == {s.name for s in module.stages}
        assert seen["zero_lr"] == seen["frozen"], epoch
    groups = [seen["groups"] for seen in probe.epochs.values()]
    assert all(g == groups[0] for g in groups) and len(set(groups[0])) == len(groups[0])
    assert {name.split("/")[0] for name in groups[0]} == {s.name for s in module.stages}
    rates = module.stage_lrs()
    assert rates[backbone[-2]] == pytest.approx(rates[backbone[-1]] * 0.5)


def test_gradual_milestones(tmp_path):
    datamodule, module = build(Gradual, milestones={"blocks.4": 1, "blocks.2": 2})
    probe = Probe()
    trainer(3, tmp_path, [probe]).fit(module, datamodule=datamodule)
    assert probe.epochs[0]["trainable"] == {"head"}
    assert probe.epochs[1]["trainable"] == {"head", "blocks.4"}
    assert probe.epochs[2]["trainable"] == {"head", "blocks.4", "blocks.2"}


def resume_differences(tmp_path, strategy_cls, epochs: int = 2, **kwargs) -> list[str]:
    """Train ``epochs`` with a checkpoint per epoch; resume a differently initialised module from the first
    one; the state-dict keys whose tensors then differ from the uninterrupted run's (empty: an exact resume)."""
    datamodule, module = build(strategy_cls, **kwargs)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(epochs, tmp_path / "a", [every_epoch]).fit(module, datamodule=datamodule)
    uninterrupted = {k: v.clone() for k, v in module.state_dict().items()}
    datamodule, resumed = build(strategy_cls, seed=SEED + 1, **kwargs)  # other init: all must come from the checkpoint
    datamodule.seed = SEED
    datamodule.train_set = None
    datamodule.setup()
    trainer(epochs, tmp_path / "b").fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    final = resumed.state_dict()
    assert final.keys() == uninterrupted.keys()
    return [k for k in final if not torch.equal(final[k], uninterrupted[k])]


def test_resume_after_unfreeze_milestone_matches_uninterrupted_run(tmp_path):
    epochs = 4
    datamodule, module = build(Gradual, unfreeze_every=1, head_dropout=0.1)  # dropout: the RNG streams must match too
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1,
                                  filename="{epoch}")
    trainer(epochs, tmp_path / "a", [every_epoch]).fit(module, datamodule=datamodule)
    uninterrupted = {k: v.clone() for k, v in module.state_dict().items()}
    # epoch index 1 has unfrozen the top stage: resume from the end of it
    checkpoint = tmp_path / "ckpt" / "epoch=1.ckpt"
    assert torch.load(checkpoint, weights_only=True)["callbacks"]["FineTuning"]["unfrozen"] == ["blocks.4", "head"]
    # different init: all must come from the checkpoint
    datamodule, resumed = build(Gradual, unfreeze_every=1, head_dropout=0.1, seed=SEED + 1)
    datamodule.seed = SEED
    datamodule.train_set = None
    datamodule.setup()
    probe = Probe()
    trainer(epochs, tmp_path / "b", [probe]).fit(resumed, datamodule=datamodule, ckpt_path=checkpoint)
    assert min(probe.epochs) == 2 and probe.epochs[2]["trainable"] == {"head", "blocks.4", "blocks.3"}
    final = resumed.state_dict()
    assert final.keys() == uninterrupted.keys()
    differing = [k for k in final if not torch.equal(final[k], uninterrupted[k])]
    assert differing == []


def test_resume_with_a_different_schedule_is_refused(tmp_path):
    datamodule, module = build(Gradual, unfreeze_every=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(1, tmp_path, [checkpoint]).fit(module, datamodule=datamodule)
    datamodule, other = build(Gradual, unfreeze_every=2)
    with pytest.raises(ValueError, match="ckpt_path"):
        trainer(2, tmp_path, []).fit(other, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_resume_with_a_run_relative_schedule_matches_uninterrupted_run(tmp_path):
    """unfreeze_by/lr_ratio: the plan comes from the run's length, so the resumed module rebuilds the same one
    (three stages join at epoch 1, after the checkpoint, and three at epoch 2)."""
    schedule = dict(unfreeze_by=0.5, max_epochs=3, lr_ratio=0.01, head_dropout=0.1)
    assert build(Gradual, **schedule)[1].plan.start == {"stem": 2, "blocks.0": 2, "blocks.1": 2, "blocks.2": 1, "blocks.3": 1,
                                                        "blocks.4": 1, "head": 0}
    assert resume_differences(tmp_path, Gradual, epochs=3, **schedule) == []


def test_resume_with_another_run_length_is_refused(tmp_path):
    """A longer run spreads the stages differently: its plan is not the one the checkpoint was trained with."""
    datamodule, module = build(Gradual, unfreeze_by=0.5, max_epochs=4)
    trainer(1, tmp_path, [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]).fit(module, datamodule=datamodule)
    datamodule, longer = build(Gradual, unfreeze_by=0.5, max_epochs=8)
    with pytest.raises(ValueError, match="ckpt_path"):
        trainer(8, tmp_path / "b", []).fit(longer, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_resume_from_a_checkpoint_without_a_plan_continues_with_a_warning(tmp_path, caplog):
    """Checkpoints of an older tlexp hold only the unfrozen stages: a sweep resumed after an upgrade goes on."""
    datamodule, module = build(Gradual, unfreeze_every=1)
    trainer(1, tmp_path, [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]).fit(module, datamodule=datamodule)
    old = tmp_path / "old.ckpt"
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    del state["callbacks"]["FineTuning"]["plan"]
    torch.save(state, old)
    datamodule, resumed = build(Gradual, unfreeze_every=1)
    with caplog.at_level("WARNING", logger="tlexp"):
        trainer(2, tmp_path / "b", []).fit(resumed, datamodule=datamodule, ckpt_path=old)
    assert resumed.current_epoch == 2 and "holds no freeze plan" in caplog.text
