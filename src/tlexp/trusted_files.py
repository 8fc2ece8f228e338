"""Reading files that may come from someone else (a colleague's run directory, a paper's checkpoint) without
running code they carry.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a crafted checkpoint runs a program on
load; a run directory's ``.hydra/config.yaml`` is no safer when it is instantiated, since any ``_target_``
(``os.system``, say) is called. Every file tlexp reads back goes through here: checkpoints, exported
networks, caches and packaged weights with ``weights_only=True`` (tensors and plain values only; what tlexp
saves is kept to those), and a run's config only if every ``_target_`` in the nodes tlexp builds names one
of tlexp's own classes or an optimizer of ``torch.optim``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

TRUSTED_TARGETS = ("tlexp.", "torch.optim.")
"""What a run's config may ask tlexp to build: its own classes, and the optimizer of a strategy."""


class UntrustedFile(ValueError):
    """A file that would need code to be run to read it: refused, with why and how to proceed."""


def refusal(path: str | Path, what: str, error: Exception) -> UntrustedFile:
    """Why the unpickler refused ``path`` (the object it met) and how to proceed, as one error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = next((line for line in lines if "GLOBAL" in line or "global" in line), lines[0] if lines else "")
    return UntrustedFile(
        f"{path}: refused to load this {what}: it holds Python objects, not only tensors and plain values "
        f"({found}); loading it could run code it carries, so tlexp reads such files with "
        "torch.load(weights_only=True). If you trust its author, load it yourself and save its tensors "
        "(e.g. torch.save({'state_dict': checkpoint['state_dict']}, 'plain.ckpt')), or ask for a checkpoint "
        "written by tlexp, which holds tensors and plain values only")


def load_tensors(path: str | Path, what: str, mmap: bool = False):
    """``torch.load`` of ``path`` allowing only tensors and plain values (``weights_only=True``); anything else is
    refused with an ``UntrustedFile`` naming the file, the object it holds and how to proceed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise refusal(path, what, error) from None


def _targets(node, key: str):
    """(config key, value) of every ``_target_`` in ``node`` (plain containers, interpolations unresolved)."""
    if isinstance(node, dict):
        for name, child in node.items():
            if name == "_target_":
                yield f"{key}._target_", str(child)
            else:
                yield from _targets(child, f"{key}.{name}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _targets(child, f"{key}[{index}]")


def load_run_config(path: str | Path, nodes: tuple[str, ...] = ("model", "strategy")) -> DictConfig:
    """A run directory's ``.hydra/config.yaml``, refused unless every ``_target_`` under ``nodes`` (the nodes the
    caller will instantiate) names a class of tlexp or a ``torch.optim`` optimizer."""
    cfg = OmegaConf.load(path)
    for node in nodes:
        for key, target in _targets(OmegaConf.to_container(cfg, resolve=False).get(node), node):
            if not target.startswith(TRUSTED_TARGETS):
                raise UntrustedFile(
                    f"{path}: refused: {key}={target} would be called to rebuild the run; a run's config may only "
                    f"name tlexp's own classes or torch.optim optimizers ({', '.join(p + '*' for p in TRUSTED_TARGETS)}). "
                    "Check where this run directory came from; if it is yours, restore its .hydra/config.yaml")
    return cfg
