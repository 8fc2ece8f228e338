"""Section 3a: tlexp ``gradual`` against Lightning's ``BackboneFinetuning`` on the same schedule."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning

from tlexp.benchmarks.common import EpochClock, Settings, make_backbone, make_data, trainer
from tlexp.stages import split_stages
from tlexp.strategies import Gradual

EPOCHS, UNFREEZE_AT = 3, 1
"""The head alone for one epoch, then the whole backbone, in both."""


class PlainModule(L.LightningModule):
    """The minimal module Lightning's BackboneFinetuning expects: ``backbone`` + head, one optimizer."""

    def __init__(self, backbone, num_classes: int, lr: float = 1e-3):
        super().__init__()
        self.backbone, self.head, self.lr = backbone, torch.nn.Linear(backbone.num_features, num_classes), lr
        self.criterion = torch.nn.CrossEntropyLoss()

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.01)


def section_gradual(settings: Settings) -> dict:
    results = {}
    for name in ("tlexp_gradual", "lightning_backbone_finetuning"):
        backbone = make_backbone(settings.model)
        datamodule = make_data(settings, backbone, settings.gradual_train_size, settings.val_size)
        clock = EpochClock(settings.device)
        callbacks = [clock]
        if name == "tlexp_gradual":
            stages = split_stages(backbone, torch.nn.Identity())[:-1]
            module = Gradual(backbone, datamodule.num_classes, milestones={s.name: UNFREEZE_AT for s in stages},
                             lr_head=1e-3, lr_backbone=1e-4, lr_decay=1.0, schedule="constant")  # no cache: BackboneFinetuning's work
        else:
            module = PlainModule(backbone, datamodule.num_classes, lr=1e-3)
            callbacks.append(BackboneFinetuning(unfreeze_backbone_at_epoch=UNFREEZE_AT, backbone_initial_lr=1e-4,
                                                lambda_func=lambda _: 1.0, should_align=False, train_bn=False))
        torch.manual_seed(0)
        trainer(settings, epochs=EPOCHS, val_batches=1.0, callbacks=callbacks).fit(module, datamodule=datamodule)
        results[name] = {"epoch_s": clock.seconds, "val_acc": clock.acc}
        print(f"  {name}: epoch s {[round(s, 2) for s in clock.seconds]}, val acc {[round(a, 4) for a in clock.acc]}", flush=True)
    return results
