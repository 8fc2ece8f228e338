"""The transfer strategies. Each differs from the shared base only in its freeze schedule,
its rates or its initialisation; everything else lives in ``TransferModule``."""

from __future__ import annotations

import torch

from tlexp.errors import ConfigError
from tlexp.feature_cache import FeatureCache, check_setting, resolve
from tlexp.module import TransferModule
from tlexp.stages import HEAD


class Scratch(TransferModule):
    """Same architecture, random initialisation, everything trainable."""

    uses_pretrained_weights = False


class Full(TransferModule):
    """Fine-tune everything; the backbone at a rate 10-100x below the head's."""


class Discriminative(TransferModule):
    """Everything trainable from the start, rates decayed by ``lr_decay`` per stage downwards."""


class Frozen(TransferModule):
    """Feature extraction / linear probe: only the new head trains.

    ``cache_features`` (auto | true | false): compute the backbone's features once and train
    the head on them (see ``tlexp.feature_cache``), stored under ``cache_dir`` (None: memory).
    """

    def __init__(self, *args, cache_features: bool | str = "auto", cache_dir: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        check_setting(cache_features)
        if cache_features is True:  # refuse early what the module alone can tell (augmentation: at setup)
            resolve(True, self.hparams.bn_policy, augment=False, backbone=self.backbone)
        self.hparams.cache_features = cache_features
        self.hparams.cache_dir = cache_dir

    def unfreeze_epochs(self):
        return {stage.name: 0 if stage.name == HEAD else None for stage in self.stages}

    def configure_callbacks(self):
        return [*super().configure_callbacks(),
                FeatureCache(self.hparams.cache_features, self.hparams.cache_dir, self.hparams.bn_policy)]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images (N x C x H x W) through backbone and head; cached features (N x F) through the head."""
        return self.head(inputs) if inputs.ndim == 2 else super().forward(inputs)


class Partial(TransferModule):
    """The first ``frozen_depth`` backbone stages stay frozen, the rest train from the start."""

    def __init__(self, *args, frozen_depth: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        count = len(self.backbone_stages)
        if not (isinstance(frozen_depth, int) and 0 <= frozen_depth <= count):
            raise ConfigError("strategy.frozen_depth", frozen_depth, f"an integer in [0, {count}] (backbone stages: {[s.name for s in self.backbone_stages]})")
        self.hparams.frozen_depth = frozen_depth

    def unfreeze_epochs(self):
        frozen = {stage.name for stage in self.backbone_stages[: self.hparams.frozen_depth]}
        return {stage.name: None if stage.name in frozen else 0 for stage in self.stages}


class Gradual(TransferModule):
    """ULMFiT gradual unfreezing: the head first, then one more stage from the top every
    ``unfreeze_every`` epochs, or at the epochs of an explicit ``milestones`` mapping
    (stage name -> epoch; stages it does not name stay frozen)."""

    def __init__(self, *args, unfreeze_every: int = 1, milestones: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not (isinstance(unfreeze_every, int) and unfreeze_every >= 1):
            raise ConfigError("strategy.unfreeze_every", unfreeze_every, "an integer >= 1")
        names = [stage.name for stage in self.backbone_stages]
        milestones = dict(milestones) if milestones else None
        for name, epoch in (milestones or {}).items():
            if name not in names:
                raise ConfigError("strategy.milestones", name, f"stage names {names}")
            if not (isinstance(epoch, int) and epoch >= 0):
                raise ConfigError(f"strategy.milestones.{name}", epoch, "an epoch number >= 0")
        self.hparams.unfreeze_every = unfreeze_every
        self.hparams.milestones = milestones

    def unfreeze_epochs(self):
        if self.hparams.milestones:
            epochs = {stage.name: self.hparams.milestones.get(stage.name) for stage in self.backbone_stages}
        else:
            top_down = reversed(self.backbone_stages)
            epochs = {stage.name: (k + 1) * self.hparams.unfreeze_every for k, stage in enumerate(top_down)}
        return {**{stage.name: epochs.get(stage.name) for stage in self.backbone_stages}, HEAD: 0}


STRATEGIES = {cls.__name__.lower(): cls for cls in (Scratch, Frozen, Partial, Full, Gradual, Discriminative)}
