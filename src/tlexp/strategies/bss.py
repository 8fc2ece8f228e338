"""Batch Spectral Shrinkage (Chen et al., NeurIPS 2019): fine-tune everything while shrinking the smallest
singular values of each batch's pooled features, the directions that carry the pretrained model's
untransferable (or the new task's noisy) components and that fine-tuning on little data amplifies."""

from typing import Annotated

import torch

from tlexp.module import TransferModule
from tlexp.rules import WEIGHT, integer


def spectral_penalty(features: torch.Tensor, k: int) -> torch.Tensor:
    """``sum_{i=1..k} sigma_{-i}^2``: the squares of the ``k`` smallest singular values of the ``(batch, width)``
    matrix ``features`` (all of them when it has fewer than ``k``). In float32: ``svdvals`` takes no half precision."""
    return torch.linalg.svdvals(features.float())[-k:].pow(2).sum()


class BSS(TransferModule):
    """Trains like ``full`` on ``CE + bss_weight * spectral_penalty(pooled features, bss_k)``; the paper's defaults,
    eta = 0.001 and k = 1. The features are the head's input, whatever computed them; logged as ``train/bss``."""

    def __init__(self, *args, bss_weight: Annotated[float, WEIGHT] = 0.001,
                 bss_k: Annotated[int, integer(1, "an integer >= 1: how many of the smallest singular values")] = 1,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.hparams.update(bss_weight=bss_weight, bss_k=bss_k)
        self._features: torch.Tensor | None = None
        self.head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, head, inputs):
        if self.training:
            self._features = inputs[0]

    def training_loss(self, inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features, self._features = self._features, None
        penalty = spectral_penalty(features, self.hparams.bss_k)
        self.log("train/bss", penalty, on_step=False, on_epoch=True, batch_size=len(labels))
        return super().training_loss(inputs, logits, labels) + self.hparams.bss_weight * penalty
