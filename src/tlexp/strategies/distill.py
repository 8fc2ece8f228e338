"""Knowledge distillation: the run's model (the student) learns from a finished tlexp run (the teacher).

The teacher is rebuilt from its run directory (``.hydra/config.yaml``: model and strategy) and its
best checkpoint, so any strategy's finished run can teach any student of the same task. A plain
timm model is not accepted as a teacher: its classifier would not output the target classes; train
it here first (``python train.py model=timm model.name=<teacher>``) and pass that run.
"""

from __future__ import annotations

from typing import Annotated

import hydra
import timm
import torch
from torch import nn

from tlexp.errors import InvalidValue
from tlexp.finished import FINISHED_RUN, locate
from tlexp.module import TransferModule
from tlexp.rules import TEMPERATURE, Rule, number
from tlexp.strategies.soft_targets import FrozenModel, soft_target_kl
from tlexp.trusted_files import UntrustedFile, load_run_config, load_tensors

TEACHER = FINISHED_RUN


def load_teacher(source: str, num_classes: int) -> nn.Module:
    """The module of a finished run, with its checkpoint's weights, in eval mode.

    Built as the run built it (its ``model`` and ``strategy`` nodes) but without loading pretrained
    weights, which the checkpoint replaces; a run on other classes is refused."""
    run_dir, checkpoint = locate(source, "teacher")
    try:  # someone else's run: neither its config nor its checkpoint may run code
        cfg = load_run_config(run_dir / ".hydra" / "config.yaml")
        state = load_tensors(checkpoint, "teacher checkpoint")["state_dict"]
    except UntrustedFile as error:
        raise InvalidValue("teacher", source, TEACHER, str(error)) from None
    backbone = hydra.utils.instantiate(cfg.model, pretrained=False, weights=None, img_size=cfg.data.image_size)
    from tlexp import config  # which imports the strategies

    teacher = hydra.utils.instantiate(config.target_node("strategy", cfg.strategy), backbone=backbone, num_classes=num_classes)
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        raise InvalidValue("teacher", source, f"{TEACHER}, trained on the same {num_classes} classes",
                           str(error).strip().splitlines()[0]) from error
    return teacher.eval()


def _preprocessing(backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as ``(1, C, 1, 1)``: the normalisation tlexp's data modules apply for ``backbone``."""
    config = timm.data.resolve_model_data_config(backbone)
    return torch.tensor(config["mean"]).view(1, -1, 1, 1), torch.tensor(config["std"]).view(1, -1, 1, 1)


class Distill(TransferModule):
    """The student trains on ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE``.

    ``teacher``: see ``TEACHER``; frozen, eval mode, outside the optimizer and the checkpoint (rebuilt
    from ``teacher`` when the student is built, also on resume). It sees the student's images,
    renormalised to its own backbone's mean and std when they differ (not resized: give the student
    the teacher's ``data.image_size``). ``alpha``: the soft term's weight (0: plain training, bit for
    bit); ``temperature``: T. The rest as for ``full``."""

    def __init__(self, *args, teacher: str | None = None,
                 alpha: Annotated[float, Rule("a weight in [0, 1]", lambda v: number(v) and 0 <= v <= 1)] = 0.9,
                 temperature: Annotated[float, TEMPERATURE] = 4.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not teacher:
            raise InvalidValue("teacher", teacher, TEACHER)
        model = load_teacher(teacher, self.hparams.num_classes)
        student, own = _preprocessing(self.backbone), _preprocessing(model.backbone)
        same = all(torch.equal(a, b) for a, b in zip(student, own))
        self.teacher = FrozenModel(model, renormalize=None if same else (student, own))

    def training_loss(self, inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        alpha = self.hparams.alpha
        hard = self.criterion(logits, labels)
        soft = soft_target_kl(logits, self.teacher(inputs), self.hparams.temperature)
        self.log_dict({"train/loss_ce": hard, "train/loss_kl": soft}, on_step=False, on_epoch=True, batch_size=len(labels))
        return alpha * soft + (1 - alpha) * hard
