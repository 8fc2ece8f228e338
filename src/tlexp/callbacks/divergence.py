"""Stop a job at the first non-finite loss, so divergence is recorded as a result instead of a
run that trains on NaNs to the end and is ranked like any other."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import Callback


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; ``details`` says where and at which rates."""

    def __init__(self, details: dict):
        self.details = details
        super().__init__(f"loss {details['loss']} at step {details['step']} (epoch {details['epoch']}); "
                         f"last finite loss {details['last_finite_loss']}")


class DivergenceGuard(Callback):
    """Checks each training loss before backward (so the weights are never updated with it);
    under DDP the ranks agree, so they all stop at the same step."""

    def __init__(self):
        self.last_finite: float | None = None

    def on_before_backward(self, trainer, pl_module, loss):
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            finite = not trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if finite:
            self.last_finite = float(loss.detach())
            return
        rates = {group.get("name", str(i)): group["lr"] for optimizer in trainer.optimizers
                 for i, group in enumerate(optimizer.param_groups)}
        value = float(loss.detach())
        raise Diverged({"step": trainer.global_step, "epoch": trainer.current_epoch,
                        "loss": "nan" if math.isnan(value) else str(value), "last_finite_loss": self.last_finite,
                        "learning_rates": rates})
