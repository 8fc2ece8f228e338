"""The report's numbers: statistics over seeds and one table per section, from the jobs of a sweep."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tlexp.report.series import by_series_and_fraction, describe, fraction_of, series_names, strategy_order
from tlexp.results import RACE_FILE, Job, Status, settings_text, with_interval


@dataclass
class Table:
    """Rows of numbers and text; formatted only when written to HTML."""

    columns: list[str]
    rows: list[list]

    def as_dicts(self) -> list[dict]:
        return [dict(zip(self.columns, row)) for row in self.rows]


def jobs_table(jobs: list[Job]) -> Table:
    columns = ["job", "status", "strategy", "fraction", "train_size", "seed", "frozen_depth", "lr_head", "lr_backbone",
               "weight_decay", "params_trainable", "val_acc_best", "val_acc_final", "test_acc", "s_per_epoch",
               "wall_seconds", "error"]
    rows = []
    for job in jobs:
        derived = {"job": job.name, "status": job.status, "params_trainable": job.trainable_params,
                   "s_per_epoch": job.seconds_per_epoch}
        rows.append([derived[c] if c in derived else getattr(job.record, c) for c in columns])
    return Table(columns, rows)


UNFINISHED = (Status.DIVERGED, Status.INTERRUPTED, Status.KILLED)


def unfinished_table(jobs: list[Job]) -> Table:
    """Diverged, interrupted and killed jobs, apart from the results: where they stopped and why (a killed
    job's cause: what the system says, where it says so)."""
    columns = ["job", "status", "strategy", "lr_head", "lr_backbone", "epochs_done", "max_epochs", "step",
               "last_finite_loss", "error", "cause"]
    rows = []
    for job in jobs:
        if job.status in UNFINISHED:
            record, details = job.record, job.record.diverged or {}
            rows.append([job.name, job.status, record.strategy, record.lr_head, record.lr_backbone, record.epochs_done,
                         record.max_epochs, details.get("step"), details.get("last_finite_loss"), record.error, record.cause])
    return Table(columns, rows)


def race_curves(jobs: list[Job], fraction: float | None) -> dict[str, dict]:
    """Per series (``series_names``), per epoch: val/acc (mean, min, max over seeds) and mean elapsed seconds."""
    curves = {}
    chosen = [j for j in jobs if j.completed and j.history and fraction_of(j) == fraction]
    series, by_strategy = series_names(chosen), defaultdict(list)
    for job in chosen:
        by_strategy[series[job.name]].append(job)
    for strategy in strategy_order(by_strategy):
        per_epoch = defaultdict(lambda: {"acc": [], "elapsed": []})
        for job in by_strategy[strategy]:
            for row in job.history:
                if "val/acc" in row:
                    per_epoch[row["epoch"]]["acc"].append(row["val/acc"])
                    per_epoch[row["epoch"]]["elapsed"].append(row.get("time/elapsed_s"))
        epochs = sorted(per_epoch)
        acc = [describe(per_epoch[e]["acc"]) for e in epochs]
        elapsed = [describe(per_epoch[e]["elapsed"])["mean"] for e in epochs]
        curves[strategy] = {"runs": len(by_strategy[strategy]), "epoch": [e + 1 for e in epochs], "elapsed": elapsed,
                            "mean": [a["mean"] for a in acc], "min": [a["min"] for a in acc], "max": [a["max"] for a in acc]}
    return curves


def race_table(curves: dict[str, dict]) -> Table:
    rows = []
    for strategy, curve in curves.items():
        for i, epoch in enumerate(curve["epoch"]):
            rows.append([strategy, curve["runs"], epoch, curve["elapsed"][i], curve["mean"][i], curve["min"][i], curve["max"][i]])
    return Table(["strategy", "runs", "epoch", "elapsed_s", "val_acc_mean", "val_acc_min", "val_acc_max"], rows)


def few_shot_table(jobs: list[Job]) -> Table:
    """Per series (``series_names``) and fraction: training-set size and test/acc over seeds."""
    done = [j for j in jobs if j.completed and j.test_acc is not None and fraction_of(j) is not None]
    rows = []
    for strategy, fraction, members in by_series_and_fraction(done):
        acc = describe([j.test_acc for j in members])
        size = describe([j.record.train_size for j in members])["mean"]
        rows.append([strategy, fraction, size, acc["n"], acc["mean"], acc["std"], acc["min"], acc["max"]])
    return Table(["strategy", "fraction", "train_size", "runs", "test_acc_mean", "test_acc_std", "test_acc_min",
                  "test_acc_max"], rows)


def gain_table(few_shot: Table) -> Table:
    """Each series' mean test/acc minus scratch's at the same fraction: the scratch series with the same
    settings, else the only one."""
    rows = few_shot.as_dicts()
    scratch = {(r["strategy"], r["fraction"]): r["test_acc_mean"] for r in rows if r["strategy"].split(" (")[0] == "scratch"}
    only = {f: acc for (_, f), acc in scratch.items() if sum(1 for _, g in scratch if g == f) == 1}
    out = []
    for r in rows:
        settings = r["strategy"].partition(" (")[2]
        reference = scratch.get((f"scratch ({settings}" if settings else "scratch", r["fraction"]), only.get(r["fraction"]))
        if r["strategy"].split(" (")[0] != "scratch" and reference is not None:
            out.append([r["strategy"], r["fraction"], r["train_size"], r["test_acc_mean"], reference,
                        r["test_acc_mean"] - reference])
    return Table(["strategy", "fraction", "train_size", "test_acc_mean", "scratch_test_acc_mean", "gain"], out)


def dataset_of(job: Job) -> str:
    return job.record.dataset or job.record.data or "?"


def dataset_table(jobs: list[Job]) -> Table:
    """Per dataset and fraction: the best series (mean test/acc over seeds), scratch's, and the transfer gain.
    Series are named within each dataset, so the dataset itself does not split them."""
    done = [j for j in jobs if j.completed and j.test_acc is not None and fraction_of(j) is not None]
    rows = []
    for dataset in sorted({dataset_of(j) for j in done}):
        few_shot = few_shot_table([j for j in done if dataset_of(j) == dataset]).as_dicts()
        for fraction in sorted({r["fraction"] for r in few_shot}):
            here = [r for r in few_shot if r["fraction"] == fraction]
            transfer = [r for r in here if r["strategy"].split(" (")[0] != "scratch"]
            scratch = [r["test_acc_mean"] for r in here if r["strategy"].split(" (")[0] == "scratch"]
            if not transfer:
                continue
            best = max(transfer, key=lambda r: r["test_acc_mean"])
            baseline = max(scratch) if scratch else None
            rows.append([dataset, fraction, best["train_size"], best["strategy"], best["runs"], best["test_acc_mean"],
                         baseline, None if baseline is None else best["test_acc_mean"] - baseline])
    return Table(["dataset", "fraction", "train_size", "best_strategy", "runs", "test_acc_mean", "scratch_test_acc_mean",
                  "gain"], rows)


def movement_table(jobs: list[Job]) -> Table:
    """Per series, fraction and backbone stage: the final weight distance from the start and the CKA of the
    stage's outputs then and now (``LayerMovement``), mean over seeds; stages in network order."""
    done = [j for j in jobs if j.completed and any(k.startswith("movement/") for k in (j.record.metrics or {}))]
    rows = []
    for name, fraction, members in by_series_and_fraction(done):
        stages = [s for s in members[0].record.stages or [] if f"movement/{s}/weight_distance" in members[0].record.metrics]
        for stage in stages:
            distance = describe([j.record.metrics.get(f"movement/{stage}/weight_distance") for j in members])
            cka = describe([j.record.metrics.get(f"movement/{stage}/cka") for j in members])
            rows.append([name, fraction, stage, distance["n"], distance["mean"], cka["mean"]])
    return Table(["strategy", "fraction", "stage", "runs", "weight_distance", "cka"], rows)


def cost_table(jobs: list[Job]) -> Table:
    done = [j for j in jobs if j.completed and j.test_acc is not None]
    rows = []
    for strategy, fraction, members in by_series_and_fraction(done):
        rows.append([strategy, fraction, len(members), describe([j.trainable_params for j in members])["mean"],
                     describe([j.seconds_per_epoch for j in members])["mean"],
                     describe([j.test_acc for j in members])["mean"]])
    return Table(["strategy", "fraction", "runs", "params_trainable", "s_per_epoch", "test_acc_mean"], rows)


def depth_table(jobs: list[Job]) -> Table:
    """Tested ``partial`` jobs (not a race's search trials) per (series, fraction, frozen depth): test/acc,
    trainable parameters, seconds per epoch."""
    groups = defaultdict(list)
    partial = [j for j in jobs if j.completed and j.record.strategy == "partial" and j.record.frozen_depth is not None
               and j.test_acc is not None]
    series = series_names(partial, beside=("strategy.frozen_depth",))
    for job in partial:
        groups[(series[job.name], fraction_of(job), job.record.frozen_depth)].append(job)
    rows = []
    for name, fraction, depth in sorted(groups, key=lambda k: (k[0], k[1] is None, k[1], k[2])):
        members = groups[(name, fraction, depth)]
        acc = describe([j.test_acc for j in members])
        rows.append([name, fraction, depth, members[0].record.num_stages, acc["n"], acc["mean"], acc["std"],
                     describe([j.trainable_params for j in members])["mean"],
                     describe([j.seconds_per_epoch for j in members])["mean"]])
    return Table(["strategy", "fraction", "frozen_depth", "num_stages", "runs", "test_acc_mean", "test_acc_std",
                  "params_trainable", "s_per_epoch"], rows)


def compares_depths(depth: Table) -> bool:
    """Whether the frozen-depth table has something to compare: at least two frozen depths."""
    return len({row["frozen_depth"] for row in depth.as_dicts()}) >= 2


def verdict_table(sweep_dir: Path) -> Table:
    """The race's verdict (``race.json``, tlexp.race), one row per data cell and strategy; empty without a race."""
    path = Path(sweep_dir) / RACE_FILE
    columns = ["cell", "strategy", "verdict", "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "seeds", "acc_diff_to_winner",
               "acc_diff_low", "acc_diff_high", "trials", "pruned", "epochs", "image_epochs", "search_seconds", "val_acc_best",
               "best_params", "target_acc_mean", "target_acc_ci_low", "target_acc_ci_high", "target_diff_to_winner",
               "target_diff_low", "target_diff_high"]
    if not path.is_file():
        return Table(columns, [])
    rows = []
    for cell in json.loads(path.read_text())["cells"]:
        for e in cell["strategies"]:
            ci, dci, search = e.get("ci") or (None, None), e.get("diff_ci") or (None, None), e["search"]
            verdict = "winner" if e.get("winner") else "tied" if e.get("tied") else "behind" if "mean" in e else "no result"
            rows.append([cell["cell"], e["strategy"], verdict, e.get("mean"), *ci, e.get("n"), e.get("diff"), *dci,
                         search["trials"], search["pruned"], search["epochs"], search["image_epochs"], search["seconds"],
                         e.get("val_acc_best"), settings_text(e.get("best_params")), e.get("target_mean"),
                         *(e.get("target_ci") or (None, None)), e.get("target_diff"), *(e.get("target_diff_ci") or (None, None))])
    return Table(columns, rows)


def verdict_display(verdict: Table) -> Table:
    """The verdict as the page shows it: each interval beside its mean in one cell, the search's compute in one,
    so that the leaderboard fits the page (report.json keeps ``verdict_table``'s separate numbers)."""
    def ranged(mean, low, high, sign=""):
        return with_interval(mean, (low, high) if low is not None else None, f"{sign}.4f")

    shifted = any(r["target_acc_mean"] is not None for r in verdict.as_dicts())  # a race with data.target_domain
    rows = [[r["cell"], r["strategy"], r["verdict"], ranged(r["test_acc_mean"], r["test_acc_ci_low"], r["test_acc_ci_high"]),
             r["seeds"], ranged(r["acc_diff_to_winner"], r["acc_diff_low"], r["acc_diff_high"], "+"),
             *([ranged(r["target_acc_mean"], r["target_acc_ci_low"], r["target_acc_ci_high"]),
                ranged(r["target_diff_to_winner"], r["target_diff_low"], r["target_diff_high"], "+")] if shifted else []),
             f"{r['trials']} ({r['pruned']} pruned), {r['epochs']} epochs, {r['search_seconds']:.0f} s", r["best_params"]]
            for r in verdict.as_dicts()]
    target = ["test/target_acc [95% CI]", "target vs winner [95% CI]"] if shifted else []
    return Table(["cell", "strategy", "verdict", "test/acc [95% CI]", "seeds", "vs winner [95% CI]", *target, "search",
                  "best settings"], rows)
