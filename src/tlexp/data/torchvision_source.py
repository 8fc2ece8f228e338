"""Any torchvision classification dataset by class name (``data.name``), with its official splits.

A class is asked for its splits by its constructor's signature (``inspect.signature``):

================  ==========================  ================================  ===============  ===========================
constructor       train                       val                               test             e.g.
================  ==========================  ================================  ===============  ===========================
``train: bool``   ``train=True``              carved (``val_size``)             ``train=False``  CIFAR10/100, MNIST, KMNIST,
                                                                                                 FashionMNIST, USPS
``split: str``    first accepted of ``train``,  ``val``, ``valid`` or             ``test``         Flowers102, DTD, Food101,
                  ``trainval``,               ``validation`` if accepted,                        FGVCAircraft, SVHN, STL10,
                  ``train-standard``          else carved                                        OxfordIIITPet, StanfordCars,
                                                                                                 GTSRB, Country211, PCAM
neither           the whole dataset           carved (``val_size``)             carved           EuroSAT, Caltech101/256,
                                                                                (``test_size``)  SUN397
================  ==========================  ================================  ===============  ===========================

A split name the class rejects (the ``ValueError`` of its argument check) is a split it does not have.
Without a test split the official validation split is the test split and validation is carved from
train (as ImageNet-style results are reported), so test metrics never come from the split that picks
checkpoints. A val or test split without labels (STL10's, CLEVR's test) is left out with a warning.

Images: classes built on ``DatasetFolder`` (EuroSAT, ImageNet) give their public ``samples`` file list,
decoded per item as ``data=image_folder`` does; a uint8 ``data`` array (CIFAR, the MNIST family, SVHN and
STL10 stored CxHxW, USPS) is used in memory as it is; any other class is decoded item by item, once, into
memory at ``image_size`` (short side, centre crop): its items are the only public way to its images, so
memory is N x S x S x 3 bytes. Labels: ``targets`` or ``labels``, else each item's second element.
Classes: ``classes`` when it names every label, else the label values as text (renumbered 0..K-1).
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torchvision.datasets
from PIL import Image, ImageOps

from tlexp.data import sizes
from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.data.sizes import AUTO
from tlexp.errors import InvalidValue

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": ("train", "trainval", "train-standard"), "val": ("val", "valid", "validation"), "test": ("test",)}
"""Values of a ``split`` argument tried for each of tlexp's splits, first accepted wins."""
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


def classification_datasets() -> list[str]:
    return sorted(name for name, obj in vars(torchvision.datasets).items()
                  if inspect.isclass(obj) and issubclass(obj, torchvision.datasets.VisionDataset)
                  and obj is not torchvision.datasets.VisionDataset)


def dataset_class(name: str) -> type:
    """``torchvision.datasets.<name>``; an unknown name is an error listing the close matches."""
    known = classification_datasets()
    if name not in known:
        by_lower = {k.lower(): k for k in known}
        close = [by_lower[k] for k in difflib.get_close_matches(str(name).lower(), by_lower, n=3, cutoff=0.5)]
        raise InvalidValue("name", name, "a torchvision classification dataset class, e.g. CIFAR10, EuroSAT, Flowers102",
                           f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}")
    return getattr(torchvision.datasets, name)


def square_array(images: Iterable[Image.Image], size: int, interpolation: str) -> np.ndarray:
    """PIL images -> one uint8 N x S x S x 3 array: RGB, short side resized to ``size``, centre-cropped."""
    method = RESAMPLING.get(interpolation, Image.Resampling.BILINEAR)
    arrays = [np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), method)) for image in images]
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8)


def hwc(data) -> np.ndarray:
    """A uint8 N x H x W or N x H x W x C array; N x C x H x W (SVHN, STL10) is transposed."""
    array = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    return array


def labelled(splits: dict[str, Split], source: str) -> dict[str, Split]:
    """``splits`` without a val or test split that has images without labels (-1), with a warning."""
    missing = [name for name, split in splits.items() if name != "train" and (split.labels < 0).any()]
    for name in missing:
        log.warning("%s: the %s split has images without labels; left out", source, name)
    return {name: split for name, split in splits.items() if name not in missing}


def arrange(splits: dict[str, Split], carve_test: Callable, indices: dict) -> tuple[Split, Split | None, Split]:
    """tlexp's (train, val or None, test) from a dataset's labelled ``splits``: without a test split the
    val split tests and val is carved from train; with neither, ``carve_test`` (labels -> rest, held out)
    holds out the test split (its indices into train go to ``indices["carved_test"]``)."""
    splits = dict(splits)
    if "test" not in splits and "val" in splits:
        splits["test"] = splits.pop("val")
    train = splits["train"]
    if "test" not in splits:
        rest, held = carve_test(train.labels)
        train, splits["test"] = train.take(rest), train.take(held)
        indices["carved_test"] = held.tolist()
    return train, splits.get("val"), splits["test"]


class Torchvision(TransferDataModule):
    def __init__(self, name: str = "CIFAR10", root: str | None = "data/torchvision", download: bool = True,
                 options: dict | None = None, test_size: Annotated[float | str, sizes.CARVE] = AUTO, **kwargs):
        super().__init__(**kwargs)
        self.name, self.dataset_class = name, dataset_class(name)
        self.root = Path(root).expanduser() if root else None
        self.download = download
        self.options = dict(options or {})
        self.test_size = test_size

    @property
    def dataset_name(self) -> str:
        return self.name

    def load(self):
        parameters = inspect.signature(self.dataset_class).parameters
        if "train" in parameters:
            found = {"train": self.open(train=True), "test": self.open(train=False)}
        elif "split" in parameters:
            found = {}
            for split, names in SPLIT_NAMES.items():
                found[split] = next((d for d in (self.open(split=n, optional=True) for n in names) if d is not None), None)
        else:
            found = {"train": self.open()}
        if found["train"] is None:
            raise InvalidValue("name", self.name, "a torchvision dataset with a training split",
                               f"its split argument accepts none of {', '.join(SPLIT_NAMES['train'])}")
        splits = {name: self.read(dataset, name) for name, dataset in found.items() if dataset is not None}
        classes, splits = self.class_names(found["train"], splits)
        return (*arrange(splits, self.carve_test, self.indices), classes)

    def open(self, optional: bool = False, **split):
        """The dataset class built for one split; None where ``optional`` and the class rejects that split."""
        parameters = inspect.signature(self.dataset_class).parameters
        kwargs = {**self.options, **split, **({"download": self.download} if "download" in parameters else {})}
        try:
            return self.dataset_class(str(self.root), **kwargs)
        except (ValueError, TypeError) as error:
            if optional and "split" in str(error):
                return None
            raise InvalidValue("options", self.options, f"keyword arguments torchvision.datasets.{self.name} accepts",
                               str(error)) from error
        except (RuntimeError, OSError) as error:  # not found or corrupted; with download=true: no network
            raise InvalidValue("root", str(self.root), f"a folder with torchvision's {self.name} files "
                               "(as download=true leaves them), or download=true with network access",
                               f"download={self.download}: {error}") from error

    def read(self, dataset, split: str) -> Split:
        """One split's labels and images (file paths, the ``data`` array, or decoded items)."""
        if isinstance(dataset, torchvision.datasets.DatasetFolder):
            return Split(np.array(dataset.targets, dtype=np.int64), paths=[Path(path) for path, _ in dataset.samples])
        labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = getattr(dataset, "labels", None)
        data = None if getattr(dataset, "data", None) is None else hwc(dataset.data)
        if data is not None and labels is not None and data.dtype == np.uint8 and data.ndim in (3, 4):
            return Split(self.labels(labels, split), data)
        log.info("torchvision %s %s: decoding %d images into memory at %d px", self.name, split, len(dataset), self.image_size)
        targets = []

        def items():
            for index in range(len(dataset)):
                image, target = dataset[index]
                targets.append(target)
                yield image

        images = square_array(items(), self.image_size, self.interpolation)  # resized one item at a time
        return Split(self.labels(targets, split), images)

    def labels(self, values, split: str) -> np.ndarray:
        try:
            labels = np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)
        except (TypeError, ValueError):
            raise InvalidValue("name", self.name, "a torchvision classification dataset (one class index per image)",
                               f"its {split} targets are {type(next(iter(values))).__name__}, not class indices") from None
        return labels

    def class_names(self, train_dataset, splits: dict[str, Split]) -> tuple[list[str], dict[str, Split]]:
        """Splits without labels left out (train: an error), and the class names."""
        if (splits["train"].labels < 0).any():
            raise InvalidValue("name", self.name, "a torchvision dataset with labels", "its training split has images without one")
        splits = labelled(splits, f"torchvision {self.name}")
        values = np.unique(np.concatenate([s.labels for s in splits.values()]))
        classes = list(getattr(train_dataset, "classes", None) or [])
        if classes and values.max() < len(classes):
            return [str(c) for c in classes], splits
        renumbered = {k: Split(np.searchsorted(values, s.labels), s.images, s.paths) for k, s in splits.items()}
        return [str(v) for v in values], renumbered
