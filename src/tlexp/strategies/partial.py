from tlexp.errors import InvalidValue
from tlexp.module import TransferModule


class Partial(TransferModule):
    """The first ``frozen_depth`` backbone stages stay frozen, the rest train from the start."""

    def __init__(self, *args, frozen_depth: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        names = [stage.name for stage in self.backbone_stages]
        if not (isinstance(frozen_depth, int) and 0 <= frozen_depth <= len(names)):
            raise InvalidValue("frozen_depth", frozen_depth, f"an integer in [0, {len(names)}] (backbone stages: {names})")
        self.hparams.frozen_depth = frozen_depth

    def start_epochs(self):
        frozen = {stage.name for stage in self.backbone_stages[: self.hparams.frozen_depth]}
        return {stage.name: None if stage.name in frozen else 0 for stage in self.stages}
