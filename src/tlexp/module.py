"""The LightningModule every strategy shares: backbone + new head, named stage groups, metrics.

A strategy only says *which stages train from which epoch* (``start_epochs``) and *at which
base rate* (``stage_lrs``); both become its ``FreezePlan``, which the FineTuning callback
and the ``StageLR`` scheduler apply.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from functools import cached_property, partial
from typing import Annotated

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from tlexp.backbone import feature_width
from tlexp.callbacks.finetuning import FineTuning
from tlexp.freeze_plan import BN_POLICIES, BN_TRAINABLE, FreezePlan
from tlexp.heads import HEAD_KIND, build_head
from tlexp.rules import BOOLEAN, POSITIVE_RATE, Checked, Rule, choice, number
from tlexp.schedules import SCHEDULES, StageLR, make_schedule
from tlexp.stages import HEAD, Stage, split_stages

LR_RATIO = Rule("a ratio in (0, 1]: the lowest backbone stage's rate / the top stage's", lambda v: number(v) and 0 < v <= 1)
LR_DECAY = Rule("null (strategy.lr_ratio sets the rates) or a factor in (0, 1] per stage further down",
                lambda v: v is None or (number(v) and 0 < v <= 1))


def stage_factors(count: int, lr_ratio: float = 1.0, lr_decay: float | None = None) -> list[float]:
    """Rate multipliers of ``count`` stages, top stage first. By default geometric from 1 at the top to
    ``lr_ratio`` at the lowest stage, so a schedule means the same on backbones with any number of stages;
    ``lr_decay``, when given, instead multiplies the rate by a fixed factor per stage further down."""
    if lr_decay is not None:
        return [lr_decay**depth for depth in range(count)]
    return [lr_ratio ** (depth / (count - 1)) for depth in range(count)] if count > 1 else [1.0] * count


def _returns_input(inputs, *args, **kwargs):
    return inputs


def _listed(name: str, entries: set[str]) -> bool:
    """Whether a ``no_weight_decay()`` entry names this parameter: exactly, as an enclosing module
    (``pos_embed`` for ``pos_embed.weight``) or as a wildcard pattern (XCiT's ``pos_embed.*``), as timm matches them."""
    return any(name.startswith(entry + ".") or fnmatchcase(name, entry) for entry in entries)


class TransferModule(Checked, L.LightningModule):
    """Backbone and head trained per stage; subclasses define the freeze schedule and the rates.

    A parameter's annotation declares what it accepts (``Annotated[float, Rule(...)]``, ``tlexp.rules``): the config
    is checked against it before anything is built, and a module built in Python before its ``__init__`` runs."""

    uses_pretrained_weights = True
    """Scratch sets this to False: the entry point then builds the backbone without weights."""
    data_defaults: dict[str, object] = {}
    """``data.*`` settings the strategy needs where the config leaves them null: the entry point builds the data with
    them (pseudo_label: ``unlabeled: rest``, the images it labels)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable = partial(torch.optim.AdamW, weight_decay=0.01),
        lr_head: Annotated[float, POSITIVE_RATE] = 1e-2,
        lr_backbone: Annotated[float, POSITIVE_RATE] = 1e-4,
        lr_ratio: Annotated[float, LR_RATIO] = 1.0,
        lr_decay: Annotated[float | None, LR_DECAY] = None,
        schedule: Annotated[str, choice(SCHEDULES)] = "warmup_cosine",
        warmup_fraction: Annotated[float, Rule("a share in [0, 1)", lambda v: number(v) and 0 <= v < 1)] = 0.1,
        head: Annotated[str, HEAD_KIND] = "linear",
        head_hidden: int = 256,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        bn_policy: Annotated[str, choice(BN_POLICIES)] = "frozen",
        bn_trainable: Annotated[str, choice(BN_TRAINABLE)] = "frozen_stats",
        stage_warmup: Annotated[bool, BOOLEAN] = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer"], logger=False)
        self.backbone = backbone
        self.head = build_head(head, feature_width(backbone), num_classes, head_hidden, head_dropout)
        self.stages: list[Stage] = split_stages(backbone, self.head)
        self.optimizer_factory = optimizer
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.target_test_acc = MulticlassAccuracy(num_classes, average="micro")  # data.target_domain's test split
        self.val_acc_best = MaxMetric()

    # --- what a strategy decides -------------------------------------------------------
    @property
    def backbone_stages(self) -> list[Stage]:
        return [stage for stage in self.stages if stage.name != HEAD]

    def start_epochs(self) -> dict[str, int | None]:
        """Epoch from which each stage trains (None: never). Default: everything from the start."""
        return {stage.name: 0 for stage in self.stages}

    def stage_lrs(self) -> dict[str, float]:
        """Base rate per stage: the head at ``lr_head``; backbone stages from ``lr_backbone`` at the top
        down to ``lr_backbone * lr_ratio`` at the lowest one (``stage_factors``; ``lr_decay`` per stage if set)."""
        stages = self.backbone_stages
        factors = reversed(stage_factors(len(stages), self.hparams.lr_ratio, self.hparams.lr_decay))
        return {**{stage.name: self.hparams.lr_backbone * f for stage, f in zip(stages, factors)}, HEAD: self.hparams.lr_head}

    def freeze_plan(self) -> FreezePlan:
        """The strategy's decisions, checked: everything else reads them through ``plan``."""
        return FreezePlan.of(self.stages, self.start_epochs(), self.stage_lrs(),
                             bn_policy=self.hparams.bn_policy, bn_trainable=self.hparams.bn_trainable)

    @cached_property
    def plan(self) -> FreezePlan:
        return self.freeze_plan()

    def export_network(self) -> nn.Sequential:
        """A plain copy of the network for ``tlexp-export``: ``Sequential(backbone=..., head=...)`` in eval mode, with
        timm's own state-dict keys. A strategy that adds modules to the backbone folds them into this copy (``Lora``,
        ``SSF``); the module itself is unchanged."""
        return nn.Sequential(OrderedDict(backbone=copy.deepcopy(self.backbone), head=copy.deepcopy(self.head))).eval()

    # --- Lightning -----------------------------------------------------------------------
    def configure_callbacks(self):
        return [FineTuning()]

    skipped: tuple[nn.Module, ...] = ()
    """The submodules ``forward`` passes through, as set by ``skipping`` (empty: the whole network runs)."""

    @contextmanager
    def skipping(self, modules: Sequence[nn.Module]):
        """Inside the block ``forward`` runs the network from the output of ``modules``, submodules that run first
        (the backbone's first stages, or the whole backbone): each returns its input, so ``self(x)`` takes ``x`` as
        what they would have computed. For inputs computed ahead of time (their outputs, stored); only ``forward``
        is affected: a module called directly (``self.backbone(images)``) runs as usual."""
        previous, self.skipped = self.skipped, tuple(modules)
        try:
            yield self
        finally:
            self.skipped = previous

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images (or, inside ``skipping``, the skipped modules' output) through backbone and head."""
        if not self.skipped:
            return self.head(self.backbone(inputs))
        for module in self.skipped:
            module.forward = _returns_input  # an instance attribute shadows the class's forward
        try:
            return self.head(self.backbone(inputs))
        finally:
            for module in self.skipped:
                del module.forward

    def _step(self, batch, accuracy: MulticlassAccuracy, split: str, prefix: str = "") -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.training_loss(images, logits, labels) if split == "train" else self.criterion(logits, labels)
        accuracy.update(logits, labels)  # only the epoch value is logged: no per-batch compute
        self.log(f"{split}/{prefix}loss", loss, on_step=False, on_epoch=True, prog_bar=split != "train",
                 batch_size=len(labels), sync_dist=split != "train", add_dataloader_idx=False)
        if split == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log(f"{split}/{prefix}acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels),
                 add_dataloader_idx=False)
        return loss

    def training_loss(self, inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training objective. Strategies that add a term (a penalty, soft targets) override it and
        log their terms; validation and test always report the plain cross-entropy, comparable across strategies."""
        return self.criterion(logits, labels)

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_acc, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_acc, "val")

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Test loader 1, where there is one, is the ``data.target_domain`` copy of the test split: ``test/target_*``."""
        if dataloader_idx:
            self._step(batch, self.target_test_acc, "test", prefix="target_")
        else:
            self._step(batch, self.test_acc, "test")

    def param_groups(self) -> list[dict]:
        """Two groups per stage, built once: ``<stage>`` (weights, with decay) and ``<stage>/no_decay``
        (norm and bias parameters, and those the backbone's ``no_weight_decay()`` names: no weight decay).
        ``batchnorm`` marks a group holding BatchNorm affine weights, which ``bn_policy=train`` trains in frozen stages."""
        rates = self.plan.base_lrs
        listed = set(getattr(self.backbone, "no_weight_decay", set)())
        groups = []
        for stage in self.stages:
            exempt = [p.ndim <= 1 or (stage.name != HEAD and _listed(name, listed))
                      for name, p in zip(stage.param_names, stage.params)]
            decay = [p for p, skip in zip(stage.params, exempt) if not skip]
            no_decay = [p for p, skip in zip(stage.params, exempt) if skip]
            affine = {id(p) for bn in stage.batchnorms for p in (bn.weight, bn.bias) if p is not None}
            for suffix, params, extra in (("", decay, {}), ("/no_decay", no_decay, {"weight_decay": 0.0})):
                if params:
                    groups.append({"params": params, "name": stage.name + suffix, "stage": stage.name, "lr": rates[stage.name],
                                   "batchnorm": any(id(p) in affine for p in params), **extra})
        return groups

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.param_groups())
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = StageLR(optimizer, make_schedule(self.hparams.schedule, total, self.hparams.warmup_fraction), self.plan,
                            steps_per_epoch=total // max(1, self.trainer.max_epochs), rewarm=self.hparams.stage_warmup,
                            warmup_steps=round(self.hparams.warmup_fraction * total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
