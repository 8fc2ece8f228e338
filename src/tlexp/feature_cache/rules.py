"""The cache's settings, the strategies it serves, and when cached inputs are equivalent to running the network.

Caching the output of the backbone stages that stay frozen is only equivalent when

- those stages never train in the run (the strategy's freeze plan: ``FreezePlan.constant_depth``),
- BatchNorm is in eval mode (``strategy.bn_policy=frozen``): ``adapt``/``train`` change it,
- the training transform has no randomness (``data.augment=false``), and
- the frozen stages have no active stochastic layers (dropout / drop path, ``model.kwargs``).

``cache_features``: ``auto`` (on when equivalent, off with an info log otherwise), ``true`` (on;
refused with ``InvalidValue`` when not equivalent) or ``false``. The settings are keys of the strategy node
(``strategy.cache_features``, ...) of the strategies in ``SERVED``; the config layer checks them there and
``train`` gives them to the cache callback, so the strategies never see them.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tlexp.errors import InvalidValue
from tlexp.rules import Rule, choice, number
from tlexp.strategies import Frozen, Gradual, Partial

log = logging.getLogger("tlexp")

SETTINGS = ("cache_features", "cache_dir", "cache_dtype", "cache_memory_mb", "cache_disk_mb")
"""The cache's settings: ``FeatureCache``'s parameters and the strategy node's keys."""
CACHE_FEATURES = ("auto", True, False)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Storage types of the activations below the pooled features (which stay float32)."""
CACHE_FEATURES_RULE = Rule("auto, true or false", lambda v: isinstance(v, (str, bool)) and v in CACHE_FEATURES)
DTYPE_RULE = choice(DTYPES)
SIZE_MB = Rule("a size in MB >= 0", lambda v: number(v) and v >= 0)
"""The rules of ``FeatureCache``'s parameters (``tlexp.rules``: the config checks them before anything is built)."""
SERVED = (Frozen, Partial, Gradual)
"""Strategies whose inputs reach the network only through its ``forward`` (no loss term or second data set reads
the images), so inputs computed ahead can stand in for the images."""
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
"""torch's dropout layers (rate ``p``); timm's DropPath and DropBlock are recognised by ``drop_prob``."""


def settings_of(target) -> tuple[str, ...]:
    """The cache settings a config node of ``target`` may hold: ``SETTINGS`` for a strategy in ``SERVED``, else none."""
    return SETTINGS if isinstance(target, type) and issubclass(target, SERVED) else ()


def stochastic_layers(*modules: nn.Module) -> list[str]:
    """Names of dropout / drop-path layers of ``modules`` that are active in train mode."""
    names = []
    for root in modules:
        names += ["drop_rate"] if getattr(root, "drop_rate", 0) else []  # timm applies it functionally
        for name, module in root.named_modules():
            rate = module.p if isinstance(module, DROPOUT) else getattr(module, "drop_prob", None)
            if rate:
                names.append(name or type(module).__name__)
    return names


def blockers(bn_policy: str, augment: bool, modules: tuple[nn.Module, ...] = ()) -> list[str]:
    """Why cached inputs would differ from running the frozen ``modules`` (empty: caching is equivalent)."""
    reasons = []
    if augment:
        reasons.append("data.augment=true makes every epoch's inputs different")
    if bn_policy != "frozen":
        reasons.append(f"strategy.bn_policy={bn_policy} changes BatchNorm during training (needs bn_policy=frozen)")
    stochastic = stochastic_layers(*modules)
    if stochastic:
        reasons.append(f"the frozen stages have active dropout/drop-path layers ({', '.join(stochastic[:3])}; see model.kwargs)")
    return reasons


def resolve(setting, bn_policy: str, augment: bool, modules: tuple[nn.Module, ...] = ()) -> bool:
    """Whether to cache: ``auto`` when equivalent; ``true`` or an ``InvalidValue``; ``false``."""
    CACHE_FEATURES_RULE.check("cache_features", setting)
    if setting is False:
        return False
    reasons = blockers(bn_policy, augment, modules)
    if not reasons:
        return True
    if setting is True:
        raise InvalidValue("cache_features", True, "false or auto with these settings",
                           "cached features would differ from the backbone's: " + "; ".join(reasons))
    log.info("feature cache off (strategy.cache_features=auto): %s", "; ".join(reasons))
    return False
