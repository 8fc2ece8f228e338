"""Fashion-MNIST from its official IDX files: ``data.root``, then the Debian package, then a download."""

from __future__ import annotations

import functools
import gzip
import logging
from pathlib import Path

import numpy as np

from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.errors import InvalidValue

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@functools.lru_cache(maxsize=4)  # the race's trials read the same files: decoded once per process (read-only arrays)
def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic, dims, then big-endian uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz",
                      folder / "FashionMNIST" / "raw" / stem, folder / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(root: Path | None, download: bool) -> Path:
    """The first folder holding all four IDX files; downloads into ``root`` when allowed and needed."""
    stems = [stem for pair in FILES.values() for stem in pair]
    folders = [f for f in (root, DEBIAN_DIR) if f is not None]
    for folder in folders:
        if all(find_file(folder, stem) for stem in stems):
            return folder
    if download and root is not None:
        try:
            from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

            TorchvisionFashionMNIST(str(root), train=True, download=True)
            TorchvisionFashionMNIST(str(root), train=False, download=True)
            return root
        except Exception as error:  # no network: fall through to the clear error below
            log.warning("Fashion-MNIST download failed: %s", error)
    raise InvalidValue(
        "root", str(root), "a folder with the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)",
        f"not found in {[str(f) for f in folders]} and not downloadable; install them with "
        "'apt-get install dataset-fashion-mnist' or run once with network access",
    )


class FashionMNIST(TransferDataModule):
    def __init__(self, root: str | None = "data/fashion_mnist", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser() if root else None
        self.download = download

    @property
    def dataset_name(self) -> str:
        return self.root.name if self.root else super().dataset_name

    def load(self):
        folder = locate(self.root, self.download)
        log.info("Fashion-MNIST from %s", folder)
        splits = {}
        for name, (images, labels) in FILES.items():
            splits[name] = Split(read_idx(find_file(folder, labels)).astype(np.int64), read_idx(find_file(folder, images)))
        return splits["train"], None, splits["test"], CLASSES
