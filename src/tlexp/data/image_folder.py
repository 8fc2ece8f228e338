"""The user's own images: ``root/train/<class>/*``, ``root/val/<class>/*``, optional ``root/test/``,
or a single ``root/<class>/*`` folder split by ``data.val_split``.

Every file is checked at setup (``file_check``) because real folders hold a few files that are not
readable images, and one of them would otherwise end a run mid-training. Files that are not images
(hidden, other extensions) are always left out; files that do not decode are left out too with
``data.on_bad_image=skip`` or stop the run before training with ``error``. What was left out is
logged in one warning, listed in ``<run dir>/skipped_files.txt`` and kept in ``skipped_files``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import numpy as np

from tlexp.data import sizes
from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.data.file_check import decode_failures, not_an_image
from tlexp.data.sizes import AUTO
from tlexp.errors import InvalidValue
from tlexp.rules import choice

log = logging.getLogger("tlexp")

ON_BAD_IMAGE = ("skip", "error")
SKIPPED_FILE = "skipped_files.txt"
SHOWN = 3
"""How many files a warning or error names; ``skipped_files.txt`` lists them all."""


def scan(folder: Path, classes: list[str] | None = None) -> tuple[Split, list[str]]:
    """Every file under ``folder/<class>/`` with labels in sorted class order (or the given order)."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    classes = classes or found
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file()) if (folder / name).is_dir() else []
        paths += files
        labels += [label] * len(files)
    return Split(np.array(labels, dtype=np.int64), paths=paths), classes


def without(split: Split, left_out: set[Path]) -> Split:
    return split.take(np.array([i for i, path in enumerate(split.paths) if path not in left_out], dtype=np.int64))


def listing(files: list[tuple[str, str]]) -> str:
    """The first few (path, reason) pairs as text, and how many more there are."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in files[:SHOWN])
    return shown + (f"; and {len(files) - SHOWN} more" if len(files) > SHOWN else "")


class ImageFolder(TransferDataModule):
    val_key = "val_split"
    val_carve = sizes.Carve(share=0.2, cap=sizes.TEST_CAP, keep=1)
    """auto: a fifth of the images (the former default), at most ``TEST_CAP``: without a test/ folder it tests too."""
    auto_batch_size = 32

    def __init__(self, root: str | None = None, val_split: Annotated[float | str, sizes.CARVE] = AUTO,
                 on_bad_image: Annotated[str, choice(ON_BAD_IMAGE)] = "skip", **kwargs):
        super().__init__(val_size=val_split, **kwargs)
        self.root = Path(root).expanduser() if root else None
        self.on_bad_image = on_bad_image
        self.skipped_files: list[tuple[str, str]] = []
        """(path, reason) of every file left out at setup."""

    @property
    def dataset_name(self) -> str:
        return self.root.name if self.root else super().dataset_name

    def load(self):
        accepted = "a folder with <class>/ subfolders of images, or train/ and val/ folders of them"
        if self.root is None or not self.root.is_dir():
            raise InvalidValue("root", str(self.root), accepted, "folder does not exist")
        has_splits = (self.root / "train").is_dir()
        train_folder = self.root / "train" if has_splits else self.root
        train, classes = scan(train_folder)
        val = scan(self.root / "val", classes)[0] if has_splits and (self.root / "val").is_dir() else None
        test = scan(self.root / "test", classes)[0] if has_splits and (self.root / "test").is_dir() else None
        left_out = self.check_files([path for split in (train, val, test) if split is not None for path in split.paths])
        train, val, test = (None if split is None else without(split, left_out) for split in (train, val, test))
        if len(train.labels) == 0:
            raise InvalidValue("root", str(self.root), accepted, "no image files found"
                               + (f"; {len(left_out)} files skipped: {listing(self.skipped_files)}" if left_out else ""))
        present = set(train.labels.tolist())
        if len(present) < 2:
            raise InvalidValue("root", str(self.root), accepted + " with at least 2 classes",
                               f"found {len(present)} class with images")
        for label, name in enumerate(classes):
            if label not in present:
                skipped = [f for f in self.skipped_files if Path(f[0]).is_relative_to(train_folder / name)]
                raise InvalidValue("root", str(self.root), accepted + " with a readable image in every class",
                                   f"class {name!r} has none" + (f"; skipped: {listing(skipped)}" if skipped else ""))
        return train, val, test, classes

    def check_files(self, paths: list[Path]) -> set[Path]:
        """The files to leave out; records them, then warns once or (on_bad_image=error) stops."""
        ignored = {path: reason for path in paths if (reason := not_an_image(path))}
        failed = decode_failures([path for path in paths if path not in ignored], self.root)
        self.skipped_files = [(str(path), reason) for path, reason in sorted({**ignored, **failed}.items())]
        saved = self.save_skipped()
        full_list = f"; the full list is in {saved}" if saved else ""
        if failed and self.on_bad_image == "error":
            raise InvalidValue("on_bad_image", self.on_bad_image, ", ".join(ON_BAD_IMAGE),
                               f"error stops for the {len(failed)} files under data.root={self.root} that are not "
                               f"readable images: {listing([f for f in self.skipped_files if Path(f[0]) in failed])}"
                               f"{full_list}; skip trains without them")
        if self.skipped_files:
            log.warning("data.root=%s: skipped %d of %d files that are not readable images: %s%s", self.root,
                        len(self.skipped_files), len(paths), listing(self.skipped_files), full_list)
        return set(ignored) | set(failed)

    def save_skipped(self) -> Path | None:
        """``skipped_files.txt`` (path<TAB>reason per line) in the run directory, when anything was skipped."""
        rank_zero = self.trainer is None or self.trainer.is_global_zero
        if not (self.skipped_files and self.output_dir is not None and rank_zero):
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        file = self.output_dir / SKIPPED_FILE
        file.write_text("".join(f"{path}\t{reason}\n" for path, reason in self.skipped_files))
        return file
