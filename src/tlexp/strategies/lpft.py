"""LP-FT (Kumar et al., ICLR 2022): a linear probe first, then fine-tuning of everything from that head. A random
head's gradients distort the pretrained features early in plain fine-tuning; a head already fitted to them does not.

Both phases are one freeze plan (the same mechanism as ``gradual``'s ``milestones`` with every stage at one epoch):
the head alone for ``probe_epochs`` epochs at ``lr_probe``, then every stage at the fine-tuning rates. Or the probe
comes from a finished ``frozen`` run (``probe_run``), whose epochs the feature cache made cheap."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import torch
from torch import nn

from tlexp.errors import ConfigError, InvalidValue
from tlexp.finished import locate
from tlexp.module import TransferModule
from tlexp.rules import Rule, integer, is_integer, number
from tlexp.stages import HEAD
from tlexp.trusted_files import UntrustedFile, load_tensors

PROBE_RUN = ("null or a finished run of strategy=frozen on the same model and classes (its directory or a .ckpt in its "
             "checkpoints/): its head starts the fine-tuning")
PROBE_LR = Rule("null (the head at lr_head throughout) or a learning rate > 0", lambda v: v is None or (number(v) and v > 0))


def probe_head(source: str, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights of the finished run ``source``, refused unless its backbone, BatchNorm statistics included,
    is ``backbone`` bit for bit: the probe must have been fitted on these very features."""
    _, checkpoint = locate(source, "probe_run", PROBE_RUN)
    try:
        state = load_tensors(checkpoint, "probe run checkpoint")["state_dict"]
    except UntrustedFile as error:
        raise InvalidValue("probe_run", source, PROBE_RUN, str(error)) from None
    differs = [name for name, tensor in backbone.state_dict().items()
               if not torch.equal(state.get(f"backbone.{name}", torch.empty(0)).to(tensor.device), tensor)]
    if differs:
        raise InvalidValue("probe_run", source, PROBE_RUN, f"its backbone is not this run's pretrained one ({differs[0]} differs)")
    return {name.removeprefix("head."): tensor for name, tensor in state.items() if name.startswith("head.")}


class LPFT(TransferModule):
    """The head alone (the linear probe) in the first ``probe_epochs`` epochs, at ``lr_probe``; from then on every
    stage, the backbone at ``lr_backbone``, the head at ``lr_head``. ``max_epochs`` (the config passes
    ``trainer.max_epochs``) must leave the fine-tuning at least one epoch. ``probe_run``: the head starts from that
    finished ``frozen`` run's head when training starts (then ``probe_epochs=0`` fine-tunes from the first epoch)."""

    def __init__(self, *args, probe_epochs: Annotated[int, integer(0, "an integer >= 0, below trainer.max_epochs")] = 1,
                 lr_probe: Annotated[float | None, PROBE_LR] = None, probe_run: str | None = None,
                 max_epochs: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if is_integer(max_epochs, 1) and probe_epochs >= max_epochs:
            raise InvalidValue("probe_epochs", probe_epochs, f"an integer in [0, {max_epochs - 1}]",
                               f"trainer.max_epochs={max_epochs}: the fine-tuning needs an epoch after the probe")
        self.hparams.update(probe_epochs=probe_epochs, lr_probe=lr_probe, probe_run=probe_run, max_epochs=max_epochs)

    def setup(self, stage: str) -> None:
        """Training starts from ``probe_run``'s head. Here, not when the module is built: rebuilding a finished lpft
        run (``tlexp-export``, a teacher, WiSE-FT) then needs neither the probe run nor the pretrained weights, and a
        resumed run's checkpoint, restored after this hook, replaces the head."""
        source = self.hparams.probe_run
        if stage != "fit" or not source:
            return
        try:
            try:
                self.head.load_state_dict(probe_head(source, self.backbone))
            except RuntimeError as error:
                raise InvalidValue("probe_run", source, PROBE_RUN, str(error).strip().splitlines()[0]) from None
        except InvalidValue as error:
            raise ConfigError.at("strategy", error) from None

    def start_epochs(self):
        return {**{stage.name: self.hparams.probe_epochs for stage in self.backbone_stages}, HEAD: 0}

    def freeze_plan(self):
        return replace(super().freeze_plan(), probe_lr=self.hparams.lr_probe)
