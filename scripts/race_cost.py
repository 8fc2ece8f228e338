"""A race trial's fixed cost (wall time outside its epochs), in-process against separate processes.

    .venv/bin/python scripts/race_cost.py                          # Fashion-MNIST 1 %, EfficientNet-Lite0, 4 trials
    .venv/bin/python scripts/race_cost.py --trials 6 --strategy frozen model=tiny data=synthetic

Runs ``train.py -m experiment=race`` with one strategy and ``--trials`` trials of 1 epoch (no pruning, one
confirmation seed), then the same trials' settings as separate ``train.py`` processes. For each trial:
wall time (Optuna's start to end, which includes composing the config; a process's whole life) minus its
epochs (``time/epoch_s`` in metrics.csv: training and validation). Prints a Markdown table (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def epochs_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return sum(float(row["time/epoch_s"]) for row in csv.DictReader(handle) if row.get("time/epoch_s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--strategy", default="full")
    parser.add_argument("overrides", nargs="*", default=["data.fraction=0.01"], help="train.py overrides of every trial")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    common = [*args.overrides, "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv"]
    with tempfile.TemporaryDirectory() as tmp:
        race_dir = Path(tmp) / "race"
        subprocess.run([sys.executable, "train.py", "-m", "experiment=race", *common, f"race.strategies=[{args.strategy}]",
                        f"race.trials={args.trials}", "race.seeds=1", "race.pruner._target_=optuna.pruners.NopPruner",
                        "~race.pruner.min_resource", "~race.pruner.reduction_factor", f"hydra.sweep.dir={race_dir}"],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        storage = json.loads((race_dir / "race.json").read_text())["storage"]
        study = optuna.load_study(study_name=f"race/{args.strategy}", storage=storage)
        inproc, procs = [], []
        for trial in sorted(study.trials, key=lambda t: t.number):
            run_dir = race_dir / trial.user_attrs["job"]
            wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            inproc.append((wall, wall - epochs_seconds(run_dir)))
            overrides = [o for o in json.loads((run_dir / "result.json").read_text())["overrides"]  # a single run
                         if o != "experiment=race" and "race." not in o]
            alone = Path(tmp) / f"alone{trial.number}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={alone}"], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            procs.append((wall, wall - epochs_seconds(alone)))
    print("| trial | in-process: wall s | fixed s | separate process: wall s | fixed s |\n|---:|---:|---:|---:|---:|")
    for number, ((w1, f1), (w2, f2)) in enumerate(zip(inproc, procs)):
        print(f"| {number} | {w1:.1f} | {f1:.1f} | {w2:.1f} | {f2:.1f} |")
    later = slice(1, None)
    print(f"| mean after the first | {statistics.mean(w for w, _ in inproc[later]):.1f} | "
          f"{statistics.mean(f for _, f in inproc[later]):.1f} | {statistics.mean(w for w, _ in procs[later]):.1f} | "
          f"{statistics.mean(f for _, f in procs[later]):.1f} |")
    print(f"\n{args.strategy}, {args.trials} trials of 1 epoch, overrides: {' '.join(args.overrides)}; {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
