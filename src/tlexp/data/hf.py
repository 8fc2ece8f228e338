"""A Hugging Face ``datasets`` dataset (``data.path``): a folder written by ``save_to_disk``, a hub id
(downloaded into ``data.cache_dir`` when online, else read from that cache), a local folder of images
(``<class>/*``, read as ``imagefolder``) or a packaged builder such as ``imagefolder`` with ``data.data_dir``.

``split_map`` names the dataset's split for each of tlexp's ``train``, ``val`` and ``test`` (default:
``train``; the first of ``validation``, ``val``, ``valid`` present; ``test`` if present; null: none). The
missing ones follow the torchvision source's rule (``torchvision_source.arrange``). Images
(``image_column``, an ``Image`` feature) are decoded once into memory at ``image_size`` (short side,
centre crop), each file as ``data=image_folder`` decodes it. Labels (``label_column``): a ``ClassLabel``
gives the class names; an integer or string column is numbered by its sorted values.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Annotated

import numpy as np

from tlexp.data import sizes
from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.data.images import load_rgb
from tlexp.data.sizes import AUTO
from tlexp.data.torchvision_source import arrange, labelled, square_array
from tlexp.errors import InvalidValue

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


def datasets_library():
    try:
        import datasets
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("data=hf needs the datasets library: pip install 'tlexp[hf]'") from error
    return datasets


class HuggingFace(TransferDataModule):
    def __init__(self, path: str | None = None, name: str | None = None, data_dir: str | None = None,
                 cache_dir: str | None = None, image_column: str = "image", label_column: str = "label",
                 split_map: dict | None = None, test_size: Annotated[float | str, sizes.CARVE] = AUTO, **kwargs):
        super().__init__(**kwargs)
        if not path:
            raise InvalidValue("path", path, "a hub dataset id, a folder written by save_to_disk, or a folder of images")
        unknown = set(split_map or {}) - set(SPLITS)
        if unknown:
            raise InvalidValue("split_map", dict(split_map), "a mapping from train, val, test to the dataset's split names",
                               f"unknown keys: {', '.join(sorted(unknown))}")
        self.path, self.name, self.data_dir, self.cache_dir = path, name, data_dir, cache_dir
        self.image_column, self.label_column = image_column, label_column
        self.split_map = dict(split_map or {})
        self.test_size = test_size

    @property
    def dataset_name(self) -> str:
        return self.name or self.path  # the dataset's configuration, else the dataset

    def open(self) -> dict:
        """The dataset's splits by name."""
        datasets = datasets_library()
        folder = Path(self.path).expanduser()
        try:
            if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
                loaded = datasets.load_from_disk(str(folder))
            else:
                loaded = datasets.load_dataset(self.path, self.name, data_dir=self.data_dir, cache_dir=self.cache_dir)
        except Exception as error:  # not found, no network, not a dataset: the library's own words as detail
            raise InvalidValue("path", self.path, "a folder written by save_to_disk, a folder of images, or a hub dataset "
                               "id (online, or in data.cache_dir)", f"{type(error).__name__}: {error}") from error
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}

    def chosen(self, available: dict) -> dict:
        """tlexp split -> the dataset's split, from ``split_map`` and the defaults."""
        chosen = {}
        for split in SPLITS:
            if split in self.split_map:
                name = self.split_map[split]
                if name is not None and name not in available:
                    raise InvalidValue("split_map", self.split_map, f"split names of data.path={self.path}: "
                                       f"{', '.join(available)} (or null)", f"{split}: {name!r} is not one of them")
            else:
                name = next((n for n in DEFAULT_SPLITS[split] if n in available), None)
            if name is not None:
                chosen[split] = available[name]
        if "train" not in chosen:
            raise InvalidValue("split_map", self.split_map, f"a train split among {', '.join(available)}",
                               "the dataset has no split named train")
        return chosen

    def load(self):
        splits = self.chosen(self.open())
        features = splits["train"].features
        for key, column in (("image_column", self.image_column), ("label_column", self.label_column)):
            if column not in features:
                detail = f"the dataset's columns: {', '.join(features)}"
                if key == "label_column" and not any(type(f).__name__ == "ClassLabel" for f in features.values()):
                    detail += "; it has no ClassLabel column: a dataset without labels cannot train a classifier"
                raise InvalidValue(key, column, "a column of the dataset", detail)
        if type(features[self.image_column]).__name__ != "Image":
            raise InvalidValue("image_column", self.image_column, "a column of images (an Image feature)",
                               f"{self.image_column!r} is {features[self.image_column]}")
        raw = {split: data[self.label_column] for split, data in splits.items()}
        labels, classes = self.numbered(raw, features[self.label_column])
        if (labels["train"] < 0).any():
            raise InvalidValue("label_column", self.label_column, "a column with a label for every training image",
                               "the train split has images without labels")
        found = labelled({s: Split(labels[s]) for s in splits}, f"data.path={self.path}")
        found = {s: Split(labels[s], self.decode(splits[s], s)) for s in found}
        return (*arrange(found, self.carve_test, self.indices), classes)

    def numbered(self, raw: dict, feature) -> tuple[dict, list[str]]:
        """Labels as class indices (-1: none) and the class names."""
        if type(feature).__name__ == "ClassLabel":
            return {s: np.array([-1 if v is None else v for v in values], dtype=np.int64) for s, values in raw.items()}, list(feature.names)
        dtype = getattr(feature, "dtype", None)
        if not (dtype == "string" or str(dtype).startswith(("int", "uint"))):
            raise InvalidValue("label_column", self.label_column, "a ClassLabel, integer or string column",
                               f"{self.label_column!r} is {feature}")
        values = sorted({v for column in raw.values() for v in column if v is not None})
        index = {v: i for i, v in enumerate(values)}
        return {s: np.array([index.get(v, -1) for v in column], dtype=np.int64) for s, column in raw.items()}, [str(v) for v in values]

    def decode(self, data, split: str) -> np.ndarray:
        """The split's images as one uint8 N x S x S x 3 array, one file at a time."""
        log.info("data.path=%s %s: decoding %d images into memory at %d px", self.path, split, len(data), self.image_size)
        files = data.select_columns([self.image_column]).cast_column(self.image_column, datasets_library().Image(decode=False))
        images = (load_rgb(io.BytesIO(row[self.image_column]["bytes"]) if row[self.image_column]["bytes"]
                           else row[self.image_column]["path"]) for row in files)
        return square_array(images, self.image_size, self.interpolation)
