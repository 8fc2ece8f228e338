"""Split a network into named stages: timm's coarse group matcher for the backbone, plus ``head``.

Every freeze/unfreeze decision and every learning rate in tlexp is per stage, so this is
the one place where parameters are assigned to stages (by identity, never by value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from timm.models._manipulate import group_with_matcher
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

HEAD = "head"


@dataclass
class Stage:
    """A named, ordered slice of the network: its parameters and its BatchNorm layers."""

    name: str
    params: list[nn.Parameter] = field(repr=False)
    param_names: list[str] = field(repr=False)
    batchnorms: list[_BatchNorm] = field(default_factory=list, repr=False)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def _compiled(matcher: dict) -> list[tuple[str, re.Pattern]]:
    """(key, regex) pairs of a timm group matcher dict, in its own order."""
    pairs = []
    for key, spec in matcher.items():
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        pairs += [(key, re.compile(regex)) for regex, _ in specs]
    return pairs


def _label(param_name: str, patterns: list[tuple[str, re.Pattern]]) -> str:
    """Name of the stage a parameter opens: the matched text (``blocks.3``, ``layer2``) or the key (``stem``)."""
    for key, pattern in patterns:
        found = pattern.match(param_name)
        if found:
            return found.group(0) if pattern.groups else key
    return "neck"


def split_stages(backbone: nn.Module, head: nn.Module) -> list[Stage]:
    """Stages from input to output: the backbone's coarse timm groups, then ``head``."""
    matcher = backbone.group_matcher(coarse=True)
    patterns = _compiled(matcher) if isinstance(matcher, dict) else []
    named = dict(backbone.named_parameters())
    groups = group_with_matcher(named.items(), matcher, return_values=False)
    stages = []
    owner: dict[str, Stage] = {}
    for index, names in sorted(groups.items()):
        label = _label(names[0], patterns) if patterns else f"stage{index}"
        if any(stage.name == label for stage in stages):
            label = f"{label}.{index}"
        stage = Stage(label, [named[n] for n in names], list(names))
        stages.append(stage)
        owner.update(dict.fromkeys(names, stage))
    for module_name, module in backbone.named_modules():
        if isinstance(module, _BatchNorm):
            key = f"{module_name}.weight" if module.affine else None
            stage = owner.get(key) if key else None
            if stage is None:  # BN without affine parameters: use the stage of its name
                stage = next((s for s in stages if module_name.startswith(s.name)), stages[-1])
            stage.batchnorms.append(module)
    head_names = [f"head.{n}" for n, _ in head.named_parameters()]
    stages.append(Stage(HEAD, list(head.parameters()), head_names,
                        [m for m in head.modules() if isinstance(m, _BatchNorm)]))
    return stages
