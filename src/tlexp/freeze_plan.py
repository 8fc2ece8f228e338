"""The freeze plan: what a strategy decides, written down once.

A strategy's whole difference from the shared base is which stages train from which epoch, at
which base rate, with which BatchNorm modes. ``FreezePlan`` holds exactly that, is checked when
it is made, answers every question the rest of tlexp asks about it (trainable stages at an
epoch, frozen depth, trainable parameters), and travels in checkpoints as plain values.
``freeze`` applies it to a module, with or without a Trainer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from tlexp.errors import InvalidValue
from tlexp.stages import HEAD, Stage

BN_POLICIES = ("frozen", "adapt", "train")
"""For BatchNorm layers in frozen stages: ``frozen`` eval mode, statistics untouched;
``adapt`` weights frozen but running statistics follow the target data (AdaBN-style);
``train`` statistics and affine weights both train."""

BN_TRAINABLE = ("frozen_stats", "batch_stats")
"""For BatchNorm layers in stages that train: ``frozen_stats`` eval mode (the running
statistics are kept and used, the affine weights train); ``batch_stats`` train mode (each
batch normalised by its own statistics, running statistics updated)."""


@dataclass(frozen=True)
class FreezePlan:
    """Per stage (input to output, ``head`` last): the first epoch it trains (None: never), its base
    rate and its parameter count; and the BatchNorm mode of frozen and of training stages."""

    stages: tuple[str, ...]
    start: dict[str, int | None]
    base_lrs: dict[str, float]
    sizes: dict[str, int] = field(repr=False)
    bn_policy: str = "frozen"  # one of BN_POLICIES; TransferModule's parameter of that name declares the rule
    bn_trainable: str = "frozen_stats"  # one of BN_TRAINABLE, likewise
    known_ahead: bool = True
    """False while training decides ``start`` (gradual's ``unfreeze_on=plateau``): a stage that has not started
    yet may still start. How the plan is made, not what it is: left out of ``to_dict``."""
    probe_lr: float | None = None
    """The head's base rate in the epochs in which no backbone stage trains (LP-FT's linear probe, before its
    fine-tuning at ``base_lrs``); None: ``base_lrs`` throughout, and left out of ``to_dict`` (older checkpoints compare equal)."""

    def __post_init__(self):
        if not self.stages or self.stages[-1] != HEAD:
            raise InvalidValue("stages", self.stages, f"stage names ending with {HEAD!r}")
        for name, mapping in (("start", self.start), ("base_lrs", self.base_lrs), ("sizes", self.sizes)):
            if set(mapping) != set(self.stages):
                raise InvalidValue(name, sorted(mapping), f"one entry per stage: {list(self.stages)}")
        for stage, epoch in self.start.items():
            if epoch is not None and not (isinstance(epoch, int) and epoch >= 0):
                raise InvalidValue("start", {stage: epoch}, "an epoch number >= 0 or None (never) per stage")
        for stage, rate in self.base_lrs.items():
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
                raise InvalidValue("base_lrs", {stage: rate}, "a learning rate > 0 per stage")
        if self.probe_lr is not None and not (isinstance(self.probe_lr, (int, float)) and math.isfinite(self.probe_lr)
                                              and self.probe_lr > 0):
            raise InvalidValue("probe_lr", self.probe_lr, "None or a learning rate > 0")

    @classmethod
    def of(cls, stages: list[Stage], start: dict[str, int | None], base_lrs: dict[str, float], **bn) -> FreezePlan:
        names = tuple(stage.name for stage in stages)
        return cls(names, {n: start.get(n) for n in names}, dict(base_lrs), {s.name: s.numel for s in stages}, **bn)

    def trainable(self, epoch: int) -> list[str]:
        """The stages that train in ``epoch``, input to output."""
        return [name for name in self.stages if self.trains(name, epoch)]

    def trains(self, stage: str, epoch: int, batchnorm: bool = False) -> bool:
        """Whether ``stage``'s parameters train in ``epoch``; ``batchnorm``: its BN affine weights,
        which also train in a frozen stage under ``bn_policy=train``."""
        started = self.start[stage] is not None and epoch >= self.start[stage]
        return started or (batchnorm and self.bn_policy == "train")

    @property
    def backbone_stages(self) -> tuple[str, ...]:
        return self.stages[:-1]

    def phase_lr(self, stage: str, epoch: int) -> float | None:
        """``probe_lr`` where it replaces ``stage``'s base rate in ``epoch`` (the head, while no backbone stage trains), else None."""
        probing = self.probe_lr is not None and stage == HEAD
        return self.probe_lr if probing and not any(self.trains(name, epoch) for name in self.backbone_stages) else None

    def _leading_untrained(self, epoch: int, batchnorm: bool) -> int:
        """How many backbone stages, counted from the input, do not train in ``epoch``."""
        stages = self.backbone_stages
        return next((i for i, name in enumerate(stages) if self.trains(name, epoch, batchnorm)), len(stages))

    @property
    def frozen_depth(self) -> int:
        """How many backbone stages, counted from the input, are frozen in the first epoch."""
        return self._leading_untrained(0, batchnorm=False)

    def fixed_depth(self, epoch: int) -> int:
        """How many backbone stages, from the input, are left entirely unchanged in ``epoch`` (their BN
        affine weights included)."""
        return self._leading_untrained(epoch, batchnorm=True)

    def constant_depth(self, epochs: int | None = None) -> int:
        """How many backbone stages, from the input, stay unchanged through a run of ``epochs`` (None or < 1: however
        long it runs): their weights (``fixed_depth`` in its last epoch) and their BatchNorm statistics, so their output
        is a fixed function of the input. 0 when the plan is not ``known_ahead`` or BatchNorm adapts (``bn_policy=adapt``)."""
        if not self.known_ahead or self.bn_policy == "adapt":
            return 0
        starts = [epoch for epoch in self.start.values() if epoch is not None]
        return self.fixed_depth(epochs - 1 if epochs is not None and epochs > 0 else max(starts, default=0))

    def trainable_params(self, epoch: int = 0) -> int:
        return sum(self.sizes[name] for name in self.trainable(epoch))

    def to_dict(self) -> dict:
        """Plain values: for checkpoints and ``result.json``."""
        plain = {**asdict(self), "stages": list(self.stages)}
        del plain["known_ahead"]
        if self.probe_lr is None:
            del plain["probe_lr"]
        return plain


def freeze(module, epoch: int) -> list[str]:
    """Apply ``module.plan`` at ``epoch``: ``requires_grad`` per stage (``FreezePlan.trains``) and the
    BatchNorm modes. Returns the trainable stage names."""
    plan = module.plan
    for stage in module.stages:
        for param in stage.params:
            param.requires_grad_(plan.trains(stage.name, epoch))
        owned = {id(param) for param in stage.params}  # BitFit's BN biases are in a stage of their own (``split_off``)
        for bn in stage.batchnorms:
            for param in (bn.weight, bn.bias):
                if param is not None and id(param) in owned:
                    param.requires_grad_(plan.trains(stage.name, epoch, batchnorm=True))
    trainable = plan.trainable(epoch)
    set_batchnorm_modes(module.stages, trainable, plan.bn_policy, plan.bn_trainable)
    return trainable


def set_batchnorm_modes(stages: list[Stage], trainable: list[str], bn_policy: str, bn_trainable: str) -> None:
    """BN of training stages per ``bn_trainable``, of frozen stages per ``bn_policy``.

    Re-applied before every training batch: Lightning switches the whole module to train mode
    after each validation. Only layers whose mode differs are touched (this runs per batch)."""
    for stage in stages:
        mode = bn_trainable == "batch_stats" if stage.name in trainable else bn_policy != "frozen"
        for bn in stage.batchnorms:
            if bn.training != mode:
                bn.train(mode)
