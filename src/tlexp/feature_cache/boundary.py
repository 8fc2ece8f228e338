"""Where cached inputs enter the network: the input of one backbone stage, or the pooled features.

The boundary at depth ``d`` is the input of backbone stage ``d`` (counted from the input); at ``d`` = the number of
backbone stages it is the backbone's output, the pooled features the head takes (``frozen``'s linear probe). While
the network trains on cached inputs, the modules that run before the boundary are skipped
(``TransferModule.skipping``): the whole backbone at the top; below it, the modules that a traced forward shows to
have finished before the stage's first module starts (``trace``, ``entry_module``, ``prefix_modules``). Whether
skipping them reproduces the network is checked on a batch of images (``Boundary.mismatch``): a model whose forward
does work between its modules (a ViT adding its position embedding after ``patch_embed``) fails it.

Keys: the pooled features by the key fields (``key``) with a hash of all the backbone's weights, so every job of a
sweep with that backbone shares them (``frozen``, and ``partial`` with every stage frozen); a boundary below by the
same fields with a hash of the skipped modules' weights, the stage's name and the storage dtype, so the jobs of a
frozen-depth sweep share what they can.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import count

import torch
from torch import nn

from tlexp.feature_cache.key import cache_key, key_fields, modules_hash, weights_hash


def trace(backbone: nn.Module, images: torch.Tensor) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """When each named module of ``backbone`` starts and ends (call order) in one forward of ``images``."""
    clock = count()
    starts, ends = defaultdict(list), defaultdict(list)
    hooks = []
    for name, module in backbone.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(lambda *_, n=name: starts[n].append(next(clock))))
            hooks.append(module.register_forward_hook(lambda *_, n=name: ends[n].append(next(clock))))
    try:
        with torch.no_grad():
            backbone(images)
    finally:
        for hook in hooks:
            hook.remove()
    return starts, ends


def entry_module(backbone: nn.Module, stage, starts: dict[str, list[int]]) -> nn.Module:
    """The first module to run (``starts``, from ``trace``) that holds parameters of ``stage`` only: the
    stage's input is its input (``blocks.6`` for a stage of ``blocks.6``, ``conv_head`` and ``bn2``)."""
    mine, first = set(stage.param_names), None
    for name, module in backbone.named_modules():
        owned = {f"{name}.{param}" for param, _ in module.named_parameters()}
        if name in starts and owned and owned <= mine and (first is None or starts[name][0] < starts[first[0]][0]):
            first = (name, module)
    if first is None:
        raise ValueError(f"no module of stage {stage.name} runs in the backbone's forward")
    return first[1]


def prefix_modules(backbone: nn.Module, entry: nn.Module, starts, ends) -> list[nn.Module]:
    """The largest modules whose every call ended before ``entry`` started: the work the cache replaces."""
    names = {module: name for name, module in backbone.named_modules()}
    begin = starts[names[entry]][0]
    done = [name for name, calls in ends.items() if max(calls) < begin and min(starts[name]) < begin]
    done = [name for name in done if not any(name.startswith(other + ".") for other in done)]
    modules = dict(backbone.named_modules())
    return [modules[name] for name in done]


class _Captured(Exception):
    """Raised by the entry module's hook: the rest of the forward is not needed."""


@torch.no_grad()
def capture(backbone: nn.Module, entry: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The input of ``entry`` in a forward of ``images``, which stops there."""
    found = []

    def hook(_, args):
        found.append(args[0].detach())
        raise _Captured

    handle = entry.register_forward_pre_hook(hook)
    try:
        backbone(images)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not found:
        raise ValueError("the entry module did not run in the backbone's forward")
    return found[0]


@dataclass
class Boundary:
    """The input of backbone stage ``depth`` (``stage``, entered at module ``entry``; no ``entry``: the pooled features),
    the modules ``skipped`` while the network runs from it, and the dtype its activations are stored in."""

    backbone: nn.Module
    depth: int | None
    stage: str | None = None
    entry: nn.Module | None = None
    skipped: list[nn.Module] = field(default_factory=list)
    dtype: torch.dtype = torch.float32

    @classmethod
    def at(cls, module, depth: int, images: torch.Tensor, dtype: torch.dtype = torch.float16) -> Boundary:
        """The boundary before backbone stage ``depth`` of ``module`` (a ``TransferModule``), traced on ``images``."""
        backbone, stages = module.backbone, module.backbone_stages
        if depth == len(stages):
            return cls.pooled(backbone, depth)
        starts, ends = trace(backbone, images)
        entry = entry_module(backbone, stages[depth], starts)
        return cls(backbone, depth, stages[depth].name, entry, prefix_modules(backbone, entry, starts, ends), dtype)

    @classmethod
    def pooled(cls, backbone: nn.Module, depth: int | None = None) -> Boundary:
        """The backbone's output, the head's input (``depth``: the number of backbone stages, where known)."""
        return cls(backbone, depth, skipped=[backbone])

    @property
    def name(self) -> str:
        return f"the input of stage {self.stage}" if self.stage else "the pooled features"

    def weights(self) -> str:
        """Hash of the weights that compute the inputs: the whole backbone's for the pooled features."""
        return modules_hash(self.skipped) if self.entry is not None else weights_hash(self.backbone)

    def key(self, datamodule, split: str, dataset, weights: str | None = None) -> tuple[str, dict]:
        """(key, fields) of ``split`` (its image ``dataset``) at this boundary."""
        fields = key_fields(self.backbone, datamodule, split, weights or self.weights(), dataset)
        if self.entry is not None:
            fields = {**fields, "boundary": self.stage, "dtype": str(self.dtype)}
        return cache_key(fields), fields

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The cached inputs of normalised ``images``, on the CPU in their storage dtype."""
        if self.entry is None:
            return self.backbone(images).float().cpu()
        return capture(self.backbone, self.entry, images).to(self.dtype).cpu()

    def mismatch(self, module, images: torch.Tensor) -> str | None:
        """Why running ``module`` from this boundary does not give its logits on ``images`` (None: it does).
        Run it in eval mode without autograd (``inference_pass``)."""
        if self.entry is None:
            return None
        reference = module(images)
        try:
            with module.skipping(self.skipped):
                logits = module(capture(self.backbone, self.entry, images))
            if torch.allclose(logits, reference, rtol=1e-4, atol=1e-5):
                return None
            return f"max |difference| {float((logits - reference).abs().max()):.2g}"
        except Exception as error:  # the forward's own code between modules cannot take the activations
            return f"{type(error).__name__}: {error}"
