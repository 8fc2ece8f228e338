"""Learning without Forgetting (Li & Hoiem 2016): fine-tune for the new task while the pretrained
model's own classifier keeps answering, on the target images, as it did before training.

The backbone is built without its classifier (``num_classes=0``), so the original classifier is
taken from a second build of the same model and weights with ``pretrained_cfg``'s class count.
"""

from __future__ import annotations

import copy
from typing import Annotated

import torch
from torch import nn

from tlexp.backbone import create_backbone, feature_width
from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.rules import TEMPERATURE, WEIGHT
from tlexp.strategies.soft_targets import FrozenModel, soft_target_kl


def original_classifier(backbone: nn.Module, model_name: str | None, weights: str | None, pretrained: bool) -> nn.Module:
    """The pretrained classifier of ``backbone``'s model (``model_name``, default its timm architecture),
    loaded from the same ``weights``/``pretrained`` source the backbone was built from."""
    name = model_name or backbone.pretrained_cfg.get("architecture")
    classes = backbone.pretrained_cfg.get("num_classes") or 0
    if classes < 1:
        raise InvalidValue("model_name", name, "a timm model whose pretrained_cfg names its source classes (num_classes)")
    classifier = create_backbone(name, pretrained=pretrained, weights=weights, num_classes=classes).get_classifier()
    if not (isinstance(classifier, nn.Linear) and classifier.in_features == feature_width(backbone)):
        raise InvalidValue("model_name", name, "a timm model whose classifier is one linear layer on the pooled features")
    return classifier


class LwF(TransferModule):
    """Trains like ``full`` on ``CE + lambda_old * T^2 * KL(original/T || old_head/T)``.

    ``old_head``: the model's original classifier on the shared backbone, trained with the new head
    (part of the ``head`` stage, at ``lr_head``). The soft targets come from a frozen copy of the
    pretrained backbone and classifier, per batch, outside the optimizer and the checkpoint (rebuilt
    from the pretrained weights when the module is built, also on resume). ``model_name``, ``weights``,
    ``pretrained``: where the classifier comes from (the config passes the ``model`` node's values)."""

    def __init__(self, *args, lambda_old: Annotated[float, WEIGHT] = 1.0, temperature: Annotated[float, TEMPERATURE] = 2.0,
                 model_name: str | None = None, weights: str | None = None, pretrained: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.old_head = original_classifier(self.backbone, model_name, weights, pretrained)
        head = self.stages[-1]
        head.params += list(self.old_head.parameters())
        head.param_names += [f"old_head.{name}" for name, _ in self.old_head.named_parameters()]
        self.original = FrozenModel(nn.Sequential(copy.deepcopy(self.backbone), copy.deepcopy(self.old_head)))
        self._features: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """As the base's; the features are kept for the old head's term in ``training_loss``."""
        self._features = self.backbone(images)
        return self.head(self._features)

    def training_loss(self, inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features, self._features = self._features, None
        new = self.criterion(logits, labels)
        old = soft_target_kl(self.old_head(features), self.original(inputs), self.hparams.temperature)
        self.log_dict({"train/loss_ce": new, "train/loss_old": old}, on_step=False, on_epoch=True, batch_size=len(labels))
        return new + self.hparams.lambda_old * old
