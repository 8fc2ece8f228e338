"""What tuning bought: each strategy's race result (its best settings, confirmed on seeds) against the same
strategy at its defaults on the same seeds, as a paired difference with its 95 % t interval (scipy.stats).
The candidate can also be a sweep directory or ``jobs.csv`` without ``race.json`` (a candidate default run on
the same seeds): its jobs are grouped by strategy the same way.

The defaults' jobs come from ``jobs.csv`` files written by ``scripts/study_table.py --csv`` (or sweep
directories, read the same way); a job counts for a strategy when its setting holds ``strategy=<name>`` and
sets each ``--where`` key it sets to that value (``strategy.bn_trainable=frozen_stats`` keeps the jobs that
chose it or left it at its default). Where several sources hold a strategy, the last one wins (a newer default).

    python scripts/race_vs_defaults.py <race dir> --defaults docs/studies/bn_study/confirm/fm01/jobs.csv \
        --where strategy.bn_trainable=frozen_stats --md table.md
    python scripts/race_vs_defaults.py <sweep of a candidate default> --defaults <jobs.csv of the current one> ...
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from tlexp.verdict import interval
from tlexp.results import settings_text


def default_scores(sources: list[Path], where: list[str]) -> dict[str, dict[int, float]]:
    """Per strategy, test/acc per seed of the completed default jobs (the last source holding it wins)."""
    found: dict[str, dict[int, float]] = {}
    for source in sources:
        rows = list(csv.DictReader(source.open())) if source.is_file() else jobs_of(source)
        this: dict[str, dict[int, float]] = {}
        for row in rows:
            terms = row["setting"].split()
            names = [t.removeprefix("strategy=") for t in terms if t.startswith("strategy=")]
            if row["status"] == "completed" and row["test_acc"] and names and all(agrees(terms, w) for w in where):
                this.setdefault(names[0], {})[int(row["seed"])] = float(row["test_acc"])
        found.update(this)
    return found


def agrees(terms: list[str], where: str) -> bool:
    key = where.split("=", 1)[0] + "="
    return all(t == where for t in terms if t.startswith(key))


def jobs_of(sweep: Path) -> list[dict]:
    from study_table import setting  # noqa: PLC0415 - the same notion of a setting as the tables in docs/studies

    from tlexp.results import load_jobs

    return [{"setting": setting(j.record.overrides or []), "seed": j.record.seed, "status": j.status,
             "test_acc": j.record.test_acc} for j in load_jobs(sweep)]


def ranged(values: list[float], sign: str = "") -> str:
    ci = interval(values)
    mean = float(np.mean(values))
    return f"{mean:{sign}.3f}" + (f" [{ci[0]:{sign}.3f}, {ci[1]:{sign}.3f}]" if ci else "")


def table(race: dict, defaults: dict[str, dict[int, float]]) -> str:
    lines = []
    for cell in race["cells"]:
        lines += [f"**{cell['cell']}** (`{' '.join(cell['overrides'])}`)", "",
                  "| strategy | defaults: test/acc [95 % CI] | race or candidate [95 % CI] | that - defaults, paired [95 % CI] "
                  "| seeds | tuned settings |",
                  "|---|---|---|---|---|---|"]
        for e in cell["strategies"]:
            tuned = {int(s): v for s, v in e["test_acc"].items()}
            base = defaults.get(e["strategy"], {})
            seeds = sorted(set(tuned) & set(base))
            diff = "-"
            if len(seeds) >= 2:
                test = stats.ttest_rel([tuned[s] for s in seeds], [base[s] for s in seeds])
                low, high = test.confidence_interval(0.95)
                mean = float(np.mean([tuned[s] - base[s] for s in seeds]))
                diff = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
            lines.append(f"| `{e['strategy']}` | {ranged(list(base.values())) if base else '-'} | "
                         f"{ranged(list(tuned.values())) if tuned else '-'} | {diff} | {','.join(map(str, seeds)) or '-'} | "
                         f"{settings_text(e.get('best_params'))} |")
        lines.append("")
    return "\n".join(lines)


def as_race(candidate: Path) -> dict:
    """A sweep directory or ``jobs.csv`` shaped as a race of one cell: per strategy its test/acc per seed."""
    scores = default_scores([candidate], [])
    return {"cells": [{"cell": candidate.name, "overrides": [],
                       "strategies": [{"strategy": name, "test_acc": scores[name], "best_params": None} for name in scores]}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("race_dir", type=Path)
    parser.add_argument("--defaults", type=Path, action="append", required=True, help="jobs.csv or sweep directory")
    parser.add_argument("--where", action="append", default=[], help="a term every default job's setting holds")
    parser.add_argument("--md", type=Path, help="write the table here too")
    args = parser.parse_args(argv)
    race = json.loads((args.race_dir / "race.json").read_text()) if (args.race_dir / "race.json").is_file() else as_race(args.race_dir)
    text = table(race, default_scores(args.defaults, args.where))
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
