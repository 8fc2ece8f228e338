"""The config layer: a run's config is checked here, once, before anything is built.

Two kinds of check, each rule written once:
- **keys**: every node that builds an object (``_target_``) may only hold keys its target accepts
  (its signature, up the class hierarchy), so a mistyped key in a YAML file stops the run with
  the accepted keys and the closest match, instead of a TypeError after the model has loaded;
- **values**: ``RULES`` below, for every setting that can be judged without building anything.

Rules that need the built objects (a frozen depth against the backbone's stage count, a file on
disk) stay in the library, which raises ``InvalidValue`` with its parameter's name;
``instantiate`` turns that into a ``ConfigError`` naming the full key.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from tlexp.acceleration import compile_backends
from tlexp.data import sizes
from tlexp.data.domain_shift import SHIFTS
from tlexp.data.image_folder import ON_BAD_IMAGE
from tlexp.errors import ConfigError, InvalidValue
from tlexp.feature_cache import rules as cache_rules
from tlexp.freeze_plan import BN_POLICIES, BN_TRAINABLE
from tlexp.heads import HEADS
from tlexp.schedules import SCHEDULES
from tlexp.strategies.gradual import UNFREEZE_ON
from tlexp.strategies.lora import TARGET_STAGES, target_stages_form

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


@dataclass(frozen=True)
class Rule:
    """What a key accepts; ``each``: the key holds a mapping (or null), the rule applies to every value."""

    accepted: str
    test: Callable[[object], bool]
    each: bool = False


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(minimum: int) -> Rule:
    return Rule(f"an integer >= {minimum}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum)


def _choice(values) -> Rule:
    return Rule(", ".join(map(str, values)), lambda v: v in values)


def _auto_or(rule: Rule, accepted: str, allow_null: bool = False) -> Rule:
    return Rule(accepted, lambda v: v == sizes.AUTO or (allow_null and v is None) or rule.test(v))


POSITIVE_RATE = Rule("a learning rate > 0", lambda v: _number(v) and v > 0)
CARVE = Rule(sizes.CARVE_ACCEPTED, lambda v: v == sizes.AUTO or (_number(v) and v > 0))
BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))

RULES: dict[str, Rule] = {
    "data.fraction": Rule("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "data.image_size": Rule("an integer >= 8 (pixels)", _integer(8).test),
    "data.batch_size": _auto_or(_integer(1), sizes.BATCH_ACCEPTED),
    "data.val_size": CARVE,
    "data.val_split": CARVE,
    "data.test_size": CARVE,
    "data.test_limit": _auto_or(_integer(1), sizes.TEST_LIMIT_ACCEPTED, allow_null=True),
    "data.on_bad_image": _choice(ON_BAD_IMAGE),
    "strategy.lr_head": POSITIVE_RATE,
    "strategy.lr_backbone": POSITIVE_RATE,
    "strategy.lr_ratio": Rule("a ratio in (0, 1]: the lowest backbone stage's rate / the top stage's",
                              lambda v: _number(v) and 0 < v <= 1),
    "strategy.lr_decay": Rule("null (strategy.lr_ratio sets the rates) or a factor in (0, 1] per stage further down",
                              lambda v: v is None or (_number(v) and 0 < v <= 1)),
    "strategy.schedule": _choice(SCHEDULES),
    "strategy.warmup_fraction": Rule("a share in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "strategy.head": Rule(" or ".join(HEADS), lambda v: v in HEADS),
    "strategy.bn_policy": _choice(BN_POLICIES),
    "strategy.bn_trainable": _choice(BN_TRAINABLE),
    "strategy.stage_warmup": BOOLEAN,
    "strategy.unfreeze_by": Rule("a share of trainer.max_epochs in (0, 1], after which every stage trains",
                                 lambda v: _number(v) and 0 < v <= 1),
    "strategy.unfreeze_every": Rule("null (strategy.unfreeze_by sets the pace) or an integer >= 1 (epochs per stage)",
                                    lambda v: v is None or _integer(1).test(v)),
    "strategy.milestones": Rule("an epoch number >= 0", _integer(0).test, each=True),
    "strategy.temperature": Rule("a temperature > 0", lambda v: _number(v) and v > 0),
    "strategy.lambda_old": Rule("a weight >= 0", lambda v: _number(v) and v >= 0),
    "strategy.rank": _integer(1),
    "strategy.lr_lora": POSITIVE_RATE,
    "strategy.target_stages": Rule(TARGET_STAGES, target_stages_form),
    "strategy.reinit_stages": _integer(1),
    "data.num_workers": Rule("auto or an integer >= 0", lambda v: v == "auto" or _integer(0).test(v)),
    "strategy.rounds": _integer(1),
    "strategy.threshold": Rule("a softmax probability in [0, 1]", lambda v: _number(v) and 0 <= v <= 1),
    "data.unlabeled": Rule("null or none (no unlabeled set), rest (the training pool outside data.fraction, without labels)",
                           lambda v: v in (None, "none", "rest")),
    "data.unlabeled_limit": _auto_or(_integer(1), sizes.UNLABELED_ACCEPTED, allow_null=True),
    "data.target_domain": Rule(f"null or a shift: {', '.join(SHIFTS)}", lambda v: v is None or v in SHIFTS),
    "strategy.domain_weight": Rule("a weight >= 0", lambda v: _number(v) and v >= 0),
    "strategy.domain_hidden": _integer(1),
    "strategy.unfreeze_on": _choice(UNFREEZE_ON),
    "trainer.channels_last": BOOLEAN,
    "trainer.compile": Rule(f"true, false or a torch.compile backend: {', '.join(compile_backends())}",
                            lambda v: isinstance(v, bool) or v in compile_backends()),
    "strategy.patience": _integer(1),
    "strategy.min_delta": Rule("a number >= 0", lambda v: _number(v) and v >= 0),
    "strategy.stop_at_plateau": BOOLEAN,
    "trainer.max_epochs": _integer(1),
}
"""Config key -> what it accepts. A key absent from the config (a strategy without it) is not checked;
ranges that depend on the model (``strategy.frozen_depth``, milestone stage names) are checked by the strategy."""


def check(cfg: DictConfig) -> None:
    """Every check that needs nothing built; raises the first ``ConfigError``."""
    missing = sorted(OmegaConf.missing_keys(cfg))  # '???' in conf/, e.g. data.root of data=image_folder
    if missing:
        raise ConfigError(missing[0], "???", "a value; this key is required and has no default")
    for path in ("model", "data", "strategy", "trainer"):
        check_keys(path, cfg.get(path))
    for group in ("logger", "callbacks"):
        for name, node in (cfg.get(group) or {}).items():
            check_keys(f"{group}.{name}", node)
    for key, rule in RULES.items():
        value = _plain(OmegaConf.select(cfg, key, default=KeyError))
        if value is KeyError or (rule.each and value is None):
            continue
        entries = {f"{key}.{name}": entry for name, entry in value.items()} if rule.each else {key: value}
        for entry_key, entry in entries.items():
            if not rule.test(entry):
                raise ConfigError(entry_key, entry, rule.accepted)
    cache = {key: _plain(cfg.strategy[key]) for key in _attached_keys("strategy", cfg.strategy)}
    if cache:  # the feature cache's own rules, with the settings that make caching unequal
        try:
            cache_rules.check_settings(**cache)
            cache_rules.resolve(cache.get("cache_features", "auto"), cfg.strategy.get("bn_policy", "frozen"), bool(cfg.data.get("augment")))
        except InvalidValue as error:
            raise ConfigError.at("strategy", error) from None


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def accepted_keys(target: Callable) -> set[str] | None:
    """Keyword names ``target`` accepts, following ``**kwargs`` up the class hierarchy; None: any."""
    classes = [c for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    names: set[str] = set()
    for owner in classes:
        function = owner.__init__ if inspect.isclass(target) else owner
        parameters = inspect.signature(function).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _attached_keys(path: str, node) -> list[str]:
    """Keys of node ``path`` that configure an object attached beside its target, not the target: the feature cache's
    settings in the node of a strategy it serves (``tlexp.feature_cache``; ``train`` attaches the cache)."""
    if path != "strategy" or not isinstance(node, DictConfig) or "_target_" not in node:
        return []
    return [key for key in cache_rules.settings_of(hydra.utils.get_object(node._target_)) if key in node]


def target_node(path: str, node):
    """Node ``path`` as its target takes it: without the keys of an object attached beside it (``_attached_keys``)."""
    attached = _attached_keys(path, node)
    if not attached:
        return node
    return {key: value for key, value in OmegaConf.to_container(node, resolve=True).items() if key not in attached}


def check_keys(path: str, node) -> None:
    """A ``_target_`` node's keys against its target's signature."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    try:
        target = hydra.utils.get_object(node._target_)
    except Exception as error:
        raise ConfigError(f"{path}._target_", node._target_, "an importable class or function", str(error)) from None
    accepted = accepted_keys(target)
    if accepted is None:
        return
    accepted |= set(_attached_keys(path, node))
    for key in node:
        if key not in accepted and key not in HYDRA_KEYS:
            close = difflib.get_close_matches(key, accepted, n=1)
            raise ConfigError(f"{path}.{key}", _plain(node[key]), f"the keys of {node._target_}: {', '.join(sorted(accepted))}",
                              f"did you mean {path}.{close[0]}?" if close else "unknown key")


def instantiate(path: str, node, sources: Mapping[str, str] | None = None, **kwargs):
    """``hydra.utils.instantiate`` of config node ``path``. An ``InvalidValue`` raised by the target
    comes out as one ``ConfigError`` naming the key: ``<path>.<parameter>``, or, for a keyword this
    call passes in, the key it came from (``sources``: parameter -> config key)."""
    try:
        return hydra.utils.instantiate(target_node(path, node), **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, InvalidValue):
            if sources and cause.name in sources and not isinstance(cause, ConfigError):
                raise ConfigError(sources[cause.name], cause.value, cause.accepted, cause.detail) from None
            raise ConfigError.at(path, cause) from None
        raise
