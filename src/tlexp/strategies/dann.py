"""Domain-adversarial training (DANN, Ganin & Lempitsky 2015): labeled source images, unlabeled target
images of a shifted domain (``data.target_domain``), and features the two cannot be told apart by.

A domain classifier on the pooled backbone features learns to tell source from target; between it and
the backbone a gradient reversal layer passes the features on unchanged and sends the gradient back
negated and scaled by ``lambda``, so the same loss that trains the classifier trains the backbone to
confuse it. ``lambda`` ramps from 0 to ``domain_weight`` as ``2 / (1 + exp(-10 p)) - 1`` over the
training progress ``p``, so the early, noisy domain signal does not disturb the pretrained features.

The target images are the strategy's own: the ``target_domain`` copy of the data's training pool (the datamodule's
``pool`` extra split, ``target_training_set``), drawn per step by ``TargetBatches``.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tlexp.backbone import feature_width
from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.data.domain_shift import SHIFTS, shift_array
from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.rules import WEIGHT, integer


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-coefficient``."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coefficient * grad, None


def grl_coefficient(progress: float, maximum: float) -> float:
    """DANN's ramp: ``maximum * (2 / (1 + exp(-10 progress)) - 1)``, 0 at the start, ~``maximum`` at the end."""
    return maximum * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


def target_training_set(datamodule, target_domain: str) -> Dataset:
    """The target domain's training images: the ``target_domain`` copy of the whole training pool (the labeled
    fraction's images too, as in MNIST->MNIST-M; never the validation or test images), every label -1 (unlabeled),
    augmented as the training images are."""
    pool = datamodule.extra_split("pool") if isinstance(datamodule, TransferDataModule) else None
    if pool is None:
        raise RuntimeError("strategy=dann needs a tlexp datamodule with a target domain (data.target_domain)")
    images = shift_array(pool.images, target_domain, seed=0)
    return datamodule.make_dataset(Split(np.full(len(images), -1, dtype=np.int64), images), datamodule.augment)


class TargetBatches:
    """The target domain's training images as normalised batches, a pure function of the step: each pass
    over them has its own seeded order ``(seed, pass)``, so a run draws the same target batches every time,
    also after a resume; DDP ranks take interleaved slices of one order. The dataset's labels are not read."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, normalize, rank: int = 0, world: int = 1):
        self.dataset, self.batch_size, self.seed, self.normalize = dataset, batch_size, seed, normalize
        self.rank, self.world = rank, world
        self.per_pass = max(1, len(dataset) // (batch_size * world))
        self._order: tuple[int, torch.Tensor] | None = None

    def __call__(self, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
        cycle, position = divmod(step, self.per_pass)
        if self._order is None or self._order[0] != cycle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle)
            self._order = (cycle, torch.randperm(len(self.dataset), generator=generator))
        start = (position * self.world + self.rank) * self.batch_size
        indices = self._order[1][(start + torch.arange(self.batch_size)) % len(self.dataset)]
        return self.normalize(torch.stack([self.dataset[int(i)][0] for i in indices]).to(device))


class DANN(TransferModule):
    """Trains like ``full`` on ``CE(source) + BCE(domain classifier(GRL_lambda(features)), source 0 / target 1)``.

    Each training step draws a batch of target images (``TargetBatches``, as large as the source batch) that
    goes through the backbone with the source batch; the domain classifier (an MLP, ``domain_hidden`` wide)
    sees the features of both. It is a new layer like the head, so it joins the ``head`` stage and trains
    from the first step at ``lr_head``. ``target_domain``: ``data.target_domain`` (the config passes it);
    without one there is nothing to adapt to and the module refuses to be built."""

    def __init__(self, *args, domain_weight: Annotated[float, WEIGHT] = 1.0, domain_hidden: Annotated[int, integer(1)] = 256,
                 target_domain: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if target_domain not in SHIFTS:
            raise InvalidValue("target_domain", target_domain, " | ".join(SHIFTS),
                               "strategy=dann adapts to a shifted copy of the data, which data.target_domain names")
        width = feature_width(self.backbone)
        hidden = domain_hidden
        self.domain_classifier = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                               nn.Linear(hidden, 1))
        head = self.stages[-1]
        head.params += list(self.domain_classifier.parameters())
        head.param_names += [f"domain_classifier.{name}" for name, _ in self.domain_classifier.named_parameters()]
        self.target_batches: TargetBatches | None = None
        self._target: torch.Tensor | None = None
        self._features: torch.Tensor | None = None
        self._target_set: tuple[object, Dataset] | None = None

    def target_set(self, datamodule) -> Dataset:
        """``datamodule``'s target training images (``target_training_set``), made once per datamodule."""
        if self._target_set is None or self._target_set[0] is not datamodule:
            self._target_set = (datamodule, target_training_set(datamodule, self.hparams.target_domain))
        return self._target_set[1]

    def on_train_start(self):
        data = self.trainer.datamodule
        self.target_batches = TargetBatches(self.target_set(data), data.batch_size, data.seed, data.normalize,
                                            self.global_rank, self.trainer.world_size)

    def training_step(self, batch, batch_idx):
        """The next target batch, by the batch's index across epochs (restored on resume, also mid-epoch)."""
        self._target = self.target_batches(self.trainer.fit_loop.epoch_loop.total_batch_idx, self.device)
        return super().training_step(batch, batch_idx)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """As the base's; in a training step the target batch goes through the backbone with the source batch
        (one pass, as in DANN's reference code: BatchNorm with batch statistics sees both domains) and the
        features of both are kept for ``training_loss``."""
        target, self._target = self._target, None
        if target is None:
            return super().forward(images)
        self._features = self.backbone(torch.cat([images, target]))
        return self.head(self._features[: len(images)])

    def progress(self) -> float:
        """Share of the training steps done, in [0, 1]."""
        return min(1.0, self.trainer.global_step / max(1, self.trainer.estimated_stepping_batches))

    def domain_loss(self, features: torch.Tensor, num_source: int, coefficient: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(BCE of the domain classifier behind the gradient reversal layer, its accuracy): the first
        ``num_source`` rows of ``features`` are source (0), the rest target (1)."""
        logits = self.domain_classifier(GradientReversal.apply(features, coefficient)).squeeze(1)
        domains = (torch.arange(len(features), device=features.device) >= num_source).float()
        accuracy = ((logits > 0).float() == domains).float().mean()
        return F.binary_cross_entropy_with_logits(logits, domains), accuracy

    def training_loss(self, inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features, self._features = self._features, None
        ce = self.criterion(logits, labels)
        coefficient = grl_coefficient(self.progress(), self.hparams.domain_weight)
        domain, accuracy = self.domain_loss(features, len(labels), coefficient)
        self.log_dict({"train/loss_ce": ce, "train/loss_domain": domain, "train/domain_acc": accuracy,
                       "train/grl_lambda": coefficient}, on_step=False, on_epoch=True, batch_size=len(labels))
        return ce + domain
