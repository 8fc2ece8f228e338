"""Summarise one or more sweep directories as a table: one row per setting, test/acc as mean ± std over seeds.

A setting is every override of a job except ``seed``, so jobs that differ only in their seed are
averaged and everything else a sweep varied stays apart. Writes (or prints) a Markdown table and a
CSV of every job, which is how the studies under ``docs/studies/`` keep their numbers in git.

    python scripts/study_table.py logs/train/multiruns/<sweep> [more sweeps] --csv jobs.csv --md table.md
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tlexp.results import load_jobs

IGNORED = ("seed", "experiment", "logger", "hydra.")


def setting(overrides: list[str]) -> str:
    """The job's overrides without its seed (and without keys that do not change the result)."""
    return " ".join(sorted(o for o in overrides if not o.lstrip("+~").startswith(IGNORED)))


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="write every job's record here")
    parser.add_argument("--md", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    rows, groups = [], defaultdict(list)
    for sweep in args.sweeps:
        for job in load_jobs(sweep):
            record, overrides = job.record, job.record.overrides or []
            rows.append({"sweep": sweep.name, "setting": setting(overrides), "seed": record.seed, "status": job.status,
                         "test_acc": job.test_acc, "val_acc_best": record.val_acc_best,
                         "train_size": record.train_size, "wall_seconds": record.wall_seconds})
            groups[(sweep.name, setting(overrides))].append(job)
    lines = ["| sweep | setting | n | test/acc | val/acc best |", "|---|---|---:|---:|---:|"]
    for (sweep, key), jobs in sorted(groups.items()):
        done = [j for j in jobs if j.completed]
        lines.append(f"| {sweep} | {key} | {len(done)}/{len(jobs)} | {mean_std([j.test_acc for j in done if j.test_acc is not None])} "
                     f"| {mean_std([j.record.val_acc_best for j in done if j.record.val_acc_best is not None])} |")
    table = "\n".join(lines) + "\n"
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)
    else:
        sys.stdout.write(table)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["sweep"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
