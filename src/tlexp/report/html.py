"""The report page: ``report.html`` (the interactive race of ``dashboard`` on top, then tables beside
their figures, figures embedded as base64 so it opens offline), the PNG figures and ``report.json``
(the same tables, for scripts)."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tlexp.report.dashboard import dashboard_html
from tlexp.report.figures import plot_cost, plot_depth, plot_few_shot, plot_gain, plot_movement, plot_race, plot_search
from tlexp.report.series import choose_fraction, compared_jobs
from tlexp.report.tables import (Table, verdict_table, compares_depths, cost_table, dataset_table, depth_table, few_shot_table, gain_table,
                                 jobs_table, movement_table, race_curves, race_table, unfinished_table, verdict_display)
from tlexp.results import RACE_FILE, SUMMARY_FILE, Job, load_jobs
from tlexp.shared_files import write_atomic

REPORT_JSON = "report.json"


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


def table_html(table: Table, key: str) -> str:
    """The table of section ``key``, as ``<table id="<key>-table">`` (the section's heading holds ``id="<key>"``: the link
    target; an id names one element)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{fmt(v, c)}</td>" for c, v in zip(table.columns, row)) + "</tr>" for row in table.rows)
    return f'<table id="{key}-table"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def image_html(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.empty{color:#888;font-style:italic}
.section{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}img{max-width:100%;border:1px solid #eee}
.failed{color:#b00}#verdict-table td{white-space:nowrap}
#verdict-table td:last-child{text-align:left;max-width:32em;white-space:normal}"""


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
    curves = race_curves(compared_jobs(jobs), race_fraction) if race_fraction is not None else {}
    few_shot = few_shot_table(jobs)
    gain = gain_table(few_shot)
    cost = cost_table(jobs)
    depth = depth_table(jobs)
    depths = compares_depths(depth)
    movement = movement_table(jobs)
    datasets = dataset_table(jobs)

    def figure(plot, *args, name):
        return plot(*args, out / name) if figures else None

    return [
        Section("race", "1. The race", f"Validation accuracy per epoch and per second of training for fraction "
                f"{race_fraction if race_fraction is None else format(race_fraction, 'g')}: mean over seeds, band min-max.",
                race_table(curves), figure(plot_race, curves, race_fraction, name="race.png") if curves else None,
                "" if curves else "No completed job with a metrics.csv history"
                + (f" at fraction {race_fraction:g}." if race_fraction is not None else ".")),
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
                depth, figure(plot_depth, depth, name="frozen_depth.png") if depths else None,
                "" if depths else "Fewer than two frozen depths among the partial jobs (run experiment=frozen_depth_sweep)."),
        Section("movement", "6. Which layers moved", "Per backbone stage at the end of training, mean over seeds: the "
                "linear CKA between the stage's outputs at the start (the pretrained weights) and at the end on a fixed "
                "batch of validation images, and the weights' relative distance from the start.", movement,
                figure(plot_movement, movement, name="layer_movement.png") if movement.rows else None,
                "" if movement.rows else "No completed job logged movement/* (runs on cached features log none)."),
        Section("datasets", "7. Datasets", "Per dataset and fraction: the best series by mean test accuracy, scratch's, "
                "and the transfer gain (experiment=many_datasets compares datasets).", datasets, None,
                "" if datasets.rows else "No completed job with a test accuracy."),
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
    verdict, search_figure = verdict_table(sweep_dir), None
    if verdict.rows:
        parts.append("<h2 id='verdict'>Race verdict</h2><p>experiment=race (race.json): each strategy's best settings by "
                     "validation, tested on several seeds: test/acc mean and 95 % t interval, the paired difference to "
                     "the winner on the same seeds with its 95 % interval (tied: it covers 0), and what the search spent; a "
                     "race with data.target_domain adds test/target_acc the same way (reported, not ranked by). "
                     "Below it, each strategy's search: every trial's val/acc per epoch over the search's time, pruned "
                     "ones cut short (grey, x), the best one bold.</p>" + table_html(verdict_display(verdict), "verdict"))
        search_figure = plot_search(json.loads((sweep_dir / RACE_FILE).read_text())["cells"], out / "race_search.png") if figures else None
        parts.append(image_html(search_figure))
    parts.append("<h2 id='dashboard'>Interactive race</h2>" + dashboard_html(compared_jobs(jobs), fraction))
    for section in sections:
        parts.append(f"<h2 id='{section.key}'>{section.title}</h2><p>{section.text}</p>")
        if section.empty:
            parts.append(f"<p class='empty'>{html.escape(section.empty)}</p>")
        if section.table.rows:
            parts.append(f"<div class='section'><div>{table_html(section.table, section.key)}</div>{image_html(section.figure)}</div>")
    unfinished = unfinished_table(jobs)
    if unfinished.rows:
        parts.append("<h2 id='unfinished'>Diverged, interrupted and killed jobs</h2><p>Not in the figures above: a diverged "
                     "job's loss became non-finite; an interrupted one (a signal) and a killed one (from outside: out of "
                     "memory, a time limit, <code>kill -9</code>) resume from their last checkpoint when the sweep is run "
                     "again.</p>"
                     + table_html(unfinished, "unfinished"))
    parts.append("<h2 id='jobs'>All jobs</h2>" + table_html(overview, "jobs") + "</body></html>")
    html_path = out / "report.html"
    write_atomic(html_path, "\n".join(parts))  # a worker may read it while another writes
    tables = {s.key: s.table.as_dicts() for s in sections} | {"jobs": overview.as_dicts(), "unfinished": unfinished.as_dicts(),
                                                             "verdict": verdict.as_dicts()}
    figures_written = {s.key: s.figure.name for s in sections if s.figure is not None}
    if search_figure is not None:
        figures_written["race_search"] = search_figure.name
    write_atomic(out / REPORT_JSON, json.dumps({"sweep_dir": str(sweep_dir), "tables": tables, "figures": figures_written},
                                           indent=1, default=str))
    return html_path


def report_figures(out: str | Path) -> list[Path]:
    """The PNG figures a report in ``out`` wrote (from report.json)."""
    path = Path(out) / REPORT_JSON
    if not path.is_file():
        return []
    return [Path(out) / name for name in json.loads(path.read_text()).get("figures", {}).values() if (Path(out) / name).is_file()]
