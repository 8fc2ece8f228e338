"""LoRA: low-rank adapters (the ``peft`` library) on the convolutions and linear layers of chosen
stages; the pretrained weights never move, the adapters and the new head train.

The adapters are injected into the backbone in place *before* the stages are split, so timm's
group matcher still sees the original module paths (``blocks.3.0.conv_pw.base_layer.weight`` is
in ``blocks.3``). Each stage's adapter parameters then move into a stage of their own,
``<stage>.lora``, right after it (``ParameterEfficient``): the base stages never train (BatchNorm follows
``bn_policy`` for frozen stages, eval mode by default), the ``.lora`` stages and the head train from the start.
``export_network`` folds the adapters into the weights for export (``tlexp-export``).
"""

from __future__ import annotations

import re
from typing import Annotated

from torch import nn

from tlexp.errors import InvalidValue
from tlexp.rules import POSITIVE_RATE, Rule, integer, number
from tlexp.stages import split_stages
from tlexp.strategies.parameter_efficient import ParameterEfficient

TARGET_STAGES = "all, top:<k> (the k stages nearest the head) or a list of backbone stage names"
LORA = ".lora"
"""Suffix of the stage holding a backbone stage's adapters."""


def adaptable(module: nn.Module) -> bool:
    """Layers whose adapters ``Lora.export_network`` folds exactly: plain ``nn.Linear`` and ungrouped ``nn.Conv2d``.
    Grouped (depthwise) convolutions are left out (peft cannot merge them), and so are subclasses
    that change the forward (timm's ``Conv2dSame`` pads dynamically, ``StdConv2d`` standardises)."""
    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1)


def target_stages_form(value) -> bool:
    """Whether ``value`` has one of the forms of ``TARGET_STAGES`` (the stage names are checked against the model)."""
    if isinstance(value, str):
        return value == "all" or re.fullmatch(r"top:[1-9]\d*", value) is not None
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(name, str) for name in value)


TARGET_STAGES_FORM = Rule(TARGET_STAGES, target_stages_form, refined=True)
"""The form, judged before anything is built; ``select_stages`` checks the names against the model's stages."""


def select_stages(names: list[str], target_stages) -> list[str]:
    """The backbone stage names ``target_stages`` means (see ``TARGET_STAGES``)."""
    if target_stages == "all":
        return list(names)
    if isinstance(target_stages, str):
        found = re.fullmatch(r"top:(\d+)", target_stages)
        if found and 1 <= int(found.group(1)) <= len(names):
            return names[-int(found.group(1)):]
    elif isinstance(target_stages, (list, tuple)) and target_stages and all(n in names for n in target_stages):
        return [n for n in names if n in target_stages]
    raise InvalidValue("target_stages", target_stages, f"{TARGET_STAGES}; this backbone has {len(names)}: {names}")


def inject(backbone: nn.Module, rank: int, alpha: float, dropout: float, target_stages) -> list[str]:
    """Put LoRA adapters, in place, on the adaptable layers of the chosen stages; returns their module names."""
    from peft import LoraConfig, inject_adapter_in_model  # here: importing peft (and transformers) costs every run ~1 s

    stages = split_stages(backbone, nn.Identity())[:-1]
    chosen = select_stages([stage.name for stage in stages], target_stages)
    owners = {name.rpartition(".")[0] for stage in stages if stage.name in chosen for name in stage.param_names}
    targets = [name for name, module in backbone.named_modules() if name in owners and adaptable(module)]
    if not targets:
        raise InvalidValue("target_stages", target_stages, "stages with a linear layer or an ungrouped convolution")
    pattern = "^(?:" + "|".join(map(re.escape, targets)) + ")$"  # exact names: peft full-matches a string
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern), backbone)
    return targets


class Lora(ParameterEfficient):
    """Frozen backbone with trainable LoRA adapters (rank ``rank``, scale ``alpha / rank``, input dropout
    ``dropout``) on the stages ``target_stages`` names, at ``lr_lora`` at the top adapted stage down to
    ``lr_lora * lr_ratio`` at the lowest (or ``lr_decay`` per adapted stage); the new head at ``lr_head``."""

    suffix = LORA

    def __init__(self, backbone: nn.Module, *args, rank: Annotated[int, integer(1)] = 4,
                 alpha: Annotated[float, Rule("a number > 0 (the adapters' scale is alpha / rank)", lambda v: number(v) and v > 0)] = 8.0,
                 dropout: Annotated[float, Rule("a probability in [0, 1)", lambda v: number(v) and 0 <= v < 1)] = 0.0,
                 target_stages: Annotated[str | list[str], TARGET_STAGES_FORM] = "all", lr_lora: Annotated[float, POSITIVE_RATE] = 1e-3,
                 **kwargs):
        target_stages = target_stages if isinstance(target_stages, str) else list(target_stages)
        targets = inject(backbone, rank, alpha, dropout, target_stages)
        super().__init__(backbone, *args, **kwargs)
        self.hparams.update(rank=rank, alpha=alpha, dropout=dropout, target_stages=target_stages, lr_lora=lr_lora)
        self.adapted_layers = targets

    @staticmethod
    def trains_alone(param_name: str) -> bool:
        return ".lora_" in param_name

    def trained_rate(self) -> float:
        return self.hparams.lr_lora

    def export_network(self) -> nn.Sequential:
        """Every LoRA adapter folded into its layer's weight (``W + alpha/rank * B A``) and the peft wrappers removed,
        so the copy runs without peft and its state dict has the original timm keys."""
        from peft.tuners.lora import LoraLayer

        network = super().export_network()
        backbone = network.backbone
        for name, layer in list(backbone.named_modules()):
            if isinstance(layer, LoraLayer):
                layer.merge(safe_merge=True)
                parent, _, child = name.rpartition(".")
                setattr(backbone.get_submodule(parent) if parent else backbone, child, layer.get_base_layer())
        return network
