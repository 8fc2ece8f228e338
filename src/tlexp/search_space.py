"""A search space in Hydra's sweep grammar, as Optuna distributions and suggestions.

The space is written as overrides (``strategy.lr_backbone: tag(log, interval(1e-5, 1e-2))``): the head
rate and weight decay in ``conf/hparams_search/optuna.yaml``, a strategy's own keys in
``conf/hparams_search/space/<strategy>.yaml``, and any ``key=<sweep>`` on the command line. Hydra's
override parser reads the grammar; this module maps its sweeps onto Optuna distributions, for the
Hydra sweeper (``hydra_plugins.tlexp_sweepers``) and the race (``tlexp.race``) alike:

- ``interval(a, b)``: uniform float in [a, b] (int if both ends are ints); ``tag(log, ...)``: log scale;
- ``int(interval(a, b))``: every int in [a, b];
- ``range(a, b[, step])``: ints (or floats with a float step) from a to b *inclusive*, as under
  hydra-optuna-sweeper did (``range`` in a plain Hydra sweep excludes b);
- ``choice(x, y, ...)``: categorical.

A plain value (``key=3``) fixes the key for every trial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tlexp.errors import InvalidValue

SPACE_DIR = Path(__file__).resolve().parents[2] / "conf" / "hparams_search"
SHARED_SPACE = SPACE_DIR / "optuna.yaml"
"""Its ``hydra.sweeper.params``: the keys every strategy searches (the head rate)."""


def distribution(override: Override) -> BaseDistribution | str:
    """One parsed override as an Optuna distribution, or its value as text where it is not a sweep."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise InvalidValue(key, override.get_value_element_as_str(), "interval(), int(interval()), range(), choice() or a value")


def parse(overrides: Iterable[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``key=<sweep>`` overrides -> (distributions, fixed values); a later override of a key wins."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        distributions.pop(key, None), fixed.pop(key, None)
        value = distribution(override)
        (distributions if isinstance(value, BaseDistribution) else fixed)[key] = value
    return distributions, fixed


def texts(overrides: Iterable[str]) -> dict[str, str]:
    """``key=<sweep>`` overrides -> {key: the sweep as written}; a later override of a key wins."""
    return {o.get_key_element(): o.input_line.split("=", 1)[1] for o in OverridesParser.create().parse_overrides(list(overrides))}


def as_overrides(params: Mapping[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in params.items()]


def strategy_space(strategy: str) -> dict[str, str]:
    """The shared keys plus ``space/<strategy>.yaml``, as {key: sweep text}."""
    shared = yaml.safe_load(SHARED_SPACE.read_text())["hydra"]["sweeper"]["params"]
    path = SPACE_DIR / "space" / f"{strategy}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise InvalidValue("strategy", strategy, f"a strategy with a search space in conf/hparams_search/space/: {', '.join(known)}")
    return {**shared, **(yaml.safe_load(path.read_text()) or {})}


def suggest(trial: optuna.trial.BaseTrial, distributions: Mapping[str, BaseDistribution]) -> list[str]:
    """The trial's values for ``distributions`` (sampled, or given where the trial was enqueued) as overrides."""
    values = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return as_overrides(values)
