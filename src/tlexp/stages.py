"""Split a network into named stages: the backbone's coarse timm groups, plus ``head``.

Every freeze/unfreeze decision and every learning rate in tlexp is per stage, so this is
the one place where parameters are assigned to stages (by identity, never by value).

Stages come from timm's ``group_matcher(coarse=True)`` (stem, then each stage or block, then
the final norm). A model without one, or whose matcher gives fewer than two groups, falls back
to its top-level children that own parameters, in definition order, one stage each; a child
that is an ``nn.Sequential`` or ``nn.ModuleList`` (timm's ``stages``, ``blocks``) gives one
stage per element, and parameters of the backbone itself (a class token) join the first stage.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from timm.models import group_parameters
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
    split_from: str | None = None
    """The backbone stage this one's parameters were split off from (``split_off``); None for a backbone stage."""

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def _compiled(matcher: dict) -> list[tuple[str, re.Pattern]]:
    """(key, regex) pairs of a timm group matcher dict, in its own order."""
    pairs = []
    for key, spec in matcher.items():
        if spec is None:
            continue
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


def _matcher_groups(backbone: nn.Module) -> list[tuple[str, list[str]]]:
    """(label, parameter names) per coarse group of timm's ``group_matcher``, input to output
    (parameters it does not match form the last group); empty when the model has no matcher."""
    if not hasattr(backbone, "group_matcher"):
        return []
    matcher = backbone.group_matcher(coarse=True)
    patterns = _compiled(matcher) if isinstance(matcher, dict) else []
    groups = group_parameters(backbone, matcher)
    return [(_label(names[0], patterns) if patterns else f"stage{index}", names) for index, names in sorted(groups.items())]


def _child_groups(backbone: nn.Module, names: list[str]) -> list[tuple[str, list[str]]]:
    """The fallback split (see the module docstring) of the parameter ``names``, in their order."""
    containers = {name for name, child in backbone.named_children() if isinstance(child, (nn.Sequential, nn.ModuleList))}
    groups: dict[str, list[str]] = {}
    own = []
    for name in names:
        parts = name.split(".")
        if len(parts) == 1:
            own.append(name)
        else:
            groups.setdefault(".".join(parts[:2]) if parts[0] in containers else parts[0], []).append(name)
    labels = list(groups)
    if own and labels:
        groups[labels[0]] = own + groups[labels[0]]
    return list(groups.items()) if labels else [("backbone", own)]


def _unique(label: str, index: int, taken: set[str]) -> str:
    """A backbone stage name no other stage has; the backbone's own ``head`` (MetaFormer's pre-logits
    norm) is renamed ``backbone.head``, so only our classifier is ``head``."""
    label = f"backbone.{label}" if label.split(".")[0] == HEAD else label
    return f"{label}.{index}" if label in taken else label


def _assign_batchnorms(backbone: nn.Module, stages: list[Stage]) -> None:
    """Each BatchNorm joins the stage owning the parameters of the nearest module, itself or an
    enclosing one, that has any: its own affine weights, else (no affine parameters) its block's.
    When those span several stages it joins the first of them, whose BN policy is the more frozen."""
    under: dict[str, set[int]] = defaultdict(set)  # module name -> indices of the stages owning its parameters
    for index, stage in enumerate(stages):
        for name in stage.param_names:
            parts = name.split(".")
            for depth in range(len(parts)):
                under[".".join(parts[:depth])].add(index)
    for module_name, module in backbone.named_modules():
        if isinstance(module, _BatchNorm):
            prefix = module_name
            while prefix and prefix not in under:
                prefix = prefix.rpartition(".")[0]
            stages[min(under.get(prefix, {0}))].batchnorms.append(module)


def split_stages(backbone: nn.Module, head: nn.Module) -> list[Stage]:
    """Stages from input to output: the backbone's (see the module docstring), then ``head``.

    Every backbone parameter is in exactly one stage (checked: a frozen stage must freeze all it should).
    """
    named = dict(backbone.named_parameters())
    groups = _matcher_groups(backbone)
    if len(groups) < 2:
        groups = _child_groups(backbone, list(named))
    stages = []
    taken = {HEAD}
    for index, (label, names) in enumerate(groups):
        label = _unique(label, index, taken)
        taken.add(label)
        stages.append(Stage(label, [named[n] for n in names], list(names)))
    assigned = [name for stage in stages for name in stage.param_names]
    assert sorted(assigned) == sorted(named), "split_stages: a backbone parameter is in no stage or in several"
    _assign_batchnorms(backbone, stages)
    head_names = [f"head.{n}" for n, _ in head.named_parameters()]
    stages.append(Stage(HEAD, list(head.parameters()), head_names,
                        [m for m in head.modules() if isinstance(m, _BatchNorm)]))
    return stages


def split_off(stages: list[Stage], suffix: str, chosen: Callable[[str], bool]) -> list[Stage]:
    """Each backbone stage's parameters whose name ``chosen`` accepts moved into a stage ``<stage><suffix>`` right
    after it (where it has any), so that a freeze plan can train them alone (LoRA's adapters, BitFit's biases, SSF's
    scales and shifts). The BatchNorm layers stay with the stage: their mode follows its plan, not the new stage's."""
    split = []
    for stage in stages:
        moved = [stage.name != HEAD and chosen(name) for name in stage.param_names]
        split.append(Stage(stage.name, [p for p, m in zip(stage.params, moved) if not m],
                           [n for n, m in zip(stage.param_names, moved) if not m], stage.batchnorms))
        if any(moved):
            split.append(Stage(stage.name + suffix, [p for p, m in zip(stage.params, moved) if m],
                               [n for n, m in zip(stage.param_names, moved) if m], split_from=stage.name))
    return split


def stage_outputs_modules(backbone: nn.Module, param_names: list[str]) -> list[nn.Module]:
    """The modules whose output is the stage's: the common parent of its parameters when there is one
    (``blocks.3``), else that parent's children which own them (``conv_stem``, ``bn1``), in order."""
    owners = [name.rsplit(".", 1)[0] if "." in name else "" for name in param_names]
    parts = [owner.split(".") for owner in owners]
    common = []
    for column in zip(*parts):
        if len(set(column)) > 1:
            break
        common.append(column[0])
    prefix = ".".join(common)
    if prefix and all(owner == prefix or owner.startswith(prefix + ".") for owner in owners):
        mine = set(param_names)
        while "." in prefix:  # up to the largest module holding this stage's parameters only (blocks.2, not blocks.2.0)
            parent = prefix.rsplit(".", 1)[0]
            if not {f"{parent}.{name}" for name, _ in backbone.get_submodule(parent).named_parameters()} <= mine:
                break
            prefix = parent
        return [backbone.get_submodule(prefix)]
    depth = len(common) + 1
    children = dict.fromkeys(".".join(p[:depth]) for p in parts if len(p) >= depth)
    return [backbone.get_submodule(name) for name in children]
