"""Surgical fine-tuning (Lee et al., ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts"):
only the chosen backbone stages train, with the new head; which ones is the question the strategy asks (the paper:
the first block for input-level shifts, such as corruptions, the last ones for output-level shifts). Not necessarily
the top stages, so not ``partial``; the choice is a freeze plan like any other, and the stages it leaves out stay
bit for bit as pretrained, their BatchNorm statistics included (``bn_policy=frozen``).
"""

from __future__ import annotations

from typing import Annotated

from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.rules import Rule, is_integer, plain
from tlexp.stages import HEAD

TRAIN_STAGES = "a non-empty list of backbone stage names (as tlexp.stages names them) or indices (0: the first)"


def stage_choices(value) -> list | None:
    """``value`` (one stage or a list of them) as a list of names and indices; None where it has another form."""
    value = plain(value)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values if values and all(isinstance(v, str) or is_integer(v, 0) for v in values) else None


TRAIN_STAGES_FORM = Rule(TRAIN_STAGES, lambda value: stage_choices(value) is not None, refined=True)
"""The form, judged before anything is built; ``Surgical`` checks the names and indices against the model's stages."""


class Surgical(TransferModule):
    """The backbone stages ``train_stages`` names (``[stem]``, ``[0]``, ``[stem, blocks.5]``) train from the start,
    at their rate as in ``discriminative`` (``lr_backbone`` at the top stage, ``lr_ratio`` or ``lr_decay`` below;
    default: all equal), with the head at ``lr_head``; the other backbone stages never train."""

    def __init__(self, *args, train_stages: Annotated[str | int | list[str | int], TRAIN_STAGES_FORM] = (0,), **kwargs):
        super().__init__(*args, **kwargs)
        names = [stage.name for stage in self.backbone_stages]
        choices = stage_choices(train_stages)
        if choices is None or any(c not in names and not (isinstance(c, int) and c < len(names)) for c in choices):
            listing = ", ".join(f"{index}: {name}" for index, name in enumerate(names))
            raise InvalidValue("train_stages", plain(train_stages), f"{TRAIN_STAGES}; this backbone's stages are {listing}")
        chosen = {names[c] if isinstance(c, int) else c for c in choices}
        self.hparams.train_stages = [name for name in names if name in chosen]

    def start_epochs(self):
        trained = {HEAD, *self.hparams.train_stages}
        return {stage.name: 0 if stage.name in trained else None for stage in self.stages}
