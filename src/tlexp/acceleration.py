"""The GPU path: mixed precision chosen from the device, ``channels_last`` for convolutional backbones and
an optional ``torch.compile`` of the backbone; all of it also runs on a CPU, which is how it is tested here.

``trainer.channels_last`` and ``trainer.compile`` are settings of tlexp's ``Trainer`` (Lightning's, plus
these two), so they sit in the ``trainer`` node with precision and devices; the ``Trainer`` also declares what
they and ``trainer.max_epochs`` accept.
"""

from __future__ import annotations

from typing import Annotated

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from tlexp.rules import BOOLEAN, Checked, Rule, integer


def mixed_precision() -> str:
    """``bf16-mixed`` where the GPU computes in bfloat16 (Ampere and later), else ``16-mixed``, whose
    gradient scaler Lightning adds; the ``${tlexp_mixed_precision:}`` of ``trainer=gpu``."""
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def compile_backends() -> list[str]:
    return torch.compiler.list_backends(exclude_tags=())


COMPILE = Rule(lambda: f"true, false or a torch.compile backend: {', '.join(compile_backends())}",
               lambda v: isinstance(v, bool) or (isinstance(v, str) and v in compile_backends()))
"""Listing the backends imports torch._dynamo (seconds): only for a backend name, or to say what is accepted."""


class Acceleration(Callback):
    """Puts the module in ``channels_last`` memory format (when its backbone has 2-d convolutions) and
    compiles the backbone in place (``nn.Module.compile``: parameter names and checkpoints unchanged),
    once, before the optimizer is built."""

    def __init__(self, channels_last: bool = False, compile: bool | str = False):
        self.channels_last, self.compile = channels_last, compile
        self.done = False

    def setup(self, trainer, pl_module, stage):
        if self.done:
            return
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in pl_module.backbone.modules()):
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            pl_module.backbone.compile(**({} if self.compile is True else {"backend": self.compile}))
        self.done = True


class Trainer(Checked, L.Trainer):
    """Lightning's Trainer with ``channels_last`` and ``compile`` (see ``Acceleration``); ``max_epochs``, Lightning's,
    declared here for its rule (tlexp needs a finite run: ``gradual``'s ``unfreeze_by`` is a share of it)."""

    def __init__(self, *, channels_last: Annotated[bool, BOOLEAN] = False, compile: Annotated[bool | str, COMPILE] = False,
                 max_epochs: Annotated[int | None, integer(1)] = None, callbacks=None, **kwargs):
        acceleration = Acceleration(channels_last, compile)
        super().__init__(callbacks=[*(callbacks or []), acceleration], max_epochs=max_epochs, **kwargs)
