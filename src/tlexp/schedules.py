"""Learning-rate schedules: small pure functions of training progress, and one scheduler that applies them.

Every schedule steps per batch. ``StageLR`` multiplies each parameter group's base rate
(its stage's discriminative rate) by the schedule, and gives frozen groups a rate of 0, so
freezing and unfreezing never add, remove or rebuild groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim.lr_scheduler import LambdaLR


@dataclass
class WarmupCosine:
    """Linear warmup from 0 over ``warmup_fraction`` of the steps, then cosine decay to 0."""

    total_steps: int
    warmup_fraction: float = 0.1

    def __call__(self, step: int) -> float:
        warmup = max(1, round(self.warmup_fraction * self.total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class OneCycle:
    """Cosine rise from 1/25 of the peak over ``warmup_fraction`` of the steps, then cosine fall to ~0."""

    total_steps: int
    warmup_fraction: float = 0.3

    def __call__(self, step: int) -> float:
        start, end = 1 / 25, 1 / 1e4
        peak = max(1, round(self.warmup_fraction * self.total_steps))
        if step < peak:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / peak))
        progress = min(1.0, (step - peak) / max(1, self.total_steps - peak))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class SlantedTriangular:
    """ULMFiT's slanted triangular rate: a short linear rise, a long linear fall to 1/ratio."""

    total_steps: int
    warmup_fraction: float = 0.1
    ratio: float = 32.0

    def __call__(self, step: int) -> float:
        cut = max(1, math.floor(self.total_steps * self.warmup_fraction))
        p = step / cut if step < cut else 1 - (step - cut) / max(1, cut * (1 / self.warmup_fraction - 1))
        return (1 + max(0.0, p) * (self.ratio - 1)) / self.ratio


@dataclass
class Constant:
    """No schedule: every group stays at its base rate."""

    total_steps: int
    warmup_fraction: float = 0.0

    def __call__(self, step: int) -> float:
        return 1.0


SCHEDULES = {"warmup_cosine": WarmupCosine, "one_cycle": OneCycle, "slanted_triangular": SlantedTriangular, "constant": Constant}


def make_schedule(name: str, total_steps: int, warmup_fraction: float):
    return SCHEDULES[name](total_steps=total_steps, warmup_fraction=warmup_fraction)


class StageLR(LambdaLR):
    """LambdaLR over all groups with one schedule, reading the freeze plan: a group that does not
    train in the current epoch (``enter_epoch``; ``FreezePlan.trains``) gets rate 0.

    ``rewarm``: a group whose stage unfreezes after the first epoch ramps linearly from 0 over
    ``warmup_steps`` from its first step, on top of the shared schedule (as fastai restarts its
    schedule when it unfreezes). Each group's base rate is its stage's plan rate (``FreezePlan.phase_lr`` where the
    plan gives the epoch another: LP-FT's probe rate)."""

    def __init__(self, optimizer, schedule, plan, steps_per_epoch: int, rewarm: bool = False, warmup_steps: int = 1):
        self.plan, self.epoch = plan, 0
        self.steps_per_epoch, self.rewarm, self.warmup_steps = steps_per_epoch, rewarm, max(1, warmup_steps)
        super().__init__(optimizer, schedule)

    def _ramp(self, stage: str) -> float:
        start = (self.plan.start[stage] or 0) * self.steps_per_epoch
        if not self.rewarm or start <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.last_epoch - start + 1) / self.warmup_steps))

    def _rates(self) -> list[float]:
        factor = self.lr_lambdas[0](self.last_epoch)
        return [(self.plan.phase_lr(group["stage"], self.epoch) or base) * factor * self._ramp(group["stage"])
                if self.plan.trains(group["stage"], self.epoch, group.get("batchnorm", False))
                else 0.0 for group, base in zip(self.optimizer.param_groups, self.base_lrs)]

    def get_lr(self) -> list[float]:
        return self._rates()

    def enter_epoch(self, epoch: int, plan=None) -> None:
        """Set the rates for ``epoch``'s trainable stages now, without stepping the schedule; ``plan``:
        the module's current plan, when the strategy may have changed it (plateau unfreezing)."""
        self.epoch, self.plan = epoch, plan or self.plan
        for group, rate in zip(self.optimizer.param_groups, self._rates()):
            group["lr"] = rate

    def state_dict(self) -> dict:
        """Plain values only (checkpoints load with ``weights_only``): the plan comes from the module."""
        return {key: value for key, value in super().state_dict().items() if key != "plan"}
