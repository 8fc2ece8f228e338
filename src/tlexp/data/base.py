"""The base LightningDataModule: fixed validation carve, seeded stratified fraction, model-driven preprocessing.

Sizes set to ``auto`` (the configs' defaults) follow the data's size (``tlexp.data.sizes``); what they chose is
logged once and kept in ``indices["auto"]`` (``subset_indices.json``).

Subclasses only say where the images come from (``load``). Preprocessing follows the backbone's timm data config
(mean, std, interpolation); only the image size is ours. The splits are resized with the model's interpolation, so
preprocessing must be known before they are built: ``prepare_for(backbone)`` does both in that order.

Besides the labeled splits the data offers, one way for all, what a strategy may take: ``extra_split(name)``
(``EXTRA_SPLITS``: the training pool with a target domain, the unlabeled images), as loaded; ``make_dataset``
and ``loader`` make them a dataset and a loader like the splits' (resized, seeded); ``train_also_on`` adds a
strategy's items to the training epochs. What a strategy does with them is its own (``strategies/pseudo_label.py``,
``strategies/dann.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import lightning as L
import numpy as np
import timm.data
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from tlexp.data import sizes
from tlexp.data.domain_shift import TARGET_DOMAIN, shift_array
from tlexp.data.images import FileImages, TensorImages, resized
from tlexp.data.loading import EpochSampler, Split, auto_workers
from tlexp.data.sizes import AUTO
from tlexp.data.subset import stratified_fraction, stratified_split
from tlexp.errors import InvalidValue
from tlexp.rules import Checked, Rule, integer, is_integer, number

log = logging.getLogger(__name__)

UNLABELED = Rule("null or none (no unlabeled set), rest (the training pool's images outside data.fraction, without their labels)",
                 lambda v: v in (None, "none", "rest"))
EXTRA_SPLITS = {
    "pool": "the training pool (the validation carve excluded, the labeled fraction included), kept with a target_domain: "
            "what domain adaptation shifts into it",
    "unlabeled": "data.unlabeled's images: with rest, the training pool outside data.fraction, at most data.unlabeled_limit "
                 "of them (a seeded draw), in the target_domain where there is one; their labels only to measure by",
}
"""The splits besides the labeled ones that ``extra_split`` offers, by name."""
FRACTION = Rule("a number in (0, 1]", lambda v: number(v) and 0 < v <= 1)
NUM_WORKERS = Rule("auto or an integer >= 0", lambda v: v == "auto" or is_integer(v, 0))


class TransferDataModule(Checked, L.LightningDataModule):
    """Each parameter's annotation says what it accepts (``tlexp.rules``: checked by the config and before ``__init__``)."""

    val_key = "val_size"
    """The parameter (config key) that sizes the validation carve."""
    val_carve, test_carve = sizes.VAL, sizes.TEST
    """The ``auto`` rules of the validation carve and (sources without a test split) the test carve."""
    auto_batch_size = 64
    """What ``batch_size: auto`` gives on a training set of at least ``sizes.MIN_STEPS`` such batches."""

    def __init__(self, fraction: Annotated[float, FRACTION] = 1.0, val_size: Annotated[float | str, sizes.CARVE] = AUTO,
                 image_size: Annotated[int, integer(8, "an integer >= 8 (pixels)")] = 64, augment: bool = False,
                 batch_size: Annotated[int | str, sizes.BATCH] = AUTO, num_workers: Annotated[int | str, NUM_WORKERS] = "auto",
                 seed: int = 42, split_seed: int = 0, output_dir: str | None = None,
                 test_limit: Annotated[int | str | None, sizes.TEST_LIMIT] = AUTO,
                 unlabeled: Annotated[str | None, UNLABELED] = None,
                 unlabeled_limit: Annotated[int | str | None, sizes.UNLABELED_LIMIT] = AUTO,
                 target_domain: Annotated[str | None, TARGET_DOMAIN] = None):
        super().__init__()
        self.unlabeled = None if unlabeled == "none" else unlabeled
        self.unlabeled_limit = unlabeled_limit
        self.target_domain = target_domain
        self.target_test_set = None
        self.extra_splits: dict[str, Split] = {}
        """``EXTRA_SPLITS`` this data has, by name (``extra_split``)."""
        self.extra_train_set: Dataset | None = None
        """Items a strategy added to the training epochs (``train_also_on``)."""
        self.test_limit = test_limit
        self.fraction, self.val_size, self.image_size, self.augment = fraction, val_size, image_size, augment
        # batch_size: the setting until setup, then the batch every loader uses (auto resolved)
        self.batch_size, self.num_workers, self.seed, self.split_seed = batch_size, num_workers, seed, split_seed
        self.output_dir = Path(output_dir) if output_dir else None
        self.mean = self.std = None
        self.interpolation = "bilinear"
        self.classes: list[str] = []
        self.train_set = self.val_set = self.test_set = None
        self.indices: dict = {}
        self.auto_sizes: dict[str, int] = {}
        """What each ``auto`` setting became, by parameter name."""
        self._auto_reasons: list[str] = []
        self._resume_batches = 0

    # --- what a subclass provides ---------------------------------------------------------
    def load(self) -> tuple[Split, Split | None, Split | None, list[str]]:
        """(train, val or None to carve it from train, test or None to test on val, class names)."""
        raise NotImplementedError

    # --- preprocessing from the model ----------------------------------------------------------
    def prepare_for(self, model: nn.Module | Mapping, stage: str | None = "fit") -> TransferDataModule:
        """Preprocessing from ``model``'s timm data config (mean, std, interpolation; or that
        config itself, a mapping), then ``setup(stage)``: the one order that works. Returns self."""
        config = model if isinstance(model, Mapping) else timm.data.resolve_model_data_config(model)
        self.mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
        self.std = torch.tensor(config["std"]).view(1, -1, 1, 1)
        self.interpolation = config.get("interpolation", "bilinear")
        self.setup(stage)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float, 3 channels, normalised with the backbone's own statistics."""
        images = images.float().div_(255)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """uint8 images (what every split holds) normalised; other inputs, computed for the model by something that
        replaced a split, as they are (as float32)."""
        inputs, labels = batch
        if inputs.dtype != torch.uint8:
            return batch if inputs.dtype == torch.float32 else (inputs.float(), labels)
        return self.normalize(inputs), labels

    # --- splits ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dataset_name(self) -> str:
        """Which dataset (``result.json``'s ``dataset``): a source that loads one of many says which; else its own name."""
        return type(self).__name__.lower()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.mean is None:
            raise RuntimeError(f"{type(self).__name__}.setup() before its preprocessing is known: "
                               "call prepare_for(backbone) first, which also sets up")
        train, val, test, self.classes = self.load()
        train_pool = np.arange(len(train.labels))
        if val is None:
            train_pool, val_idx = self.carve(train.labels, self.val_key, self.val_size, self.val_carve)
            val = train.take(val_idx)
            self.indices["val"] = val_idx.tolist()
        if test is None:
            log.warning("no test split: test metrics are computed on the validation split")
            test = val
        limit = self.test_limit
        if limit == AUTO:
            limit = self.chose("test_limit", *sizes.cap_test_split(len(test.labels)))
        if limit is not None and limit < len(test.labels):  # a fixed, stratified test subset
            test_idx = stratified_fraction(test.labels, limit / len(test.labels), self.split_seed)
            test = test.take(test_idx)
            self.indices["test"] = test_idx.tolist()
        chosen = train_pool[stratified_fraction(train.labels[train_pool], self.fraction, self.seed)]
        self.indices.update(train=chosen.tolist(), fraction=self.fraction, seed=self.seed, split_seed=self.split_seed)
        self.train_set = self.make_dataset(train.take(chosen), self.augment)
        self.val_set = self.make_dataset(val)
        self.test_set = self.make_dataset(test)
        if self.target_domain is not None:
            self._set_up_target(train.take(train_pool), test)
        if self.unlabeled == "rest":
            self._set_up_unlabeled(train, np.setdiff1d(train_pool, chosen))
        if self.batch_size == AUTO:  # sized for the largest training set: the unlabeled images may join it (pseudo-labels)
            unlabeled = len(self.extra_splits["unlabeled"].labels) if "unlabeled" in self.extra_splits else 0
            self.batch_size = self.chose("batch_size", *sizes.batch_size(self.auto_batch_size, len(chosen), unlabeled))
        if self.auto_sizes:
            log.info("data: %s", ", ".join(self._auto_reasons))
            self.indices["auto"] = self.auto_sizes
        self.save_indices()

    def carve(self, labels: np.ndarray, key: str, size: float | int | str, rule: sizes.Carve) -> tuple[np.ndarray, np.ndarray]:
        """(rest, held out) indices of ``labels``: ``size`` (config key ``key``) of them, stratified by
        ``split_seed``: a number, a share, or ``auto`` (``rule``)."""
        if size != AUTO:
            return stratified_split(labels, size, self.split_seed, name=key)
        count = self.chose(key, *rule.count(labels, key))
        return stratified_split(labels, count, self.split_seed, name=key, keep=rule.keep)

    def carve_test(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The test split held out of train by ``test_size`` (set by the sources that may carve one)."""
        return self.carve(labels, "test_size", self.test_size, self.test_carve)

    def chose(self, key: str, value: int, why: str) -> int:
        """Records what ``auto`` chose for ``key`` (logged once at the end of setup); returns ``value``."""
        self.auto_sizes[key] = value
        self._auto_reasons.append(f"{key} auto -> {value} ({why})")
        return value

    def _set_up_unlabeled(self, train: Split, rest: np.ndarray) -> None:
        """The ``unlabeled`` extra split: ``rest``, the training pool outside the fraction (never the validation carve,
        never the test split), at most ``unlabeled_limit`` of it (a seeded draw, not stratified: its labels are not
        looked at); with a ``target_domain``, its shifted copy, so that self-training adapts to the target domain."""
        limit = self.unlabeled_limit
        if limit == AUTO:
            limit = self.chose("unlabeled_limit", *sizes.unlabeled_cap(len(self.train_set), len(rest)))
        if limit is not None and limit < len(rest):
            rest = np.sort(np.random.default_rng(self.seed).choice(rest, limit, replace=False))
        if not len(rest):
            log.warning("data.unlabeled=rest: data.fraction leaves no unlabeled images")
        unlabeled = train.take(rest)
        if self.target_domain is not None:
            unlabeled = Split(unlabeled.labels, shift_array(unlabeled.images, self.target_domain, seed=2))
        self.extra_splits["unlabeled"] = unlabeled
        self.indices.update(unlabeled=rest.tolist(), unlabeled_size=len(rest))

    def _set_up_target(self, pool: Split, test: Split) -> None:
        """The ``target_domain`` copy of the test split; the training ``pool`` (validation carve excluded) kept as the
        ``pool`` extra split. Shifts apply to images in memory: image files are refused."""
        if pool.images is None:
            raise InvalidValue("target_domain", self.target_domain, "null for image files", "domain shifts apply to "
                               "images held in memory (digits, fashion_mnist, synthetic, ...), not to image files")
        self.target_test_set = self.make_dataset(Split(test.labels, shift_array(test.images, self.target_domain, seed=1)))
        self.extra_splits["pool"] = pool
        self.indices["target_domain"] = self.target_domain

    # --- what strategies take besides the labeled splits ---------------------------------------------------
    def extra_split(self, name: str) -> Split | None:
        """The extra split ``name`` (``EXTRA_SPLITS``) as loaded: uint8 images or files, with their labels (a strategy
        that takes them as unlabeled only measures by them); None where this data has none (the setting that makes it
        is off, or before setup)."""
        if name not in EXTRA_SPLITS:
            raise KeyError(f"no extra split {name!r}; there are: {', '.join(EXTRA_SPLITS)}")
        return self.extra_splits.get(name)

    def train_also_on(self, dataset: Dataset | None) -> None:
        """Train on ``dataset``'s items too, after the labeled ones (a strategy's, e.g. pseudo-labeled images, each
        ``(uint8 image, class)``); None or empty: on the labeled ones alone. Train loaders built afterwards see it."""
        self.extra_train_set = dataset if dataset is not None and len(dataset) else None

    def training_set(self) -> Dataset:
        """What a training epoch goes over: ``train_set``, then the items ``train_also_on`` added."""
        return self.train_set if self.extra_train_set is None else ConcatDataset([self.train_set, self.extra_train_set])

    def save_indices(self) -> None:
        if self.output_dir is None or (self.trainer is not None and not self.trainer.is_global_zero):
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "subset_indices.json").write_text(json.dumps(self.indices))

    def make_dataset(self, split: Split, augment: bool = False) -> TensorImages | FileImages:
        """``split`` as the splits are made: resized to ``image_size`` with the model's interpolation, uint8 images
        (``normalize`` makes them inputs), augmented if ``augment``."""
        if split.images is not None:
            return TensorImages(resized(split.images, self.image_size, self.interpolation), split.labels, augment)
        return FileImages(split.paths, split.labels, self.image_size, self.interpolation, augment)

    # --- loaders ----------------------------------------------------------------------------------
    def workers(self, dataset) -> int:
        """``num_workers``, or under ``auto`` the count ``loading.auto_workers`` chooses for ``dataset``."""
        return self.num_workers if self.num_workers != "auto" else auto_workers(dataset)

    def loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        """A loader of ``dataset`` like the splits' (any dataset: a strategy's too): the run's batch size, in order or
        by ``sampler``, seeded by its own generator, its workers chosen by ``workers``."""
        workers = self.workers(dataset)
        # its own generator: starting an iterator draws a seed, and a draw from the global RNG would make the
        # epoch's dropout and augmentation depend on when Lightning starts it (earlier after a resume)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, shuffle=False,
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        """Each epoch's order is a function of (seed, epoch), also for every DDP rank; after a
        mid-epoch resume the first epoch skips, by index, the batches already trained on."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        dataset = self.training_set()
        sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        loader = self.loader(dataset, sampler)
        if 0 < self._resume_batches < len(loader):
            sampler.skip = self._resume_batches * self.batch_size
        self._resume_batches = 0
        return loader

    # --- checkpoint state: the position in the epoch ------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in checkpoints by Lightning (and restored before the loaders are built); a finished epoch
        counts as none done: the next one may be longer or shorter (a strategy's items join the training set)."""
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"batches_done": done if done < self.trainer.num_training_batches else 0}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_batches = state_dict.get("batches_done", 0)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test split; with ``target_domain`` also its shifted copy, second (``test/target_*``)."""
        if self.target_test_set is None:
            return self.loader(self.test_set)
        return [self.loader(self.test_set), self.loader(self.target_test_set)]
