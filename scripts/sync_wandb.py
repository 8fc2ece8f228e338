"""Upload a sweep's offline W&B runs: `python scripts/sync_wandb.py <sweep dir> [--dry-run]`.

Runs `wandb sync` on every offline-run-* directory under the sweep (the jobs' runs and the
sweep's summary run). Needs network and credentials (`wandb login` or WANDB_API_KEY);
--dry-run only lists the runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def offline_runs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.rglob("offline-run-*") if p.is_dir())


def wandb_command() -> list[str]:
    """The wandb CLI of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("wandb")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    parser.add_argument("--include-synced", action="store_true", help="also re-sync runs already synced")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"sync_wandb: error: not a directory: {args.sweep_dir}", file=sys.stderr)
        return 2
    runs = offline_runs(args.sweep_dir)
    print(f"{len(runs)} offline W&B run(s) under {args.sweep_dir}")
    for run in runs:
        print(f"  {run.relative_to(args.sweep_dir)}")
    if args.dry_run or not runs:
        return 0
    command = wandb_command() + ["sync"] + (["--include-synced"] if args.include_synced else []) + [str(r) for r in runs]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
