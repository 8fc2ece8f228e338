"""Review a sweep offline: every job's ``result.json`` and ``metrics.csv`` -> ``report.html`` + PNG figures.

``tlexp-report <sweep dir>`` (or ``python scripts/report.py <sweep dir>``) writes, into the sweep
directory or ``--out``:

1. the race: val/acc per epoch and per wall-clock second, one curve per strategy (mean, min-max band over seeds);
2. the few-shot curve: test/acc against the training-set size, one line per strategy;
3. the transfer gain: each strategy's test/acc minus scratch's at the same fraction;
4. the cost: trainable parameters and seconds per epoch against test/acc;
5. the frozen depth: ``partial`` jobs' test/acc, trainable parameters and seconds per epoch per frozen depth.

Each section has an HTML table with the numbers beside its figure; figures are embedded as base64,
so the file opens offline in any browser. A section without data says so. ``report.json`` holds
the same tables for scripts.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tlexp.results import RESULT_FILE, read_result

SUMMARY_FILE = "sweep_summary.json"
STRATEGY_ORDER = ["scratch", "frozen", "partial", "full", "gradual", "discriminative"]
EPOCH_KEYS = ("val/acc", "val/loss", "train/acc", "train/loss", "time/epoch_s", "time/elapsed_s")


# --- reading a sweep -------------------------------------------------------------------------------
@dataclass
class Job:
    """One job directory of a sweep: its result record and its per-epoch history."""

    name: str
    path: Path
    record: dict
    history: list[dict] = field(default_factory=list)

    def get(self, key, default=None):
        return self.record.get(key, default)

    @property
    def status(self) -> str:
        return self.record.get("status", "missing")

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def test_acc(self) -> float | None:
        return self.record.get("test_acc")

    @property
    def seconds_per_epoch(self) -> float | None:
        """Mean training-epoch time (time/epoch_s in metrics.csv), else fit time / epochs."""
        times = [row["time/epoch_s"] for row in self.history if row.get("time/epoch_s") is not None]
        if times:
            return statistics.fmean(times)
        fit, epochs = self.record.get("fit_seconds"), self.record.get("max_epochs")
        return fit / epochs if fit and epochs else None

    @property
    def trainable_params(self) -> int | None:
        """Trainable parameters at the end of training (gradual unfreezing grows them), else at the start."""
        values = [v for v in (self.record.get("params_trainable"), self.record.get("params_trainable_end")) if v is not None]
        return max(values) if values else None


def _number(text: str):
    if text in ("", None):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_history(metrics_csv: str | Path) -> list[dict]:
    """Per-epoch rows from Lightning's CSVLogger file: {epoch, val/acc, time/elapsed_s, ...}, sorted by epoch.

    Lightning writes training-epoch and validation values on separate rows of the same epoch;
    they are merged. Test rows (only test/* values) add nothing.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        return []
    epochs: dict[int, dict] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = _number(row.get("epoch", ""))
            if epoch is None:
                continue
            values = {key: _number(row.get(key, "")) for key in EPOCH_KEYS}
            values = {key: value for key, value in values.items() if value is not None}
            if values:
                epochs.setdefault(int(epoch), {"epoch": int(epoch)}).update(values)
    return [epochs[e] for e in sorted(epochs)]


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every job directory under a sweep: those with a result.json or a Hydra job config (.hydra/)."""
    root = Path(sweep_dir)
    found = {p.parent for p in root.rglob(RESULT_FILE)}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    return sorted(d for d in found if "wandb" not in d.relative_to(root).parts)


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """All jobs of a sweep. A job directory without result.json (killed, or never got to the end)
    is a failed job with that as its error."""
    root = Path(sweep_dir)
    jobs = []
    for directory in job_dirs(root):
        record = read_result(directory)
        if record is None:
            record = {"status": "failed", "error": "no result.json: the job was killed or did not finish"}
        jobs.append(Job(str(directory.relative_to(root)), directory, record, read_history(directory / "metrics.csv")))
    return jobs


# --- numbers ----------------------------------------------------------------------------------------
def describe(values: list[float]) -> dict:
    """n, mean, std (sample; 0 for one value), min, max of the finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def strategy_order(names) -> list[str]:
    names = set(names)
    return [s for s in STRATEGY_ORDER if s in names] + sorted(names - set(STRATEGY_ORDER))


def _fraction_key(job: Job) -> float | None:
    fraction = job.get("fraction")
    return float(fraction) if isinstance(fraction, (int, float)) else None


def choose_fraction(jobs: list[Job], requested: float | None = None) -> float | None:
    """The race's fraction: the requested one, else the one with the most jobs with a history (ties: the largest)."""
    with_history = [j for j in jobs if j.completed and j.history and _fraction_key(j) is not None]
    if requested is not None:
        return float(requested)
    counts = Counter(_fraction_key(j) for j in with_history)
    return max(counts, key=lambda f: (counts[f], f)) if counts else None


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
        values = {**job.record, "job": job.name, "status": job.status, "params_trainable": job.trainable_params,
                  "s_per_epoch": job.seconds_per_epoch}
        rows.append([values.get(c) for c in columns])
    return Table(columns, rows)


def unfinished_table(jobs: list[Job]) -> Table:
    """Diverged and interrupted jobs, apart from the results: where they stopped and why."""
    columns = ["job", "status", "strategy", "lr_head", "lr_backbone", "step", "last_finite_loss", "error"]
    rows = []
    for job in jobs:
        if job.status in ("diverged", "interrupted"):
            details = job.get("diverged") or {}
            rows.append([job.name, job.status, job.get("strategy"), job.get("lr_head"), job.get("lr_backbone"),
                         details.get("step"), details.get("last_finite_loss"), job.get("error")])
    return Table(columns, rows)


def race_curves(jobs: list[Job], fraction: float | None) -> dict[str, dict]:
    """Per strategy, per epoch: val/acc (mean, min, max over seeds) and mean elapsed seconds."""
    curves = {}
    chosen = [j for j in jobs if j.completed and j.history and _fraction_key(j) == fraction]
    by_strategy = defaultdict(list)
    for job in chosen:
        by_strategy[job.get("strategy")].append(job)
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
    """Per strategy and fraction: training-set size and test/acc over seeds."""
    groups = defaultdict(list)
    for job in jobs:
        if job.completed and job.test_acc is not None and _fraction_key(job) is not None:
            groups[(job.get("strategy"), _fraction_key(job))].append(job)
    rows = []
    for strategy in strategy_order(s for s, _ in groups):
        for fraction in sorted(f for s, f in groups if s == strategy):
            members = groups[(strategy, fraction)]
            acc = describe([j.test_acc for j in members])
            size = describe([j.get("train_size") for j in members])["mean"]
            rows.append([strategy, fraction, size, acc["n"], acc["mean"], acc["std"], acc["min"], acc["max"]])
    return Table(["strategy", "fraction", "train_size", "runs", "test_acc_mean", "test_acc_std", "test_acc_min",
                  "test_acc_max"], rows)


def gain_table(few_shot: Table) -> Table:
    """Each strategy's mean test/acc minus scratch's at the same fraction."""
    rows = few_shot.as_dicts()
    scratch = {r["fraction"]: r["test_acc_mean"] for r in rows if r["strategy"] == "scratch"}
    out = []
    for r in rows:
        if r["strategy"] != "scratch" and r["fraction"] in scratch:
            out.append([r["strategy"], r["fraction"], r["train_size"], r["test_acc_mean"], scratch[r["fraction"]],
                        r["test_acc_mean"] - scratch[r["fraction"]]])
    return Table(["strategy", "fraction", "train_size", "test_acc_mean", "scratch_test_acc_mean", "gain"], out)


def cost_table(jobs: list[Job]) -> Table:
    groups = defaultdict(list)
    for job in jobs:
        if job.completed and job.test_acc is not None:
            groups[(job.get("strategy"), _fraction_key(job))].append(job)
    rows = []
    for strategy in strategy_order(s for s, _ in groups):
        for fraction in sorted((f for s, f in groups if s == strategy), key=lambda f: (f is None, f)):
            members = groups[(strategy, fraction)]
            rows.append([strategy, fraction, len(members), describe([j.trainable_params for j in members])["mean"],
                         describe([j.seconds_per_epoch for j in members])["mean"],
                         describe([j.test_acc for j in members])["mean"]])
    return Table(["strategy", "fraction", "runs", "params_trainable", "s_per_epoch", "test_acc_mean"], rows)


def depth_table(jobs: list[Job]) -> Table:
    """``partial`` jobs per (fraction, frozen depth): test/acc, trainable parameters, seconds per epoch."""
    groups = defaultdict(list)
    for job in jobs:
        if job.completed and job.get("strategy") == "partial" and job.get("frozen_depth") is not None:
            groups[(_fraction_key(job), job.get("frozen_depth"))].append(job)
    rows = []
    for fraction, depth in sorted(groups, key=lambda k: (k[0] is None, k[0], k[1])):
        members = groups[(fraction, depth)]
        acc = describe([j.test_acc for j in members])
        rows.append([fraction, depth, members[0].get("num_stages"), acc["n"], acc["mean"], acc["std"],
                     describe([j.trainable_params for j in members])["mean"],
                     describe([j.seconds_per_epoch for j in members])["mean"]])
    return Table(["fraction", "frozen_depth", "num_stages", "runs", "test_acc_mean", "test_acc_std", "params_trainable",
                  "s_per_epoch"], rows)


# --- figures -----------------------------------------------------------------------------------------
def _colors(strategies) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {s: palette[(STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else len(STRATEGY_ORDER) + i) % 10]
            for i, s in enumerate(strategies)}


def _figure(ncols: int, width: float = 5.5, height: float = 4.0):
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot, no display

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, axes


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=110)
    return path


def plot_race(curves: dict, fraction: float, path: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    if not curves:
        return None
    figure, (by_epoch, by_time) = _figure(2)
    colors = _colors(curves)
    for strategy, c in curves.items():
        label = f"{strategy} (n={c['runs']})"
        by_epoch.plot(c["epoch"], c["mean"], marker="o", color=colors[strategy], label=label)
        by_epoch.fill_between(c["epoch"], c["min"], c["max"], color=colors[strategy], alpha=0.2)
        if all(t is not None for t in c["elapsed"]):
            by_time.plot(c["elapsed"], c["mean"], marker="o", color=colors[strategy], label=label)
            by_time.fill_between(c["elapsed"], c["min"], c["max"], color=colors[strategy], alpha=0.2)
    by_epoch.set(xlabel="epoch", ylabel="val/acc", title=f"val/acc per epoch (fraction {fraction:g})")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set(xlabel="training wall-clock (s)", ylabel="val/acc", title=f"val/acc per second (fraction {fraction:g})")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(figure, path)


def _plot_per_strategy(table: Table, path: Path, y_key: str, ylabel: str, title: str, errors: bool = False,
                       zero_line: bool = False) -> Path | None:
    """One line per strategy of ``y_key`` against the training-set size (log scale)."""
    rows = table.as_dicts()
    if not rows:
        return None
    figure, (ax,) = _figure(1, 6.5, 4.5)
    strategies = strategy_order(r["strategy"] for r in rows)
    colors = _colors(strategies)
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        x, y = [r["train_size"] for r in mine], [r[y_key] for r in mine]
        if errors:
            err = [[r[y_key] - r["test_acc_min"] for r in mine], [r["test_acc_max"] - r[y_key] for r in mine]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors[strategy], label=strategy)
        else:
            ax.plot(x, y, marker="o", color=colors[strategy], label=strategy)
    if zero_line:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="training images (log scale)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(figure, path)


def plot_few_shot(table: Table, path: Path) -> Path | None:
    return _plot_per_strategy(table, path, "test_acc_mean", "test/acc", "few-shot: test/acc vs training-set size", errors=True)


def plot_gain(table: Table, path: Path) -> Path | None:
    return _plot_per_strategy(table, path, "gain", "test/acc - scratch test/acc", "transfer gain over scratch", zero_line=True)


def plot_cost(jobs: list[Job], path: Path) -> Path | None:
    done = [j for j in jobs if j.completed and j.test_acc is not None]
    if not done:
        return None
    figure, (by_params, by_time) = _figure(2)
    strategies = strategy_order(j.get("strategy") for j in done)
    colors = _colors(strategies)
    for strategy in strategies:
        mine = [j for j in done if j.get("strategy") == strategy]
        with_params = [j for j in mine if j.trainable_params is not None]
        with_time = [j for j in mine if j.seconds_per_epoch is not None]
        by_params.scatter([j.trainable_params for j in with_params], [j.test_acc for j in with_params], color=colors[strategy], label=strategy)
        by_time.scatter([j.seconds_per_epoch for j in with_time], [j.test_acc for j in with_time], color=colors[strategy], label=strategy)
    by_params.set_xscale("log")
    by_params.set(xlabel="trainable parameters", ylabel="test/acc", title="test/acc vs trainable parameters")
    by_time.set(xlabel="seconds per training epoch", ylabel="test/acc", title="test/acc vs seconds per epoch")
    for ax in (by_params, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(figure, path)


def plot_depth(table: Table, path: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    rows = table.as_dicts()
    if len({r["frozen_depth"] for r in rows}) < 2:
        return None
    figure, axes = _figure(3, 4.5, 3.8)
    for fraction in sorted({r["fraction"] for r in rows}, key=lambda f: (f is None, f)):
        mine = [r for r in rows if r["fraction"] == fraction]
        depth = [r["frozen_depth"] for r in mine]
        label = f"fraction {fraction:g}" if fraction is not None else "fraction ?"
        axes[0].errorbar(depth, [r["test_acc_mean"] for r in mine], yerr=[r["test_acc_std"] for r in mine], marker="o", capsize=3, label=label)
        axes[1].plot(depth, [r["params_trainable"] for r in mine], marker="o", label=label)
        axes[2].plot(depth, [r["s_per_epoch"] for r in mine], marker="o", label=label)
    for ax, ylabel in zip(axes, ("test/acc", "trainable parameters", "seconds per epoch")):
        ax.set(xlabel="frozen stages (from the input)", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[1].set_yscale("log")
    figure.suptitle("partial fine-tuning: how deep to freeze")
    return _save(figure, path)


# --- HTML -------------------------------------------------------------------------------------------
def fmt(value, column: str = "") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if "acc" in column or column in ("gain",):
            return f"{value:.4f}"
        if "lr" in column or "weight_decay" in column:
            return f"{value:.3g}"
        if column in ("fraction",):
            return f"{value:g}"
        if column.startswith("params") or column in ("train_size",):
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}" if column.startswith("params") or column == "train_size" else str(value)
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def table_html(table: Table, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{fmt(v, c)}</td>" for c, v in zip(table.columns, row)) + "</tr>" for row in table.rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def image_html(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.empty{color:#888;font-style:italic}
.section{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}img{max-width:100%;border:1px solid #eee}
.failed{color:#b00}"""


@dataclass
class Section:
    key: str
    title: str
    text: str
    table: Table
    figure: Path | None
    empty: str = ""


def build_sections(jobs: list[Job], out: Path, fraction: float | None, figures: bool = True) -> list[Section]:
    race_fraction = choose_fraction(jobs, fraction)
    curves = race_curves(jobs, race_fraction) if race_fraction is not None else {}
    few_shot = few_shot_table(jobs)
    gain = gain_table(few_shot)
    cost = cost_table(jobs)
    depth = depth_table(jobs)

    def figure(plot, *args, name):
        return plot(*args, out / name) if figures else None

    return [
        Section("race", "1. The race", f"Validation accuracy per epoch and per second of training for fraction "
                f"{race_fraction if race_fraction is None else format(race_fraction, 'g')}: mean over seeds, band min-max.",
                race_table(curves), figure(plot_race, curves, race_fraction, name="race.png") if curves else None,
                "" if curves else "No completed job with a metrics.csv history" + (f" at fraction {race_fraction:g}." if race_fraction is not None else ".")),
        Section("few_shot", "2. Few-shot curve", "Test accuracy against the number of training images (log scale); "
                "error bars min-max over seeds.", few_shot, figure(plot_few_shot, few_shot, name="few_shot.png") if few_shot.rows else None,
                "" if few_shot.rows else "No completed job with a test accuracy."),
        Section("gain", "3. Transfer gain", "Each strategy's mean test accuracy minus scratch's at the same fraction.",
                gain, figure(plot_gain, gain, name="transfer_gain.png") if gain.rows else None,
                "" if gain.rows else "No scratch jobs at a fraction another strategy also ran: no gain to compute."),
        Section("cost", "4. Cost", "Trainable parameters (at the end of training) and mean seconds per training epoch "
                "against test accuracy, one point per job.", cost, figure(plot_cost, jobs, name="cost.png") if cost.rows else None,
                "" if cost.rows else "No completed job with a test accuracy."),
        Section("frozen_depth", "5. Frozen depth", "Jobs of strategy partial per number of frozen backbone stages.",
                depth, figure(plot_depth, depth, name="frozen_depth.png") if len({r[1] for r in depth.rows}) >= 2 else None,
                "" if len({r[1] for r in depth.rows}) >= 2 else "Fewer than two frozen depths among the partial jobs "
                "(run experiment=frozen_depth_sweep)."),
    ]


def generate(sweep_dir: str | Path, out: str | Path | None = None, fraction: float | None = None,
             figures: bool = True) -> Path:
    """Write report.html, report.json and the PNG figures; returns the HTML path."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"not a directory: {sweep_dir}")
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(sweep_dir)
    sections = build_sections(jobs, out, fraction, figures)
    overview = jobs_table(jobs)
    counts = Counter(j.status for j in jobs)
    summary_path = sweep_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tlexp report: {html.escape(sweep_dir.name)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>tlexp sweep report</h1><p>{html.escape(str(sweep_dir.resolve()))}: {len(jobs)} jobs, "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "</p>"]
    if summary:
        parts.append("<p>Last sweep invocation: " + ", ".join(f"{k} {v}" for k, v in summary.get("counts", {}).items()) + "</p>")
    if not jobs:
        parts.append("<p class='empty'>No job directories (result.json or .hydra/) found.</p>")
    for section in sections:
        parts.append(f"<h2 id='{section.key}'>{section.title}</h2><p>{section.text}</p>")
        if section.empty:
            parts.append(f"<p class='empty'>{html.escape(section.empty)}</p>")
        if section.table.rows:
            parts.append(f"<div class='section'><div>{table_html(section.table, section.key)}</div>{image_html(section.figure)}</div>")
    unfinished = unfinished_table(jobs)
    if unfinished.rows:
        parts.append("<h2 id='unfinished'>Diverged and interrupted jobs</h2><p>Not in the figures above: a diverged job's "
                     "loss became non-finite; an interrupted one resumes when the sweep is run again.</p>"
                     + table_html(unfinished, "unfinished"))
    parts.append("<h2 id='jobs'>All jobs</h2>" + table_html(overview, "jobs") + "</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(parts))
    tables = {s.key: s.table.as_dicts() for s in sections} | {"jobs": overview.as_dicts(), "unfinished": unfinished.as_dicts()}
    figures_written = {s.key: s.figure.name for s in sections if s.figure is not None}
    (out / "report.json").write_text(json.dumps({"sweep_dir": str(sweep_dir), "tables": tables, "figures": figures_written},
                                                indent=1, default=str))
    return html_path


def report_figures(out: str | Path) -> list[Path]:
    """The PNG figures a report in ``out`` wrote (from report.json)."""
    path = Path(out) / "report.json"
    if not path.is_file():
        return []
    return [Path(out) / name for name in json.loads(path.read_text()).get("figures", {}).values() if (Path(out) / name).is_file()]


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


if __name__ == "__main__":
    sys.exit(main())
