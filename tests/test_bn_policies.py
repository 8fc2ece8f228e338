"""BatchNorm of training stages, measured: under ``bn_trainable=frozen_stats`` no running statistic
moves in any strategy, through unfreezing and resume; under ``batch_stats`` those of training stages do."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn.modules.batchnorm import _BatchNorm

from test_finetuning import SEED, build, trainer
from tlexp.data import Synthetic
from tlexp.errors import InvalidValue
from tlexp.strategies import STRATEGIES, Gradual


def bn_buffers(module) -> dict[str, torch.Tensor]:
    """Every BatchNorm buffer (running mean, variance, batch counter) of the whole model, copied."""
    return {f"{name}.{buffer_name}": buffer.clone() for name, bn in module.named_modules() if isinstance(bn, _BatchNorm)
            for buffer_name, buffer in bn.named_buffers()}


def bn_affine(module) -> dict[str, torch.Tensor]:
    return {f"{name}.{p}": getattr(bn, p).detach().clone() for name, bn in module.named_modules()
            if isinstance(bn, _BatchNorm) and bn.affine for p in ("weight", "bias")}


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_frozen_stats_never_move_in_any_strategy(tmp_path, name, request):
    kwargs = {"gradual": {"unfreeze_every": 1}, "dann": {"target_domain": "invert"}}
    if name == "distill":
        kwargs["distill"] = {"teacher": str(request.getfixturevalue("teacher_run"))}
    datamodule, module = build(STRATEGIES[name], bn_trainable="frozen_stats", **kwargs.get(name, {}))
    data = {"pseudo_label": {"fraction": 0.25, "unlabeled": "rest"}, "dann": {"target_domain": "invert"}}  # unlabeled images
    if name in data:
        datamodule = Synthetic(image_size=32, val_size=32, batch_size=32, seed=SEED, **data[name]).prepare_for(module.backbone)
    buffers, affine = bn_buffers(module), bn_affine(module)
    assert buffers
    trainer(3, tmp_path).fit(module, datamodule=datamodule)  # gradual: head, then blocks.4, then blocks.3
    assert changed(buffers, bn_buffers(module)) == set()
    # the affine weights of training stages still learn (bitfit's: the betas); frozen, lora and ssf train no backbone
    # stage itself
    assert bool(changed(affine, bn_affine(module))) == (name not in ("frozen", "lora", "ssf"))


def test_batch_stats_update_training_stages_only(tmp_path):
    datamodule, module = build(STRATEGIES["partial"], bn_trainable="batch_stats", frozen_depth=3)
    frozen = {s.name for s in module.backbone_stages[:3]}
    prefixes = {s.name: [n.rsplit(".", 1)[0] for n in s.param_names] for s in module.stages}
    buffers = bn_buffers(module)
    trainer(1, tmp_path).fit(module, datamodule=datamodule)
    moved = changed(buffers, bn_buffers(module))
    in_frozen = {k for k in buffers if any(k.startswith(f"backbone.{p}.") for s in frozen for p in prefixes[s])}
    assert in_frozen and not (moved & in_frozen)
    assert any(k.endswith("running_mean") for k in moved - in_frozen)


def test_frozen_stats_survive_a_resume_across_unfreezing(tmp_path):
    datamodule, module = build(Gradual, unfreeze_every=1)
    buffers = bn_buffers(module)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(2, tmp_path / "a", [every_epoch]).fit(module, datamodule=datamodule)
    datamodule, resumed = build(Gradual, unfreeze_every=1, seed=SEED + 1)
    datamodule.seed, datamodule.train_set = SEED, None
    datamodule.setup()
    trainer(4, tmp_path / "b").fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    assert changed(buffers, bn_buffers(resumed)) == set()


def test_bad_bn_trainable_is_refused_by_the_plan():
    """The config layer names the key (tests/test_config.py); a module built in Python is refused by its plan."""
    with pytest.raises(InvalidValue, match="bn_trainable='eval'.*frozen_stats, batch_stats"):
        build(Gradual, bn_trainable="eval", max_epochs=4)[1].plan
