"""L2-SP (Li, Grandvalet & Davoine, 2018): fine-tune everything, pulled towards the pretrained weights
instead of towards zero; against catastrophic forgetting when the target data are few."""

import inspect
from collections.abc import Callable
from functools import partial
from typing import Annotated

import torch
from torch import nn

from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.rules import Rule, number

ADAMW_WITHOUT_DECAY = partial(torch.optim.AdamW, weight_decay=0.0)
"""The shared default optimizer, with its decay off: the penalty takes its place."""
STRENGTH = Rule("a penalty strength >= 0", lambda v: number(v) and v >= 0)


def weight_decay(optimizer: Callable) -> float:
    """The weight decay an optimizer factory (a ``functools.partial``, as Hydra's ``_partial_`` makes it) applies:
    its keyword, else the optimizer's own default (AdamW's is 0.01), else 0."""
    if "weight_decay" in getattr(optimizer, "keywords", {}):
        return optimizer.keywords["weight_decay"]
    parameter = inspect.signature(getattr(optimizer, "func", optimizer)).parameters.get("weight_decay")
    return 0.0 if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


class L2SP(TransferModule):
    """Everything trains from the start (rates as ``full``); the loss adds ``alpha/2 * ||w - w0||^2`` over
    the backbone's parameters (``w0``: their values when the module is built) and ``beta/2 * ||w||^2``
    over the new head's. The optimizer's own weight decay must be 0: it would pull towards zero.

    ``w0`` are buffers of the module (``anchor``): they move with it to the device, never train, and
    travel in checkpoints, so a resumed run penalises the distance to the same weights."""

    def __init__(self, *args, alpha: Annotated[float, STRENGTH] = 0.01, beta: Annotated[float, STRENGTH] = 0.01,
                 optimizer: Callable = ADAMW_WITHOUT_DECAY, **kwargs):
        if weight_decay(optimizer) != 0:
            raise InvalidValue("optimizer.weight_decay", weight_decay(optimizer),
                               "0.0 (L2-SP's penalty replaces the decay towards zero)")
        super().__init__(*args, optimizer=optimizer, **kwargs)
        self.hparams.update(alpha=alpha, beta=beta)
        self.anchor = nn.Module()
        for name, param in self.backbone.named_parameters():
            self.anchor.register_buffer(name.replace(".", "__"), param.detach().clone())

    def penalty(self) -> torch.Tensor:
        """``alpha/2 * ||w_backbone - w0||^2 + beta/2 * ||w_head||^2``. Frozen parameters count too: they equal
        their anchor (a zero term), and the value stays comparable whatever the freeze state."""
        drift = sum((param - self.anchor.get_buffer(name.replace(".", "__"))).pow(2).sum()
                    for name, param in self.backbone.named_parameters())
        head = sum(param.pow(2).sum() for param in self.head.parameters())
        return self.hparams.alpha / 2 * drift + self.hparams.beta / 2 * head

    def training_loss(self, inputs, logits, labels):
        penalty = self.penalty()
        self.log("train/l2sp_penalty", penalty, on_step=False, on_epoch=True, batch_size=len(labels))
        return super().training_loss(inputs, logits, labels) + penalty
