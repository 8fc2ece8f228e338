"""Image datasets that yield uint8 CxSxS tensors; normalisation happens per batch (see ``base``).

In-memory sources are resized once (the transform is deterministic without augmentation),
so an epoch costs no per-image resizing; augmentation adds random crops and flips per item.
Files are decoded by ``load_rgb``, the one decoding rule that ``file_check`` also applies, so
a file that passed the check at setup decodes the same way in training.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}
BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white: the RGB under alpha 0 is arbitrary (often black)."""


def load_rgb(path) -> Image.Image:
    """Decode a whole file (truncated data raises) to 8-bit RGB as it is meant to be seen.

    EXIF orientation is applied. 16-bit grayscale (``I;16*``, and ``I``, which PIL also uses for it)
    is scaled from 0..65535 by 1/257, where PIL's own ``convert`` clips all above 255 to white.
    Alpha (``RGBA``, ``LA``, ``PA``, or a ``P``/``L``/``RGB`` image with a transparency entry) is
    composited onto ``BACKGROUND``. Every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...)
    is PIL's conversion to RGB.
    """
    with Image.open(path) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode == "I" or image.mode.startswith("I;16"):
            image = Image.fromarray(np.clip(np.rint(np.asarray(image) / 257), 0, 255).astype(np.uint8))
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, BACKGROUND)
            image.alpha_composite(rgba)
        return image.convert("RGB")


def augmentation(size: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()])


def resize_uint8(images: torch.Tensor, size: int, interpolation: str, chunk: int = 2048) -> torch.Tensor:
    """Resize a uint8 NxCxHxW tensor to SxS with the model's interpolation, in chunks."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    mode = INTERPOLATIONS.get(interpolation, "bilinear")
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].float()
        resized = F.interpolate(block, size=(size, size), mode=mode, antialias=mode != "nearest",
                                **({} if mode == "nearest" else {"align_corners": False}))
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


_RESIZED: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def resized(images: np.ndarray, size: int, interpolation: str, keep: int = 4) -> torch.Tensor:
    """``resize_uint8(to_nchw(images))``, remembered for the last ``keep`` inputs of this process (keyed by their
    bytes): a race's in-process trials resize the same splits once. Callers only read the result."""
    key = (hashlib.sha1(np.ascontiguousarray(images).data).hexdigest(), images.shape, size, interpolation)
    if key not in _RESIZED:
        _RESIZED[key] = resize_uint8(to_nchw(images), size, interpolation)
        while len(_RESIZED) > keep:
            _RESIZED.popitem(last=False)
    _RESIZED.move_to_end(key)
    return _RESIZED[key]


def to_nchw(array: np.ndarray) -> torch.Tensor:
    """NxHxW (grayscale) or NxHxWxC uint8 array -> NxCxHxW tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor, already at the training size."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, augment: bool = False):
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = augmentation(images.shape[-1]) if augment else None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


class FileImages(Dataset):
    """Image files decoded per item: RGB, resized on the short side and centre-cropped (or augmented)."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int, interpolation: str, augment: bool = False):
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        mode = getattr(v2.InterpolationMode, INTERPOLATIONS.get(interpolation, "bilinear").upper())
        self.transform = v2.Compose([v2.Resize(size, interpolation=mode, antialias=True), v2.CenterCrop(size)]
                                    + ([augmentation(size)] if augment else []))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(v2.functional.pil_to_tensor(load_rgb(self.paths[index]))), self.labels[index]
