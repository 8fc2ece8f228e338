"""The report's series: which jobs belong together (a strategy and the settings a sweep varied, averaged over seeds),
named and ordered the same way in every table and figure, and the statistics over their seeds."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict

from tlexp.results import Job


def describe(values: list[float]) -> dict:
    """n, mean, std (sample; 0 for one value), min, max of the finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def compared_jobs(jobs: list[Job]) -> list[Job]:
    """The jobs the strategy figures compare: the tested ones where some were tested, else all. A race's search trials
    are never tested (selection on validation); its confirmations, tested on each seed, are the comparison, and a
    trial's settings would each be a series of its own."""
    tested = [job for job in jobs if job.test_acc is not None]
    return tested or jobs


def known_strategies() -> list[str]:
    """The strategy names in the registry's order (scratch, frozen, partial, ...)."""
    from tlexp.strategies import NAMES  # the names alone: no torch import

    return list(NAMES)


def strategy_order(names) -> list[str]:
    """Strategy or series names (``partial (frozen_depth=2)``) in the registry's order of their strategy;
    names it does not know after them, sorted."""
    known = known_strategies()

    def place(name: str):
        strategy = name.split(" (")[0]
        return (known.index(strategy) if strategy in known else len(known), strategy, name)

    return sorted(set(names), key=place)


AVERAGED = "seed"  # the only swept setting the report averages over
AXIS = "data.fraction"  # a setting with an axis (or a slider) of its own
NOT_SETTINGS = ("hydra.", "paths.", "logger", "wandb.", "experiment", "hparams_search", "ckpt_path", "group",
                "tags", "trainer.enable_progress_bar",  # where a run is written and logged, not what it measures
                "test", "callbacks.layer_movement",  # what is measured after training (a race's trials skip both)
                "race.")  # how a race searched (its strategies, trials, workers): its jobs' settings are their own overrides


def _settings(job: Job) -> dict[str, str]:
    """The job's command-line settings that can change its result, by key."""
    settings = {}
    for override in job.record.overrides or []:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in ("strategy", AVERAGED, AXIS) and not key.startswith(NOT_SETTINGS):
            settings[key] = value
    return settings


def series_names(jobs: list[Job], beside: tuple[str, ...] = ()) -> dict[str, str]:
    """Per job name, its series: the strategy plus every setting that differs between that strategy's jobs
    (frozen depth, rates, BN policy, ...), so that only seeds are averaged; ``beside``: settings a table
    shows in a column of its own."""
    settings = {job.name: _settings(job) for job in jobs}
    by_strategy = defaultdict(list)
    for job in jobs:
        by_strategy[job.record.strategy].append(job)
    names = {}
    for strategy, members in by_strategy.items():
        keys = sorted({key for job in members for key in settings[job.name]} - set(beside))
        varying = [key for key in keys if len({settings[job.name].get(key) for job in members}) > 1]
        distinct = len({tuple(settings[job.name].get(key) for key in varying) for job in members})
        for digits in (3, 4, 6, 17):  # floats as short as keeps different settings apart (a search's rates)
            texts = {job.name: ", ".join(f"{key.removeprefix('strategy.')}={_short(settings[job.name].get(key, 'default'), digits)}"
                                         for key in varying) for job in members}
            if len(set(texts.values())) == distinct:
                break
        for job in members:
            names[job.name] = f"{strategy} ({texts[job.name]})" if texts[job.name] else str(strategy)
    return names


def _short(value: str, digits: int) -> str:
    """A decimal setting (``0.0003754553966912878``) to ``digits`` significant digits; anything else as it is."""
    try:
        return format(float(value), f".{digits}g") if any(c in value for c in ".eE") else value
    except ValueError:
        return value


def fraction_of(job: Job) -> float | None:
    fraction = job.record.fraction
    return float(fraction) if isinstance(fraction, (int, float)) else None


def choose_fraction(jobs: list[Job], requested: float | None = None) -> float | None:
    """The race's fraction: the requested one, else the one with the most jobs with a history (ties: the largest)."""
    with_history = [j for j in jobs if j.completed and j.history and fraction_of(j) is not None]
    if requested is not None:
        return float(requested)
    counts = Counter(fraction_of(j) for j in with_history)
    return max(counts, key=lambda f: (counts[f], f)) if counts else None


def by_series_and_fraction(jobs: list[Job]) -> list[tuple[str, float | None, list[Job]]]:
    """``jobs`` grouped by (series, fraction): the seeds of one setting together; series in the registry's
    order, fractions ascending (unknown last)."""
    series, groups = series_names(jobs), defaultdict(list)
    for job in jobs:
        groups[(series[job.name], fraction_of(job))].append(job)
    return [(name, fraction, groups[(name, fraction)]) for name in strategy_order(s for s, _ in groups)
            for fraction in sorted((f for s, f in groups if s == name), key=lambda f: (f is None, f))]
