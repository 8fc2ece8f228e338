"""What ``distill`` and ``lwf`` share: the soft-target loss and a frozen model that gives the targets.

Both strategies add ``T^2 * KL(softmax(target/T) || softmax(student/T))`` to the task's
cross-entropy (Hinton et al. 2015: the ``T^2`` keeps the soft term's gradients on the scale of the
hard term's as ``T`` changes). The targets come from a model that must never move, so it is kept
outside the student's modules: not in ``parameters()``, the optimizer, the freeze plan or the
checkpoint (it is rebuilt from its source when the student is built, also on resume).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_target_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(target/T) || softmax(student/T))``, averaged over the batch; no gradient to the targets."""
    target = F.log_softmax(target_logits.detach() / temperature, dim=1)
    student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(student, target, reduction="batchmean", log_target=True) * temperature**2


class FrozenModel:
    """A model in eval mode without gradients, held as a plain attribute so Lightning neither trains,
    saves, switches to train mode nor counts it; it follows the inputs to their device on first use.

    ``renormalize``: (mean, std) of the inputs it is given and (mean, std) it was trained with, each
    ``(1, C, 1, 1)``; inputs are mapped from the first to the second (a teacher with another backbone's
    preprocessing). None: the inputs are passed as they are."""

    def __init__(self, model: nn.Module, renormalize: tuple | None = None):
        self.model = model.eval().requires_grad_(False)
        self.renormalize = renormalize

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters(), None)
        if param is not None and param.device != inputs.device:
            self.model.to(inputs.device)
        if self.renormalize is not None:
            (mean_in, std_in), (mean, std) = [(m.to(inputs.device), s.to(inputs.device)) for m, s in self.renormalize]
            inputs = (inputs * std_in + mean_in - mean) / std
        return self.model(inputs)
