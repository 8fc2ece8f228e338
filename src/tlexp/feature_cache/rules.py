"""When cached features are equivalent to running the backbone, and the ``cache_features`` setting.

Caching is only equivalent when

- every backbone parameter is frozen for the whole run (the ``frozen`` strategy),
- BatchNorm is in eval mode (``strategy.bn_policy=frozen``): ``adapt``/``train`` change it,
- the training transform has no randomness (``data.augment=false``), and
- the backbone has no active stochastic layers (dropout / drop path, ``model.kwargs``).

``cache_features``: ``auto`` (on when equivalent, off with an info log otherwise), ``true`` (on;
refused with ``InvalidValue`` when not equivalent) or ``false``.
"""

from __future__ import annotations

import logging

from torch import nn

from tlexp.errors import InvalidValue

log = logging.getLogger("tlexp")

SETTINGS = ("auto", True, False)
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
"""torch's dropout layers (rate ``p``); timm's DropPath and DropBlock are recognised by ``drop_prob``."""


def stochastic_layers(backbone: nn.Module) -> list[str]:
    """Names of dropout / drop-path layers that are active in train mode."""
    names = ["drop_rate"] if getattr(backbone, "drop_rate", 0) else []  # timm applies it functionally
    for name, module in backbone.named_modules():
        rate = module.p if isinstance(module, DROPOUT) else getattr(module, "drop_prob", None)
        if rate:
            names.append(name or type(module).__name__)
    return names


def blockers(bn_policy: str, augment: bool, backbone: nn.Module | None = None) -> list[str]:
    """Why cached features would differ from running the backbone (empty: caching is equivalent)."""
    reasons = []
    if augment:
        reasons.append("data.augment=true makes every epoch's inputs different")
    if bn_policy != "frozen":
        reasons.append(f"strategy.bn_policy={bn_policy} changes BatchNorm during training (needs bn_policy=frozen)")
    stochastic = stochastic_layers(backbone) if backbone is not None else []
    if stochastic:
        reasons.append(f"the backbone has active dropout/drop-path layers ({', '.join(stochastic[:3])}; see model.kwargs)")
    return reasons


def check_setting(setting) -> None:
    if setting not in SETTINGS or not isinstance(setting, (str, bool)):
        raise InvalidValue("cache_features", setting, "auto, true or false")


def resolve(setting, bn_policy: str, augment: bool, backbone: nn.Module | None = None) -> bool:
    """Whether to cache: ``auto`` when equivalent; ``true`` or an ``InvalidValue``; ``false``."""
    check_setting(setting)
    if setting is False:
        return False
    reasons = blockers(bn_policy, augment, backbone)
    if not reasons:
        return True
    if setting is True:
        raise InvalidValue("cache_features", True, "false or auto with these settings",
                           "cached features would differ from the backbone's: " + "; ".join(reasons))
    log.info("feature cache off (strategy.cache_features=auto): %s", "; ".join(reasons))
    return False
