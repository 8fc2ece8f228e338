"""Pseudo-labelling (self-training, Lee 2013): little labeled data, plenty of unlabeled images.

The run's epochs are split into ``rounds``. The first round trains like ``full`` on the labeled
subset (``data.fraction``). At the end of every round but the last, the model predicts the whole
unlabeled set (``data.unlabeled=rest``: the training pool's other images, without their labels) in
eval mode without augmentation; the next round trains on the labeled subset plus the images whose
top softmax probability is >= ``threshold``, labeled with the predicted class.

The data offers the unlabeled images (its ``unlabeled`` extra split); the strategy owns what it does with
them (``UnlabeledImages``): the loader it predicts them by, the hidden labels it measures by, the picked
images it adds to the training epochs (``datamodule.train_also_on``). The training set grows between rounds,
so the train loader is rebuilt when a round starts (each epoch's order stays a function of (seed, epoch)),
and the learning-rate schedule, sized for epochs of the labeled subset, advances by one labeled epoch per
epoch whatever its length: the same schedule over the epochs as ``full``, and bit for bit ``full`` in the
first round. The pseudo-labels are saved in checkpoints, so a resumed run trains on the same ones.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from tlexp.data.base import TransferDataModule
from tlexp.errors import InvalidValue
from tlexp.inference import inference_pass
from tlexp.module import TransferModule
from tlexp.rules import Rule, integer, number

ROUNDS = "an integer >= 1 (1: no pseudo-labels, plain full), at most trainer.max_epochs"
CHECKPOINT_KEY = "pseudo_labels"


def no_pseudo_labels() -> dict:
    """Round 0's state: no unlabeled image is used yet."""
    return {"round": 0, "indices": torch.empty(0, dtype=torch.long), "labels": torch.empty(0, dtype=torch.long)}


class Relabeled(Dataset):
    """Items ``indices`` of ``dataset`` with ``targets`` in place of their labels, which are never read:
    the unlabeled set yields its own positions, the pseudo-labeled set the predicted classes."""

    def __init__(self, dataset, indices: torch.Tensor, targets: torch.Tensor):
        self.dataset, self.indices, self.targets = dataset, indices, targets

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])][0], self.targets[index]


class UnlabeledImages:
    """A datamodule's unlabeled images (its ``unlabeled`` extra split, ``data.unlabeled=rest``) as self-training uses
    them: ``loader`` to predict them by, ``labels`` to measure the predictions by, ``picked`` to train on."""

    def __init__(self, datamodule):
        split = datamodule.extra_split("unlabeled") if isinstance(datamodule, TransferDataModule) else None
        if split is None:
            raise InvalidValue("unlabeled", getattr(datamodule, "unlabeled", None), "rest",
                               "strategy pseudo_label needs a tlexp datamodule with unlabeled images: data.unlabeled=rest")
        self.datamodule, self.split = datamodule, split
        self.dataset = datamodule.make_dataset(split)  # predicted as they are: not augmented
        self._augmented = None

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self) -> DataLoader:
        """The images in a fixed order, not augmented, as (uint8 images, positions in the set): normalise them with
        the datamodule's ``normalize``, as ``on_after_batch_transfer`` does the training batches."""
        positions = torch.arange(len(self.dataset))
        return self.datamodule.loader(Relabeled(self.dataset, positions, positions))

    def labels(self) -> torch.Tensor:
        """Their true classes, by position: kept only to *measure* pseudo-labels (their accuracy is logged); no
        loader yields them, so they never reach a loss."""
        return self.dataset.labels

    def picked(self, indices: torch.Tensor, labels: torch.Tensor) -> Dataset | None:
        """The images at ``indices`` (positions) with ``labels`` (predicted classes), augmented as the training images
        are; None when there are none."""
        if not len(indices):
            return None
        if self._augmented is None:  # the unlabeled images once more only where augmented
            self._augmented = self.datamodule.make_dataset(self.split, True) if self.datamodule.augment else self.dataset
        return Relabeled(self._augmented, indices, labels)


class PseudoLabel(TransferModule):
    """Trains like ``full``; ``rounds`` rounds over ``trainer.max_epochs``, the unlabeled images predicted
    with probability >= ``threshold`` added with their predicted class after each round but the last.

    ``pseudo``: {"round": the round these labels were made for, "indices": positions in the datamodule's
    unlabeled images (``UnlabeledImages``), "labels": their predicted classes}."""

    data_defaults = {"unlabeled": "rest"}

    def __init__(self, *args, rounds: Annotated[int, integer(1, ROUNDS)] = 2,
                 threshold: Annotated[float, Rule("a softmax probability in [0, 1]", lambda v: number(v) and 0 <= v <= 1)] = 0.9,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.pseudo = no_pseudo_labels()
        self._unlabeled: UnlabeledImages | None = None

    def unlabeled(self, datamodule) -> UnlabeledImages:
        """``datamodule``'s unlabeled images, made once per datamodule (``InvalidValue`` naming ``unlabeled`` without any)."""
        if self._unlabeled is None or self._unlabeled.datamodule is not datamodule:
            self._unlabeled = UnlabeledImages(datamodule)
        return self._unlabeled

    def configure_callbacks(self):
        return [*super().configure_callbacks(), PseudoLabeling()]

    def round_of(self, epoch: int) -> int:
        """The round ``epoch`` belongs to: the rounds split ``trainer.max_epochs`` as evenly as they can."""
        return min(self.hparams.rounds - 1, epoch * self.hparams.rounds // self.trainer.max_epochs)

    def predict_unlabeled(self, datamodule) -> tuple[torch.Tensor, torch.Tensor]:
        """(top softmax probability, predicted class) of each unlabeled image, by position, in an
        ``inference_pass`` (eval mode, no augmentation, no autograd; the modules' modes restored after). Only
        those two numbers per image are kept, so memory does not grow with the unlabeled set beyond them."""
        confidence, predicted = [], []
        with inference_pass(self):  # also when called inside validation: plain tensors out
            for images, _ in self.unlabeled(datamodule).loader():
                top = self(datamodule.normalize(images.to(self.device))).softmax(1).max(1)
                confidence.append(top.values.cpu())
                predicted.append(top.indices.cpu())
            if not confidence:
                return torch.empty(0), torch.empty(0, dtype=torch.long)
            return torch.cat(confidence), torch.cat(predicted)

    def relabel(self, datamodule, next_round: int) -> None:
        """Pseudo-labels for ``next_round`` from the model as it is now, into ``pseudo`` and the training set."""
        confidence, predicted = self.predict_unlabeled(datamodule)
        indices = torch.nonzero(confidence >= self.hparams.threshold).flatten()
        self.pseudo = {"round": next_round, "indices": indices, "labels": predicted[indices]}
        self.train_on_pseudo_labels(datamodule)

    def train_on_pseudo_labels(self, datamodule) -> None:
        """The training epochs: the labeled subset plus the images ``pseudo`` picks, with their labels (Lightning
        builds the train loader again where ``PseudoLabeling`` says so)."""
        datamodule.train_also_on(self.unlabeled(datamodule).picked(self.pseudo["indices"], self.pseudo["labels"]))

    def pseudo_metrics(self, datamodule) -> dict[str, float]:
        """``pseudo/count``, ``pseudo/threshold``, ``pseudo/round`` and, when there are any, ``pseudo/accuracy``:
        the share of pseudo-labels equal to the hidden true labels (measured only, never trained on)."""
        indices, labels = self.pseudo["indices"], self.pseudo["labels"]
        metrics = {"pseudo/count": float(len(indices)), "pseudo/threshold": float(self.hparams.threshold),
                   "pseudo/round": float(self.pseudo["round"])}
        if len(indices):
            metrics["pseudo/accuracy"] = (self.unlabeled(datamodule).labels()[indices] == labels).float().mean().item()
        return metrics

    def lr_scheduler_step(self, scheduler, metric):
        """Each batch moves the schedule by (batches of a labeled epoch) / (batches of this epoch) steps: it was
        sized for epochs of the labeled subset alone (``estimated_stepping_batches``) and keeps its shape over
        the epochs as the training set grows (counted from the sets' sizes, so also in a resumed partial epoch)."""
        datamodule, world = self.trainer.datamodule, self.trainer.world_size
        batches = [math.ceil(math.ceil(len(data) / world) / datamodule.batch_size)
                   for data in (datamodule.train_set, datamodule.training_set())]
        scheduler.last_epoch += batches[0] / batches[1] - 1
        scheduler.step()


class PseudoLabeling(Callback):
    """When ``PseudoLabel`` relabels (the end of a round), and the pseudo-labels in checkpoints.

    A round's last epoch relabels at its end, or earlier at the checkpoint saved after its last batch
    (validation's), so that checkpoint holds the labels the next round trains on. Lightning rebuilds
    the train loader for the next epoch (``reload_dataloaders_every_n_epochs`` is 1 for that one epoch)."""

    def __init__(self):
        self._reload: int | None = None

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        pl_module.unlabeled(trainer.datamodule)  # refused here, before training, where there are none
        if pl_module.hparams.rounds > trainer.max_epochs:
            raise InvalidValue("rounds", pl_module.hparams.rounds, ROUNDS, f"trainer.max_epochs={trainer.max_epochs}")

    def on_fit_start(self, trainer, pl_module):
        pl_module.train_on_pseudo_labels(trainer.datamodule)

    def _round_ends(self, trainer, pl_module) -> bool:
        """Whether every batch of the current epoch has trained and it is the last epoch of a round with a next one."""
        epoch = trainer.current_epoch
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches
        return trained and pl_module.round_of(epoch) < pl_module.round_of(epoch + 1)

    def _relabel(self, trainer, pl_module) -> None:
        next_round = pl_module.round_of(trainer.current_epoch) + 1
        if pl_module.pseudo["round"] != next_round:
            pl_module.relabel(trainer.datamodule, next_round)

    def on_train_epoch_start(self, trainer, pl_module):
        if self._reload is not None:  # the new round's loader is built: back to the trainer's own setting
            trainer.reload_dataloaders_every_n_epochs, self._reload = self._reload, None

    def on_train_epoch_end(self, trainer, pl_module):
        if self._round_ends(trainer, pl_module):
            self._relabel(trainer, pl_module)
            pl_module.log_dict(pl_module.pseudo_metrics(trainer.datamodule), on_step=False, on_epoch=True)
            self._reload, trainer.reload_dataloaders_every_n_epochs = trainer.reload_dataloaders_every_n_epochs, 1

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == TrainerFn.FITTING and self._round_ends(trainer, pl_module):
            self._relabel(trainer, pl_module)
        checkpoint[CHECKPOINT_KEY] = pl_module.pseudo

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        """Before the train loader is built: a resumed run trains on the checkpoint's pseudo-labels."""
        pl_module.pseudo = checkpoint.get(CHECKPOINT_KEY, no_pseudo_labels())
        self.on_fit_start(trainer, pl_module)
