"""FineTuning: applies a strategy's freeze/unfreeze schedule, its BatchNorm policy and per-stage rates.

Design (against the failures of BaseFinetuning, Flash and finetuning-scheduler):
- the optimizer's named groups are created once by the module and never change; a frozen
  stage has ``requires_grad=False`` *and* rate 0, so neither gradients, momentum nor weight
  decay can move it;
- which stages train is a pure function of the epoch, saved in checkpoints and re-applied on
  resume, so a resumed run continues exactly like an uninterrupted one;
- BatchNorm follows two explicit policies, one for frozen stages and one for stages that
  train, re-applied before every training batch (so also after every validation), because
  Lightning switches the whole module between train and eval mode around validation.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from tlexp.errors import ConfigError

BN_POLICIES = ("frozen", "adapt", "train")
"""For BatchNorm layers in frozen stages: ``frozen`` eval mode, statistics untouched;
``adapt`` weights frozen but running statistics follow the target data (AdaBN-style);
``train`` statistics and affine weights both train."""

BN_TRAINABLE = ("frozen_stats", "batch_stats")
"""For BatchNorm layers in stages that train: ``frozen_stats`` eval mode (the running
statistics are kept and used, the affine weights train); ``batch_stats`` train mode (each
batch normalised by its own statistics, running statistics updated)."""


def check_bn_policies(bn_policy, bn_trainable) -> None:
    """The one place the two BatchNorm settings are checked."""
    if bn_policy not in BN_POLICIES:
        raise ConfigError("strategy.bn_policy", bn_policy, ", ".join(BN_POLICIES))
    if bn_trainable not in BN_TRAINABLE:
        raise ConfigError("strategy.bn_trainable", bn_trainable, ", ".join(BN_TRAINABLE))


class FineTuning(Callback):
    def __init__(self, bn_policy: str = "frozen", bn_trainable: str = "frozen_stats"):
        check_bn_policies(bn_policy, bn_trainable)
        self.bn_policy = bn_policy
        self.bn_trainable = bn_trainable
        self.unfrozen: list[str] = []
        self.epoch = 0
        self._restored: dict | None = None

    @property
    def state_key(self) -> str:
        return "FineTuning"

    # --- schedule ------------------------------------------------------------------------
    @staticmethod
    def trainable_stages(pl_module, epoch: int) -> list[str]:
        return [name for name, start in pl_module.unfreeze_epochs().items() if start is not None and epoch >= start]

    def apply(self, trainer: L.Trainer, pl_module, epoch: int) -> None:
        """Set requires_grad, BN modes and group rates for ``epoch``."""
        trainable = set(self.trainable_stages(pl_module, epoch))
        for stage in pl_module.stages:
            on = stage.name in trainable
            for param in stage.params:
                param.requires_grad_(on)
            if not on and self.bn_policy == "train":
                for bn in stage.batchnorms:
                    for param in (bn.weight, bn.bias):
                        if param is not None:
                            param.requires_grad_(True)
        self.unfrozen = [stage.name for stage in pl_module.stages if stage.name in trainable]
        self.epoch = epoch
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["frozen"] = not any(p.requires_grad for p in group["params"])
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "refresh"):
                config.scheduler.refresh()

    def apply_bn_policy(self, pl_module) -> None:
        """BN of trainable stages per ``bn_trainable`` (also once a stage is unfrozen), of frozen stages per ``bn_policy``."""
        for stage in pl_module.stages:
            if stage.name in self.unfrozen:
                mode = self.bn_trainable == "batch_stats"
            else:
                mode = self.bn_policy != "frozen"
            for bn in stage.batchnorms:
                if bn.training != mode:  # per batch: skip nn.Module.train's recursion when nothing changes
                    bn.train(mode)

    # --- hooks -----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        """Also where a mid-epoch resume gets its stages set: Lightning then skips on_train_epoch_start."""
        schedule = pl_module.unfreeze_epochs()
        if self._restored is not None and self._restored.get("schedule") != schedule:
            raise ConfigError(
                "ckpt_path", trainer.ckpt_path, "a checkpoint written with the same unfreeze schedule",
                f"checkpoint schedule {self._restored.get('schedule')} != current {schedule}",
            )
        self.apply(trainer, pl_module, trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module):
        self.apply(trainer, pl_module, trainer.current_epoch)
        pl_module.log("params/trainable", float(sum(p.numel() for p in pl_module.parameters() if p.requires_grad)),
                      on_step=False, on_epoch=True)
        pl_module.log("stages/unfrozen", float(len(self.unfrozen)), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.apply_bn_policy(pl_module)
        if not trainer._logger_connector.should_update_logs:  # as LearningRateMonitor: a log call costs ~1 ms
            return
        rates = {}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                rates.setdefault(f"lr/{group['stage']}", group["lr"])
        pl_module.log_dict(rates, on_step=True, on_epoch=False)

    # --- checkpoint state ----------------------------------------------------------------------
    def state_dict(self):
        return {"unfrozen": list(self.unfrozen), "epoch": self.epoch, "bn_policy": self.bn_policy,
                "bn_trainable": self.bn_trainable, "schedule": getattr(self, "_schedule", None)}

    def setup(self, trainer, pl_module, stage):
        self._schedule = pl_module.unfreeze_epochs()

    def load_state_dict(self, state_dict):
        self._restored = dict(state_dict)
        self.unfrozen = list(state_dict.get("unfrozen", []))
        self.epoch = state_dict.get("epoch", 0)
