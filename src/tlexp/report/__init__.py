"""Review a sweep offline: every job's ``result.json`` and ``metrics.csv`` -> ``report.html`` + PNG figures.

``tlexp-report <sweep dir>`` (or ``python scripts/report.py <sweep dir>``, ``python -m tlexp.report``)
writes, into the sweep directory or ``--out``:

1. the race: val/acc per epoch and per wall-clock second, one curve per strategy (mean, min-max band over seeds);
2. the few-shot curve: test/acc against the training-set size, one line per strategy;
3. the transfer gain: each strategy's test/acc minus scratch's at the same fraction;
4. the cost: trainable parameters and seconds per epoch against test/acc;
5. the frozen depth: ``partial`` jobs' test/acc, trainable parameters and seconds per epoch per frozen depth;
6. which layers moved: per backbone stage, CKA start vs end and the weights' relative distance;
7. datasets: per dataset and fraction, the best series and its gain over scratch.

Above them, the interactive race (``dashboard``).

Each section has an HTML table with the numbers beside its figure; figures are embedded as base64,
so the file opens offline in any browser. A section without data says so. ``report.json`` holds
the same tables for scripts.

Modules: ``tables`` (the numbers), ``figures`` (the PNGs), ``dashboard`` (the interactive race),
``html`` (the page and ``generate``), ``wandb_charts`` (the views as W&B panels), ``cli`` (the command line).
The jobs are read by ``tlexp.results.load_jobs``.
"""

from tlexp.report.cli import main
from tlexp.report.html import generate, report_figures
from tlexp.report.series import describe

__all__ = ["describe", "generate", "main", "report_figures"]
