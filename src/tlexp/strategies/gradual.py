from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.stages import HEAD


class Gradual(TransferModule):
    """ULMFiT gradual unfreezing: the head first, then one more stage from the top every
    ``unfreeze_every`` epochs, or at the epochs of an explicit ``milestones`` mapping
    (stage name -> epoch; stages it does not name stay frozen)."""

    def __init__(self, *args, unfreeze_every: int = 1, milestones: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        names = [stage.name for stage in self.backbone_stages]
        milestones = dict(milestones) if milestones else None
        for name in milestones or {}:
            if name not in names:
                raise InvalidValue("milestones", name, f"stage names {names}")
        self.hparams.unfreeze_every = unfreeze_every
        self.hparams.milestones = milestones

    def start_epochs(self):
        if self.hparams.milestones:
            epochs = {stage.name: self.hparams.milestones.get(stage.name) for stage in self.backbone_stages}
        else:
            top_down = reversed(self.backbone_stages)
            epochs = {stage.name: (k + 1) * self.hparams.unfreeze_every for k, stage in enumerate(top_down)}
        return {**{stage.name: epochs.get(stage.name) for stage in self.backbone_stages}, HEAD: 0}
