"""Summarise one or more sweep directories as a table: one row per setting, test/acc as mean ± std over seeds.

A setting is every override of a job except ``seed``, so jobs that differ only in their seed are
averaged and everything else a sweep varied stays apart. Writes (or prints) a Markdown table and a
CSV of every job, which is how the studies under ``docs/studies/`` keep their numbers in git.
Jobs with a target domain add test/target_acc; jobs that ``tlexp-wise-ft`` was run on add a row per record
(``wise_ft.json``: ``<setting> + wise_ft``, at the a it chose on validation; a record kept under another name,
``wise_ft_<name>.json``, e.g. of ``--alphas 0.5``, its own row). ``--paired SETTING`` adds each setting's difference
from that one, paired by seed, with its 95 % t interval (scipy.stats, as the race's verdict).

    python scripts/study_table.py logs/train/multiruns/<sweep> [more sweeps] --csv jobs.csv --md table.md
    python scripts/study_table.py <sweeps> --paired strategy=full --md table.md
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tlexp.results import load_jobs
from tlexp.verdict import paired

IGNORED = ("seed", "experiment", "logger", "hydra.", "paths.")
METRICS = ("test_acc", "target_test_acc", "val_acc_best")


def setting(overrides: list[str]) -> str:
    """The job's overrides without its seed (and without keys that do not change the result)."""
    return " ".join(sorted(o for o in overrides if not o.lstrip("+~").startswith(IGNORED)))


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


HEADERS = {"test_acc": "test/acc", "target_test_acc": "test/target_acc", "val_acc_best": "val/acc best"}


def job_rows(sweep: Path) -> list[dict]:
    """A row per job, and one per WiSE-FT of a job (its scores at the a chosen on validation)."""
    rows = []
    for job in load_jobs(sweep):
        record, key = job.record, setting(job.record.overrides or [])
        rows.append({"sweep": sweep.name, "setting": key, "seed": record.seed, "status": job.status,
                     "test_acc": job.test_acc, "target_test_acc": record.target_test_acc,
                     "val_acc_best": record.val_acc_best, "train_size": record.train_size,
                     "wall_seconds": record.wall_seconds, "alpha": None})
        run = rows[-1]
        for path in sorted(job.path.glob("wise_ft*.json")):
            wise = json.loads(path.read_text())
            rows.append({**run, "setting": f"{key} + {path.stem}", "test_acc": wise["test/acc"],
                         "alpha": wise["alpha"], "target_test_acc": wise.get("test/target_acc"),
                         "val_acc_best": wise["val/acc"]})
    return rows


def paired_table(groups: dict, reference: str, metrics: list[str]) -> str:
    """Each setting minus ``reference`` (same sweep or any sweep holding it), on the seeds both completed."""
    base = {row["seed"]: row for (_, key), group in groups.items() if key == reference for row in group
            if row["status"] == "completed"}
    lines = [f"| setting - {reference} | seeds | " + " | ".join(f"{HEADERS[m]} (95 % t interval)" for m in metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for (sweep, key), group in sorted(groups.items()):
        pairs = [(row, base[row["seed"]]) for row in group if row["status"] == "completed" and row["seed"] in base]
        if key == reference or not pairs:
            continue
        cells = []
        for m in metrics:
            both = [(row["seed"], row[m], ref[m]) for row, ref in pairs if row[m] is not None and ref[m] is not None]
            d = paired({seed: a for seed, a, _ in both}, {seed: b for seed, _, b in both})
            cells.append("-" if not both else f"{d['diff']:+.3f}" + (f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else ""))
        lines.append(f"| {key} ({sweep}) | {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="write every job's record here")
    parser.add_argument("--md", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument("--paired", metavar="SETTING", help="also each setting minus this one, paired by seed")
    args = parser.parse_args(argv)
    rows = [row for sweep in args.sweeps for row in job_rows(sweep)]
    groups = defaultdict(list)
    for row in rows:
        groups[(row["sweep"], row["setting"])].append(row)
    shown = [m for m in METRICS if any(row[m] is not None for row in rows)]
    lines = ["| sweep | setting | n | " + " | ".join(HEADERS[m] for m in shown) + " |", "|---|---|---:|" + "---:|" * len(shown)]
    for (sweep, key), group in sorted(groups.items()):
        done = [row for row in group if row["status"] == "completed"]
        cells = [mean_std([row[m] for row in done if row[m] is not None]) for m in shown]
        lines.append(f"| {sweep} | {key} | {len(done)}/{len(group)} | " + " | ".join(cells) + " |")
    if args.paired:
        lines += ["", paired_table(groups, args.paired, [m for m in shown if m != "val_acc_best"])]
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
