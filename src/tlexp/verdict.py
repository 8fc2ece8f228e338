"""A race's verdict: per strategy the test/acc mean and 95 % t interval over the confirmation seeds, the paired
difference to the winner on the same seeds with its interval (scipy.stats.ttest_rel), "tied" where that interval
covers 0, and the printed table (``tlexp.race`` runs the race; ``race.json`` holds what this computes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from tlexp.results import RACE_FILE, settings_text


def interval(values: list[float]) -> tuple[float, float] | None:
    """The 95 % t interval of the mean (None from one value; the value itself when they are all equal)."""
    if len(values) < 2:
        return None
    if np.ptp(values) == 0:
        return (float(values[0]),) * 2
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    return tuple(float(x) for x in stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem))


def verdict(entries: list[dict]) -> list[dict]:
    """Rank by mean test/acc; each against the winner on the seeds both completed (paired). Strategies without
    test scores (a search-only race, ``race.seeds=0``) follow, ranked by their best trial's val/acc."""
    scored = [e for e in entries if e["test_acc"]]
    for e in scored:
        values = list(e["test_acc"].values())
        e.update(mean=float(np.mean(values)), ci=interval(values), n=len(values))
    scored.sort(key=lambda e: -e["mean"])
    winner = scored[0] if scored else None
    for e in scored:
        seeds = sorted(set(e["test_acc"]) & set(winner["test_acc"]))
        mine, theirs = [e["test_acc"][s] for s in seeds], [winner["test_acc"][s] for s in seeds]
        diff = [a - b for a, b in zip(mine, theirs)]
        e.update(winner=e is winner, paired_seeds=seeds, diff=float(np.mean(diff)) if diff else None)
        if e is winner:
            e.update(diff_ci=(0.0, 0.0), p_value=None, tied=True)
        elif len(diff) >= 2 and np.ptp(diff) > 0:
            test = stats.ttest_rel(mine, theirs)
            low, high = test.confidence_interval(0.95)
            e.update(diff_ci=(float(low), float(high)), p_value=float(test.pvalue), tied=bool(low <= 0 <= high))
        else:  # one seed, or the same difference on every seed: no interval
            e.update(diff_ci=None, p_value=None, tied=bool(diff) and e["diff"] == 0)
    unscored = [e for e in entries if not e["test_acc"]]
    return scored + sorted(unscored, key=lambda e: -(e.get("val_acc_best") or 0))


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_race(result: dict) -> str:
    lines = [f"tlexp race {result['race_dir']} (storage {result['storage']})"]
    searched_only = result["settings"].get("seeds") == 0
    for cell in result["cells"]:
        lines.append(f"\n{cell['cell']}: " + ("search only (race.seeds=0): ranked by the best trial's val/acc, not tested"
                                               if searched_only else "test/acc over seeds, best settings chosen on validation"))
        lines.append(f"  {'strategy':15s} {'val best':>8s} {'mean':>7s} {'95% CI':>17s} {'vs winner':>9s} {'95% CI':>19s}  verdict    "
                     f"{'trials':>6s} {'pruned':>6s} {'epochs':>6s} {'img x ep':>9s} {'seconds':>8s}  best settings")
        for e in cell["strategies"]:
            ci = e.get("ci")
            dci = e.get("diff_ci")
            word = "winner" if e.get("winner") else ("tied" if e.get("tied") else ("behind" if "mean" in e else
                                                                                   "searched" if searched_only else "no result"))
            search = e["search"]
            lines.append(f"  {e['strategy']:15s} {_fmt(e.get('val_acc_best')):>8s} {_fmt(e.get('mean')):>7s} "
                         f"{(f'[{ci[0]:.4f}, {ci[1]:.4f}]' if ci else '-'):>17s} {_fmt(e.get('diff'), '+.4f'):>9s} "
                         f"{(f'[{dci[0]:+.4f}, {dci[1]:+.4f}]' if dci else '-'):>19s}  {word:10s} "
                         f"{search['trials']:>6d} {search['pruned']:>6d} {search['epochs']:>6d} {search['image_epochs']:>9d} "
                         f"{search['seconds']:>8.0f}  {settings_text(e.get('best_params'))}")
    lines.append(f"\n{RACE_FILE}: {Path(result['race_dir']) / RACE_FILE}")
    return "\n".join(lines)
