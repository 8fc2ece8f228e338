"""A race's verdict: per strategy the test/acc mean and 95 % t interval over the confirmation seeds, the paired
difference to the winner on the same seeds with its interval (scipy.stats.ttest_rel), "tied" where that interval
covers 0, and the printed table (``tlexp.race`` runs the race; ``race.json`` holds what this computes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from tlexp.results import RACE_FILE, settings_text, with_interval


def interval(values: list[float]) -> tuple[float, float] | None:
    """The 95 % t interval of the mean (None from one value; the value itself when they are all equal)."""
    if len(values) < 2:
        return None
    if np.ptp(values) == 0:
        return (float(values[0]),) * 2
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    return tuple(float(x) for x in stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem))


def paired(mine: dict, theirs: dict) -> dict:
    """mine - theirs on the seeds both have: the mean difference and its 95 % interval (scipy.stats.ttest_rel);
    no interval from one seed, or from the same difference on every seed."""
    seeds = sorted(set(mine) & set(theirs))
    a, b = [mine[s] for s in seeds], [theirs[s] for s in seeds]
    diff = [x - y for x, y in zip(a, b)]
    if len(diff) >= 2 and np.ptp(diff) > 0:
        test = stats.ttest_rel(a, b)
        low, high = test.confidence_interval(0.95)
        return {"seeds": seeds, "diff": float(np.mean(diff)), "ci": (float(low), float(high)), "p_value": float(test.pvalue)}
    return {"seeds": seeds, "diff": float(np.mean(diff)) if diff else None, "ci": None, "p_value": None}


def verdict(entries: list[dict]) -> list[dict]:
    """Rank by mean test/acc; each against the winner on the seeds both completed (paired). Strategies without
    test scores (a search-only race, ``race.seeds=0``) follow, ranked by their best trial's val/acc. Where the
    confirmations also scored a shifted test split (``data.target_domain``: ``target_acc``), its mean, interval
    and paired difference to the same winner come beside: reported, never used to rank (its labels are the
    target's, which a race under shift must not select on)."""
    scored = [e for e in entries if e["test_acc"]]
    for e in scored:
        values = list(e["test_acc"].values())
        e.update(mean=float(np.mean(values)), ci=interval(values), n=len(values))
        if targets := list((e.get("target_acc") or {}).values()):
            e.update(target_mean=float(np.mean(targets)), target_ci=interval(targets))
    scored.sort(key=lambda e: -e["mean"])
    winner = scored[0] if scored else None
    for e in scored:
        test = paired(e["test_acc"], winner["test_acc"])
        e.update(winner=e is winner, paired_seeds=test["seeds"], diff=test["diff"], diff_ci=test["ci"], p_value=test["p_value"])
        if e is winner:
            e.update(diff_ci=(0.0, 0.0), tied=True)
        else:
            e["tied"] = bool(test["ci"][0] <= 0 <= test["ci"][1]) if test["ci"] else test["diff"] == 0
        if "target_mean" in e and winner.get("target_acc"):
            target = paired(e["target_acc"], winner["target_acc"])
            e.update(target_diff=target["diff"], target_diff_ci=(0.0, 0.0) if e is winner else target["ci"])
    unscored = [e for e in entries if not e["test_acc"]]
    return scored + sorted(unscored, key=lambda e: -(e.get("val_acc_best") or 0))


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_race(result: dict) -> str:
    lines = [f"tlexp race {result['race_dir']} (storage {result['storage']})"]
    searched_only = result["settings"].get("seeds") == 0
    for cell in result["cells"]:
        shifted = any("target_mean" in e for e in cell["strategies"])
        lines.append(f"\n{cell['cell']}: " + ("search only (race.seeds=0): ranked by the best trial's val/acc, not tested"
                                               if searched_only else "test/acc over seeds, best settings chosen on validation"
                                               + ("; test/target_acc (the shifted test split) beside, not ranked by" if shifted else "")))
        target_header = f" {'target_acc [95% CI]':>26s} {'vs winner [95% CI]':>28s}" if shifted else ""
        lines.append(f"  {'strategy':15s} {'val best':>8s} {'mean':>7s} {'95% CI':>17s} {'vs winner':>9s} {'95% CI':>19s}  verdict    "
                     f"{'trials':>6s} {'pruned':>6s} {'epochs':>6s} {'img x ep':>9s} {'seconds':>8s}{target_header}  best settings")
        for e in cell["strategies"]:
            ci = e.get("ci")
            dci = e.get("diff_ci")
            word = "winner" if e.get("winner") else ("tied" if e.get("tied") else ("behind" if "mean" in e else
                                                                                   "searched" if searched_only else "no result"))
            search = e["search"]
            target = (f" {with_interval(e.get('target_mean'), e.get('target_ci')) or '-':>26s}"
                      f" {with_interval(e.get('target_diff'), e.get('target_diff_ci'), '+.4f') or '-':>28s}") if shifted else ""
            lines.append(f"  {e['strategy']:15s} {_fmt(e.get('val_acc_best')):>8s} {_fmt(e.get('mean')):>7s} "
                         f"{(f'[{ci[0]:.4f}, {ci[1]:.4f}]' if ci else '-'):>17s} {_fmt(e.get('diff'), '+.4f'):>9s} "
                         f"{(f'[{dci[0]:+.4f}, {dci[1]:+.4f}]' if dci else '-'):>19s}  {word:10s} "
                         f"{search['trials']:>6d} {search['pruned']:>6d} {search['epochs']:>6d} {search['image_epochs']:>9d} "
                         f"{search['seconds']:>8.0f}{target}  {settings_text(e.get('best_params'))}")
    lines.append(f"\n{RACE_FILE}: {Path(result['race_dir']) / RACE_FILE}")
    return "\n".join(lines)
