from tlexp.module import TransferModule
from tlexp.stages import HEAD


class Frozen(TransferModule):
    """Feature extraction / linear probe: only the new head trains; the backbone stays frozen for the whole run."""

    def start_epochs(self):
        return {stage.name: 0 if stage.name == HEAD else None for stage in self.stages}
