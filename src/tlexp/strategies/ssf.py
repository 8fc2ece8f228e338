"""SSF (Lian et al., NeurIPS 2022, "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning"):
a learnable per-channel scale (starting at 1) and shift (starting at 0) on the output of the backbone's layers, which
stay as pretrained; the scales, the shifts and the new head train.

At the start the network is exactly the pretrained one. Every scale and shift follows a layer with a per-channel bias
(``ScaleShift.layers``: BatchNorm, before its activation in timm's ``BatchNormAct2d``; LayerNorm; linear layers and
convolutions with a bias), so that ``export_network`` folds it into that layer (``W * s``, ``b * s + t``) and
``tlexp-export`` writes a plain timm network with the same outputs. A convolution without a bias (EfficientNet's,
ResNet's) is followed by a BatchNorm, whose scale and shift stand for it: with the BatchNorm's statistics fixed
(``bn_policy=frozen``, eval mode) a scale and shift between the two would be the same per-channel affine map again.

The scales and shifts are put into the backbone *before* the stages are split, as ``<layer>.ssf.scale`` and
``<layer>.ssf.shift``, so that each belongs to its layer's stage; they then train in a stage of their own right after
it, ``<stage>.ssf`` (``ParameterEfficient``).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import BatchNormAct2d, LayerNorm
from torch import nn

from tlexp.strategies.parameter_efficient import ParameterEfficient


class ScaleShift(nn.Module):
    """``x * scale + shift`` per channel, the channels along dimension ``dim`` of the input (1 for convolutions'
    and BatchNorm's NCHW output, -1 for linear layers' and LayerNorm's)."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.dim = dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shape = [1] * inputs.ndim
        shape[self.dim] = -1
        return inputs * self.scale.view(shape) + self.shift.view(shape)

    @staticmethod
    def layers(backbone: nn.Module) -> list[tuple[str, nn.Module, int]]:
        """(name, layer, channel dimension) of each layer whose output gets a scale and shift (exact types: a subclass
        may change the forward, as timm's ``Conv2dSame`` or ``StdConv2d``; LayerNorm over the last dimension only)."""
        found = []
        for name, layer in backbone.named_modules():
            if type(layer) in (nn.BatchNorm2d, BatchNormAct2d) and layer.affine:
                found.append((name, layer, 1))
            elif type(layer) is nn.Conv2d and layer.bias is not None:
                found.append((name, layer, 1))
            elif type(layer) is nn.Linear and layer.bias is not None:
                found.append((name, layer, -1))
            elif type(layer) in (nn.LayerNorm, LayerNorm) and layer.bias is not None and len(layer.normalized_shape) == 1:
                found.append((name, layer, -1))
        return found


def _scale_output(scale_shift: ScaleShift, module, inputs, output):
    return scale_shift(output)


def _scale_input(scale_shift: ScaleShift, module, inputs):
    return (scale_shift(inputs[0]), *inputs[1:])


def inject(backbone: nn.Module) -> list[str]:
    """A ``ScaleShift`` as child ``ssf`` of each of ``ScaleShift.layers``, applied to its output by a forward hook (in a
    ``BatchNormAct2d``, to the normalised output, before its dropout and activation). The hooks hold their ``ScaleShift``
    (``partial``), so a deep copy of the backbone keeps each hook on its own copy. Returns the layers' names."""
    layers = ScaleShift.layers(backbone)
    for _, layer, dim in layers:
        layer.ssf = ScaleShift(layer.weight.shape[0], dim)
        if isinstance(layer, BatchNormAct2d):
            layer.drop.register_forward_pre_hook(partial(_scale_input, layer.ssf))
        else:
            layer.register_forward_hook(partial(_scale_output, layer.ssf))
    return [name for name, _, _ in layers]


def fold(backbone: nn.Module) -> None:
    """Fold every ``ScaleShift`` into its layer, in place: ``weight * scale`` along the output channels, ``bias * scale
    + shift``; then remove it and its hook. Exact for BatchNorm in eval mode (what ``export_network`` gives)."""
    for _, layer in list(backbone.named_modules()):
        scale_shift = getattr(layer, "ssf", None)
        if not isinstance(scale_shift, ScaleShift):
            continue
        scale, shift = scale_shift.scale.detach(), scale_shift.shift.detach()
        with torch.no_grad():
            layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.ndim - 1)))
            layer.bias.mul_(scale).add_(shift)
        del layer.ssf
        for site in (layer, getattr(layer, "drop", None)):
            for hooks in (getattr(site, "_forward_hooks", {}), getattr(site, "_forward_pre_hooks", {})):
                for key in [k for k, hook in hooks.items() if getattr(hook, "args", ())[:1] == (scale_shift,)]:
                    del hooks[key]


class SSF(ParameterEfficient):
    """The pretrained backbone frozen, a scale and shift per channel after each of its layers with a bias trained
    (``<stage>.ssf`` stages at ``lr_backbone`` at the top stage down to ``lr_backbone * lr_ratio`` at the lowest),
    with the new head at ``lr_head``."""

    suffix = ".ssf"

    def __init__(self, backbone: nn.Module, *args, **kwargs):
        layers = inject(backbone)
        super().__init__(backbone, *args, **kwargs)
        self.scaled_layers = layers

    @staticmethod
    def trains_alone(param_name: str) -> bool:
        return ".ssf." in f".{param_name}"

    def export_network(self) -> nn.Sequential:
        """Every scale and shift folded into its layer (``fold``): a plain timm network, timm's own state-dict keys."""
        network = super().export_network()
        fold(network.backbone)
        return network
