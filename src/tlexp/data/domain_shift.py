"""Deterministic domain shifts: a shifted copy of a dataset is the target domain of domain adaptation.

``data.target_domain=<shift>`` gives every run a second, shifted test set (``test/target_acc``) and
``strategy=dann`` the shifted training pool as its unlabeled target data. Each shift maps a uint8
``N x C x H x W`` batch to one of the same shape and dtype, at the source resolution (before the
resize to ``data.image_size``, so a shift is the same at every image size), and is the same in every
run: ``noise`` draws each image's noise from its own generator, seeded by ``(seed, its index in the
array)``, so the same array (the training pool, the test split) gets the same noise in every run, on any machine.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from tlexp.data.images import to_nchw
from tlexp.errors import InvalidValue
from tlexp.rules import Rule

ROTATE_DEGREES = 45.0
BLUR_SIGMA = 0.08
"""Of the image side: sigma 2.2 px on 28 px Fashion-MNIST, 0.6 px on 8 px digits."""
NOISE_STD = 64.0
CONTRAST_FACTOR = 0.3
"""torchvision's ``adjust_contrast``: each image blended 30:70 with its mean grey level."""


def _blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """``size x size`` matrix of a 1-D Gaussian blur with reflected edges: ``row @ matrix`` blurs a row."""
    radius = min(math.ceil(3 * sigma), size - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    basis = torch.nn.functional.pad(torch.eye(size, dtype=torch.float64).unsqueeze(1), (radius, radius), mode="reflect")
    return torch.nn.functional.conv1d(basis, (kernel / kernel.sum()).view(1, 1, -1)).squeeze(1)


def _blur(images: torch.Tensor) -> torch.Tensor:
    """Gaussian blur, separable, as two matrix products (Fashion-MNIST's training pool in seconds)."""
    height, width = images.shape[-2:]
    sigma = BLUR_SIGMA * max(height, width)
    out = _blur_matrix(height, sigma).T @ images.double() @ _blur_matrix(width, sigma)
    return out.round().clamp(0, 255).to(torch.uint8)


def _noise(images: torch.Tensor, seed: int) -> torch.Tensor:
    shape = tuple(images.shape[1:])
    noise = np.stack([np.random.default_rng((seed, index)).normal(0.0, NOISE_STD, shape) for index in range(len(images))])
    return (images.double() + torch.from_numpy(noise)).round().clamp(0, 255).to(torch.uint8)


SHIFTS = {
    "invert": lambda images, seed: 255 - images,
    "rotate": lambda images, seed: F.rotate(images, ROTATE_DEGREES),
    "blur": lambda images, seed: _blur(images),
    "noise": _noise,
    "contrast": lambda images, seed: F.adjust_contrast(images, CONTRAST_FACTOR),
}
"""name -> shift(images, seed); ``data.target_domain`` accepts these names."""
TARGET_DOMAIN = Rule(f"null or a shift: {' | '.join(SHIFTS)}", lambda v: v is None or (isinstance(v, str) and v in SHIFTS))
"""The rule of ``data.target_domain`` (``TransferDataModule``'s parameter)."""


def check_shift(name: str) -> None:
    if name not in SHIFTS:
        raise InvalidValue("target_domain", name, " | ".join(SHIFTS))


def shift_images(images: torch.Tensor, name: str, seed: int = 0) -> torch.Tensor:
    """The ``name`` shift of a uint8 ``N x C x H x W`` batch; ``seed`` (with each image's index) seeds ``noise``."""
    check_shift(name)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"shift_images takes a uint8 N x C x H x W tensor, not {images.dtype} {tuple(images.shape)}")
    return SHIFTS[name](images, seed).contiguous()


def shift_array(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """``shift_images`` of a uint8 ``N x H x W`` or ``N x H x W x C`` array (a ``Split``'s), in the same layout."""
    shifted = shift_images(to_nchw(images), name, seed)
    return (shifted[:, 0] if images.ndim == 3 else shifted.permute(0, 2, 3, 1)).contiguous().numpy()
