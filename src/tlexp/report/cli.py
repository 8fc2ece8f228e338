"""``tlexp-report <sweep dir>``, ``python -m tlexp.report`` and ``python scripts/report.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlexp.report.html import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlexp-report", description="Write report.html and PNG figures for a tlexp sweep directory.")
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep directory)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="data fraction for the race plot (default: the fraction most jobs ran, ties: the largest)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        path = generate(args.sweep_dir, args.out, args.fraction, figures=not args.no_figures)
    except FileNotFoundError as error:
        print(f"tlexp-report: error: {error}", file=sys.stderr)
        return 2
    print(f"tlexp-report: wrote {path}")
    return 0
