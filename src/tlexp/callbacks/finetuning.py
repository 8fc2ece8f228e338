"""FineTuning: applies the module's freeze plan in a Lightning run.

Design (against the failures of BaseFinetuning, Flash and finetuning-scheduler):
- the optimizer's named groups are created once by the module and never change; a frozen
  stage has ``requires_grad=False`` *and* rate 0 (``StageLR`` reads the plan), so neither
  gradients, momentum nor weight decay can move it;
- which stages train is a pure function of the epoch (``FreezePlan``), saved in checkpoints
  and re-applied on resume, so a resumed run continues exactly like an uninterrupted one;
- the BatchNorm modes are re-applied before every training batch, because Lightning switches
  the whole module between train and eval mode around validation.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import Callback

from tlexp.errors import ConfigError
from tlexp.freeze_plan import freeze, set_batchnorm_modes
from tlexp.schedules import StageLR

log = logging.getLogger("tlexp")


class FineTuning(Callback):
    def __init__(self):
        self.unfrozen: list[str] = []
        self._restored: dict | None = None

    @property
    def state_key(self) -> str:
        return "FineTuning"

    def enter_epoch(self, trainer, pl_module, epoch: int) -> None:
        self.unfrozen = freeze(pl_module, epoch)
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, StageLR):
                config.scheduler.enter_epoch(epoch, pl_module.plan)

    def on_train_start(self, trainer, pl_module):
        """Also where a mid-epoch resume gets its stages set: Lightning then skips on_train_epoch_start."""
        plan = pl_module.plan.to_dict()
        if self._restored is not None and "plan" not in self._restored:  # written before tlexp saved its plan
            log.warning("resuming from %s, which holds no freeze plan (an older tlexp): the schedule cannot be "
                        "compared with this run's; it continues with the current plan", trainer.ckpt_path)
        elif self._restored is not None and self._restored["plan"] != plan:
            raise ConfigError("ckpt_path", trainer.ckpt_path, "a checkpoint written with the same freeze plan",
                              f"checkpoint plan {self._restored.get('plan')} != current {plan}")
        self.enter_epoch(trainer, pl_module, trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module):
        self.enter_epoch(trainer, pl_module, trainer.current_epoch)
        pl_module.log("params/trainable", float(sum(p.numel() for p in pl_module.parameters() if p.requires_grad)),
                      on_step=False, on_epoch=True)
        pl_module.log("stages/unfrozen", float(len(self.unfrozen)), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        plan = pl_module.plan
        set_batchnorm_modes(pl_module.stages, self.unfrozen, plan.bn_policy, plan.bn_trainable)
        if (trainer.global_step + 1) % trainer.log_every_n_steps:  # the steps Lightning writes: a log call costs ~1 ms
            return
        rates = {}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                rates.setdefault(f"lr/{group['stage']}", group["lr"])
        pl_module.log_dict(rates, on_step=True, on_epoch=False)

    def state_dict(self):
        """The plan as it is now: a strategy that decides during training (plateau unfreezing) has changed it."""
        return {"unfrozen": list(self.unfrozen), "plan": self._module.plan.to_dict()}

    def setup(self, trainer, pl_module, stage):
        self._module = pl_module

    def load_state_dict(self, state_dict):
        self._restored = dict(state_dict)
        self.unfrozen = list(state_dict.get("unfrozen", []))
