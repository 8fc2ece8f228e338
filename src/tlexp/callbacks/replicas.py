"""ReplicaCheck: under DDP, compare every parameter and buffer across ranks after each training epoch.

Stages that start frozen are the classic way for replicas to drift apart silently (DDP only
all-reduces what it registered); this turns "they stay equal" into a logged number."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class ReplicaCheck(Callback):
    def __init__(self, fail: bool = True):
        self.fail = fail
        self.max_abs_diff = 0.0

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.world_size < 2:
            return
        flat = torch.cat([t.detach().double().flatten() for t in pl_module.state_dict().values()])
        gathered = pl_module.all_gather(flat)
        diff = (gathered - gathered[0]).abs().max().item()
        self.max_abs_diff = max(self.max_abs_diff, diff)
        pl_module.log("ddp/replica_max_abs_diff", diff, rank_zero_only=True, sync_dist=False)
        if self.fail and diff != 0.0:
            raise RuntimeError(f"DDP replicas diverged at epoch {trainer.current_epoch}: max |difference| {diff:g}")
