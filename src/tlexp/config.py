"""The config layer: a run's config is checked here, once, before anything is built.

Two kinds of check, each rule written once, beside the parameter it constrains:
- **keys**: every node that builds an object (``_target_``) may only hold keys its target accepts
  (its signature, up the class hierarchy), so a mistyped key in a YAML file stops the run with
  the accepted keys and the closest match, instead of a TypeError after the model has loaded;
- **values**: the ``Rule`` each parameter of the target declares in its annotation
  (``Annotated[float, Rule(...)]``, ``tlexp.rules``), read from the same signatures; the class
  enforces the same declaration when it is built (``tlexp.rules.Checked``).

Rules that need the built objects (a frozen depth against the backbone's stage count, a file on
disk) stay in the library, which raises ``InvalidValue`` with its parameter's name;
``instantiate`` turns that into a ``ConfigError`` naming the full key.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from tlexp.errors import ConfigError, InvalidValue
from tlexp.feature_cache import FeatureCache, rules as cache_rules
from tlexp.rules import plain, rules_of, signature_chain

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
NODES = ("model", "data", "strategy", "trainer")
"""The nodes that build one object each; ``logger`` and ``callbacks`` hold one node per object."""


def nodes(cfg: DictConfig) -> list[tuple[str, object]]:
    """(path, node) of every node that builds an object."""
    found = [(path, cfg.get(path)) for path in NODES]
    for group in ("logger", "callbacks"):
        found += [(f"{group}.{name}", node) for name, node in (cfg.get(group) or {}).items()]
    return found


def check(cfg: DictConfig) -> None:
    """Every check that needs nothing built; raises the first ``ConfigError``."""
    missing = sorted(OmegaConf.missing_keys(cfg))  # '???' in conf/, e.g. data.root of data=image_folder
    if missing:
        raise ConfigError(missing[0], "???", "a value; this key is required and has no default")
    for path, node in nodes(cfg):
        check_keys(path, node)
    for path, node in nodes(cfg):
        check_values(path, node)
    cache = {key: plain(cfg.strategy[key]) for key in _attached_keys("strategy", cfg.strategy)}
    if cache:  # the feature cache's settings (FeatureCache declares their rules), with those that make caching unequal
        try:
            for name, rule in rules_of(FeatureCache).items():
                if name in cache:
                    rule.check(name, cache[name])
            cache_rules.resolve(cache.get("cache_features", "auto"), cfg.strategy.get("bn_policy", "frozen"), bool(cfg.data.get("augment")))
        except InvalidValue as error:
            raise ConfigError.at("strategy", error) from None


def check_values(path: str, node) -> None:
    """A ``_target_`` node's values against the rules its target's parameters declare (``tlexp.rules``)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    for name, rule in rules_of(hydra.utils.get_object(node._target_)).items():
        if name in node:
            try:
                rule.check(name, node[name])
            except InvalidValue as error:
                raise ConfigError.at(path, error) from None


def accepted_keys(target: Callable) -> set[str] | None:
    """Keyword names ``target`` accepts, following ``**kwargs`` up the class hierarchy; None: any."""
    chain, any_keyword = signature_chain(target)
    if any_keyword:
        return None
    return {p.name for _, signature in chain for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}


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
            raise ConfigError(f"{path}.{key}", plain(node[key]), f"the keys of {node._target_}: {', '.join(sorted(accepted))}",
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
