"""strategy=gradual strategy.unfreeze_on=plateau: the next stage unfreezes when val/acc stalls, at the
epoch the recorded val curve says; the decisions travel in checkpoints, so a resume continues them."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from test_finetuning import SEED, Probe, build, trainer
from tlexp.strategies import Gradual
from tlexp.strategies.gradual import plateaued

PLATEAU = dict(unfreeze_on="plateau", patience=1, lr_decay=0.5, stop_at_plateau=False)


def test_plateau_rule():
    assert not plateaued([0.5], patience=1, min_delta=0.0)
    assert plateaued([0.5, 0.5], patience=1, min_delta=0.0)  # no gain over the best before
    assert not plateaued([0.5, 0.6], patience=1, min_delta=0.0)
    assert plateaued([0.5, 0.55], patience=1, min_delta=0.1)  # a gain below min_delta does not count
    assert not plateaued([0.5, 0.4, 0.6], patience=2, min_delta=0.0)
    assert plateaued([0.5, 0.4, 0.45], patience=2, min_delta=0.0)
    assert not plateaued([0.9, 0.5, 0.6], patience=1, min_delta=0.0, since=1)  # counted from the last unfreezing


class ValCurve(Callback):
    def __init__(self):
        self.history = []

    def on_validation_end(self, trainer, pl_module):
        self.history.append(float(trainer.callback_metrics["val/acc"]))


def expected_unfreezing(history: list[float], stages_top_down: list[str]) -> dict[str, int]:
    """The rule replayed on the recorded curve: after epoch e plateaus, the next stage trains from e + 1."""
    unfrozen, since = {}, 0
    for epoch in range(len(history)):
        if len(unfrozen) < len(stages_top_down) and plateaued(history[: epoch + 1], 1, 0.0, since):
            unfrozen[stages_top_down[len(unfrozen)]] = since = epoch + 1
    return unfrozen


def test_plateau_unfreezes_at_the_epoch_the_val_curve_says(tmp_path):
    datamodule, module = build(Gradual, **PLATEAU)
    curve, probe = ValCurve(), Probe()
    trainer(8, tmp_path, [curve, probe]).fit(module, datamodule=datamodule)
    top_down = [s.name for s in reversed(module.backbone_stages)]
    expected = expected_unfreezing(curve.history, top_down)
    assert expected, f"the val curve never stalled: {curve.history}"
    assert module.unfrozen_at == expected
    for epoch, seen in probe.epochs.items():  # the stages that trained in each epoch follow the decisions
        assert seen["trainable"] == {"head", *(s for s, e in expected.items() if e <= epoch)}, epoch
        assert seen["zero_lr"] == seen["frozen"], epoch
    assert module.plan.start["head"] == 0 and {s: module.plan.start[s] for s in expected} == expected


def test_stop_at_plateau_after_the_last_stage(tmp_path):
    datamodule, module = build(Gradual, **{**PLATEAU, "stop_at_plateau": True, "min_delta": 1.0})  # every epoch stalls
    fit = trainer(20, tmp_path)
    fit.fit(module, datamodule=datamodule)
    stages = len(module.backbone_stages)
    assert len(module.unfrozen_at) == stages
    # the first epoch after an unfreezing sets the level the next ones must beat: one stage every patience + 1 epochs
    assert sorted(module.unfrozen_at.values()) == [2 * k for k in range(1, stages + 1)]
    assert fit.current_epoch == 2 * stages + 2  # the last stage stalled too: stopped, not run to max_epochs=20


def test_resume_continues_the_decisions(tmp_path):
    epochs = 6
    datamodule, module = build(Gradual, **PLATEAU)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(epochs, tmp_path / "a", [every_epoch]).fit(module, datamodule=datamodule)
    uninterrupted = {k: v.clone() for k, v in module.state_dict().items()}
    datamodule, resumed = build(Gradual, seed=SEED + 1, **PLATEAU)
    datamodule.seed = SEED
    datamodule.train_set = None
    datamodule.setup()
    trainer(epochs, tmp_path / "b").fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt")
    assert resumed.unfrozen_at == module.unfrozen_at
    final = resumed.state_dict()
    assert [k for k in final if not torch.equal(final[k], uninterrupted[k])] == []


def test_the_run_records_the_epochs_as_trained(tmp_path, run_task):
    record = run_task(tmp_path, "strategy=gradual", "strategy.unfreeze_on=plateau", "strategy.min_delta=1.0",
                      "trainer.max_epochs=4")
    # every epoch stalls: blocks.4 from epoch 2; blocks.3 would start at 4, after the last epoch (3): not recorded
    assert record["unfreeze_epochs"] == {"stem": None, "blocks.0": None, "blocks.1": None, "blocks.2": None, "blocks.3": None,
                                         "blocks.4": 2, "head": 0}
