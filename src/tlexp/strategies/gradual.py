import math
from dataclasses import replace
from typing import Annotated

from lightning.pytorch.callbacks import Callback

from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.rules import BOOLEAN, Rule, choice, integer, is_integer, number
from tlexp.stages import HEAD

UNFREEZE_ON = ("schedule", "plateau")
UNFREEZE_BY = Rule("a share of trainer.max_epochs in (0, 1], after which every stage trains", lambda v: number(v) and 0 < v <= 1)
UNFREEZE_EVERY = Rule("null (strategy.unfreeze_by sets the pace) or an integer >= 1 (epochs per stage)",
                      lambda v: v is None or is_integer(v, 1))
MILESTONE = Rule("an epoch number >= 0", lambda v: is_integer(v, 0), each=True)
"""Each epoch of ``milestones``; its stage names are checked against the model's."""


def spread_starts(count: int, unfreeze_by: float, max_epochs: int) -> list[int]:
    """Start epochs of ``count`` stages, top stage first, for a run of ``max_epochs``: the head trains alone
    in epoch 0, then stage k (1 = top) starts at ``ceil(k * last / count)``, where ``last``, the epoch from
    which every stage trains, is ``ceil(unfreeze_by * max_epochs)`` within [1, max_epochs - 1] (so the
    lowest stage trains at least in the last epoch; a one-epoch run trains everything from epoch 0).
    With fewer epochs than stages, several stages start together."""
    last = min(max_epochs - 1, max(1, math.ceil(round(unfreeze_by * max_epochs, 9))))
    return [-(-k * last // count) for k in range(1, count + 1)]


def plateaued(history: list[float], patience: int, min_delta: float, since: int = 0) -> bool:
    """Whether the last ``patience`` values of ``history`` (from index ``since`` on, the epochs since
    the last unfreezing) all failed to beat the best value before them by more than ``min_delta``."""
    window = history[since:]
    if len(window) <= patience:
        return False
    best_before = max(window[:-patience])
    return all(value <= best_before + min_delta for value in window[-patience:])


class Gradual(TransferModule):
    """ULMFiT gradual unfreezing: the head first, then the backbone stages from the top down, spread
    evenly so that every stage trains once ``unfreeze_by`` of the run's ``max_epochs`` are over
    (``spread_starts``), whatever the number of stages. The per-stage forms still work and take
    precedence: one more stage every ``unfreeze_every`` epochs, or the epochs of an explicit ``milestones``
    mapping (stage name -> epoch; stages it does not name stay frozen), which wins over both.

    ``unfreeze_on=plateau``: instead, the next stage unfreezes after an epoch in which ``val/acc``
    has not improved (by more than ``min_delta``) for ``patience`` epochs over the best since the last
    unfreezing (so each stage trains at least ``patience + 1`` epochs); once every stage trains, the same test
    stops training (``stop_at_plateau``). The epochs chosen are part of the freeze plan, so checkpoints carry
    them and a resume continues."""

    def __init__(self, *args, unfreeze_by: Annotated[float, UNFREEZE_BY] = 0.25, max_epochs: int | None = None,
                 unfreeze_every: Annotated[int | None, UNFREEZE_EVERY] = None, milestones: Annotated[dict | None, MILESTONE] = None,
                 unfreeze_on: Annotated[str, choice(UNFREEZE_ON)] = "schedule", patience: Annotated[int, integer(1)] = 1,
                 min_delta: Annotated[float, Rule("a number >= 0", lambda v: number(v) and v >= 0)] = 0.0,
                 stop_at_plateau: Annotated[bool, BOOLEAN] = True, **kwargs):
        super().__init__(*args, **kwargs)
        names = [stage.name for stage in self.backbone_stages]
        milestones = dict(milestones) if milestones else None
        for name in milestones or {}:
            if name not in names:
                raise InvalidValue("milestones", name, f"stage names {names}")
        paced_by_run = unfreeze_on == "schedule" and not milestones and unfreeze_every is None
        if paced_by_run and not is_integer(max_epochs, 1):
            raise InvalidValue("max_epochs", max_epochs, "the run's epoch count, an integer >= 1 (the config passes "
                               "trainer.max_epochs)", "unfreeze_by is a share of it")
        self.hparams.update(unfreeze_by=unfreeze_by, max_epochs=max_epochs, unfreeze_every=unfreeze_every,
                            milestones=milestones, unfreeze_on=unfreeze_on, patience=patience, min_delta=min_delta,
                            stop_at_plateau=stop_at_plateau)
        self.unfrozen_at: dict[str, int] = {}
        """unfreeze_on=plateau: stage -> the epoch it was unfrozen for, decided during training."""

    def start_epochs(self):
        if self.hparams.unfreeze_on == "plateau":
            epochs = self.unfrozen_at
        elif self.hparams.milestones:
            epochs = {stage.name: self.hparams.milestones.get(stage.name) for stage in self.backbone_stages}
        else:
            top_down = list(reversed(self.backbone_stages))
            starts = ([(k + 1) * self.hparams.unfreeze_every for k in range(len(top_down))]
                      if self.hparams.unfreeze_every is not None
                      else spread_starts(len(top_down), self.hparams.unfreeze_by, self.hparams.max_epochs))
            epochs = {stage.name: start for stage, start in zip(top_down, starts)}
        return {**{stage.name: epochs.get(stage.name) for stage in self.backbone_stages}, HEAD: 0}

    def freeze_plan(self):
        """Under ``unfreeze_on=plateau`` training decides the start epochs: the plan is not ``known_ahead``."""
        return replace(super().freeze_plan(), known_ahead=self.hparams.unfreeze_on != "plateau")

    def unfreeze_next(self, epoch: int) -> bool:
        """Unfreeze the top frozen stage from ``epoch`` on; False when every stage already trains."""
        frozen = [stage.name for stage in self.backbone_stages if stage.name not in self.unfrozen_at]
        if not frozen:
            return False
        self.unfrozen_at[frozen[-1]] = epoch
        self.plan = self.freeze_plan()
        return True

    def configure_callbacks(self):
        plateau = [PlateauUnfreezing()] if self.hparams.unfreeze_on == "plateau" else []
        return [*super().configure_callbacks(), *plateau]

    def on_save_checkpoint(self, checkpoint):
        checkpoint["unfrozen_at"] = dict(self.unfrozen_at)

    def on_load_checkpoint(self, checkpoint):
        """Before the callbacks' state: FineTuning then finds the same plan as the checkpoint's."""
        self.unfrozen_at = dict(checkpoint.get("unfrozen_at", {}))
        self.plan = self.freeze_plan()


class PlateauUnfreezing(Callback):
    """After each validation: ``val/acc`` stalled -> the next stage trains from the next epoch, or stop."""

    def __init__(self):
        self.history: list[float] = []

    @property
    def state_key(self) -> str:
        return "PlateauUnfreezing"

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
            return
        self.history.append(float(trainer.callback_metrics["val/acc"]))
        epoch = trainer.current_epoch
        if epoch + 1 >= trainer.max_epochs:  # nothing left to unfreeze for
            return
        since = max(pl_module.unfrozen_at.values(), default=0)
        if not plateaued(self.history, pl_module.hparams.patience, pl_module.hparams.min_delta, since):
            return
        if not pl_module.unfreeze_next(epoch + 1) and pl_module.hparams.stop_at_plateau:
            trainer.should_stop = True

    def state_dict(self):
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict):
        self.history = list(state_dict.get("history", []))
