"""The user's own images: ``root/train/<class>/*``, ``root/val/<class>/*``, optional ``root/test/``,
or a single ``root/<class>/*`` folder split by ``data.val_split``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlexp.data.base import Split, TransferDataModule
from tlexp.errors import ConfigError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def scan(folder: Path, classes: list[str] | None = None) -> tuple[Split, list[str]]:
    """Images under ``folder/<class>/`` with labels in sorted class order (or the given order)."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    classes = classes or found
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS) if (folder / name).is_dir() else []
        paths += files
        labels += [label] * len(files)
    return Split(np.array(labels, dtype=np.int64), paths=paths), classes


class ImageFolder(TransferDataModule):
    def __init__(self, root: str | None = None, val_split: float = 0.2, **kwargs):
        super().__init__(val_size=val_split, **kwargs)
        self.root = Path(root).expanduser() if root else None

    def load(self):
        accepted = "a folder with <class>/ subfolders of images, or train/ and val/ folders of them"
        if self.root is None or not self.root.is_dir():
            raise ConfigError("data.root", str(self.root), accepted, "folder does not exist")
        has_splits = (self.root / "train").is_dir()
        train, classes = scan(self.root / "train" if has_splits else self.root)
        if len(train.labels) == 0:
            raise ConfigError("data.root", str(self.root), accepted, "no image files found")
        present = np.unique(train.labels)
        if len(present) < 2:
            raise ConfigError("data.root", str(self.root), accepted + " with at least 2 classes",
                              f"found {len(present)} class with images")
        val = scan(self.root / "val", classes)[0] if has_splits and (self.root / "val").is_dir() else None
        test = scan(self.root / "test", classes)[0] if has_splits and (self.root / "test").is_dir() else None
        return train, val, test, classes
