"""The interactive part of ``report.html``: the race (val/acc per epoch and per second of training) with
a data-fraction and a frozen-depth slider, and per shown series a stage strip, a trainable-parameter pill
and wall-clock counters; then the few-shot, transfer-gain and cost views. Plotly, with its JS embedded
once, so the page still opens offline; the data rides along as JSON and a few lines of plain JS switch
the curves. The static PNGs of the sections below stay, for papers.

The sliders' rule: the fraction slider shows the series at that fraction; the depth slider filters only
the series of ``partial`` (the one strategy with a frozen-depth setting), the other strategies' depth is
fixed by the strategy (scratch and full 0, frozen all, gradual all at first), so they always show.
"""

from __future__ import annotations

import json
from collections import defaultdict

from tlexp.report.figures import _colors
from tlexp.report.series import choose_fraction, describe, fraction_of, series_names, strategy_order
from tlexp.report.tables import cost_table, few_shot_table, gain_table, race_curves
from tlexp.results import Job

DEPTH_STRATEGY = "partial"
CONFIG = {"displaylogo": False, "responsive": True}


def trains_from(record) -> list[int | None]:
    """Per stage (stem ... head), the first epoch it trains (None: never): ``unfreeze_epochs``, else
    the ``frozen_depth`` first stages never train."""
    stages = stage_names(record)
    if record.unfreeze_epochs:
        return [record.unfreeze_epochs.get(stage) for stage in stages]
    depth = record.frozen_depth or 0
    return [None if i < depth and stage != "head" else 0 for i, stage in enumerate(stages)]


def stage_names(record) -> list[str]:
    if record.stages:
        return list(record.stages)
    return [f"stage {i}" for i in range(record.num_stages or 0)] + ["head"]


def race_groups(jobs: list[Job]) -> list[dict]:
    """One entry per series and fraction (completed jobs with a history): the mean curves over seeds and
    what the strip, pill and counters show."""
    done = [j for j in jobs if j.completed and j.history and fraction_of(j) is not None]
    series, members = series_names(done), defaultdict(list)
    for job in done:
        members[(series[job.name], fraction_of(job))].append(job)
    groups = []
    for name in strategy_order({s for s, _ in members}):
        for fraction in sorted(f for s, f in members if s == name):
            group = members[(name, fraction)]
            curve = next(iter(race_curves(group, fraction).values()))
            record = group[0].record

            def mean(field):
                return describe([getattr(j.record, field) for j in group])["mean"]

            groups.append({"series": name, "strategy": record.strategy, "fraction": fraction, "depth": record.frozen_depth,
                           "runs": len(group), "epoch": curve["epoch"], "elapsed": curve["elapsed"],
                           "mean": curve["mean"], "min": curve["min"], "max": curve["max"],
                           "stages": stage_names(record), "trains_from": trains_from(record),
                           "params": [mean("params_trainable"), mean("params_trainable_end")],
                           "fit_s": mean("fit_seconds"), "wall_s": mean("wall_seconds")})
    return groups


def initial(values: list, preferred) -> int:
    return values.index(preferred) if preferred in values else 0


def _figure_html(figure, div_id: str, plotlyjs: bool) -> str:
    import plotly.io as pio

    return pio.to_html(figure, include_plotlyjs=plotlyjs, full_html=False, div_id=div_id, config=CONFIG)


def _layout(figure, title: str, x: str, y: str, **axes):
    figure.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white", height=380,
                         margin=dict(l=55, r=10, t=40, b=45), legend=dict(font=dict(size=10)), **axes)
    return figure


def race_figures(groups: list[dict], colors: dict[str, str]) -> list:
    """val/acc per epoch and per elapsed second, one trace per group in ``groups``' order (the JS shows the
    matching ones), min-max over seeds as error bars."""
    import plotly.graph_objects as go

    figures = []
    for x, label, axis in (("epoch", "epoch", "epoch"), ("elapsed", "second of training", "seconds of training")):
        figure = go.Figure()
        for g in groups:
            plus = [hi - m if None not in (hi, m) else None for hi, m in zip(g["max"], g["mean"])]
            minus = [m - lo if None not in (lo, m) else None for lo, m in zip(g["min"], g["mean"])]
            figure.add_trace(go.Scatter(
                x=g[x], y=g["mean"], name=g["series"], legendgroup=g["series"], mode="lines+markers",
                line=dict(color=colors[g["series"]]), meta=g["fraction"],
                error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1, width=3),
                hovertemplate=f"%{{fullData.name}}<br>{label} %{{x:.3g}}<br>val/acc %{{y:.4f}}<extra></extra>"))
        figures.append(_layout(figure, f"val/acc per {label}", axis, "val/acc"))
    figures[0].update_layout(showlegend=False, xaxis_dtick=1)  # the legend: beside the second, and on the cards
    if len({g["series"] for g in groups}) > LEGEND_SERIES:  # a race's trials: the cards name them, the plot keeps its width
        figures[1].update_layout(showlegend=False)
    return figures


LEGEND_SERIES = 12
"""Beyond this many series the second plot shows no legend (it would take the plot's width); the cards name them."""


def result_figures(few_shot: list[dict], gain: list[dict], cost: list[dict], colors: dict[str, str]) -> list:
    """The few-shot curve, the transfer gain and the cost, from the rows of the report's own tables."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figures = []
    if few_shot:
        figure = go.Figure()
        for name in strategy_order({r["strategy"] for r in few_shot}):
            rows = [r for r in few_shot if r["strategy"] == name]
            figure.add_trace(go.Scatter(
                x=[r["train_size"] for r in rows], y=[r["test_acc_mean"] for r in rows], name=name, mode="lines+markers",
                line=dict(color=colors.get(name)), error_y=dict(
                    type="data", symmetric=False, array=[r["test_acc_max"] - r["test_acc_mean"] for r in rows],
                    arrayminus=[r["test_acc_mean"] - r["test_acc_min"] for r in rows], thickness=1)))
        figures.append(_layout(figure, "Few-shot curve", "training images (log)", "test/acc", xaxis_type="log"))
    if gain:
        figure = go.Figure()
        for name in strategy_order({r["strategy"] for r in gain}):
            rows = [r for r in gain if r["strategy"] == name]
            figure.add_trace(go.Bar(x=[f"{r['fraction']:g}" for r in rows], y=[r["gain"] for r in rows], name=name,
                                    marker_color=colors.get(name)))
        figures.append(_layout(figure, "Transfer gain over scratch", "data fraction", "test/acc gain", xaxis_type="category"))
    if cost:
        figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04)
        for name in strategy_order({r["strategy"] for r in cost}):
            rows = [r for r in cost if r["strategy"] == name]
            for col, x in ((1, "params_trainable"), (2, "s_per_epoch")):
                figure.add_trace(go.Scatter(
                    x=[r[x] for r in rows], y=[r["test_acc_mean"] for r in rows], name=name, legendgroup=name,
                    showlegend=col == 1, mode="markers", marker=dict(color=colors.get(name), size=9),
                    text=[f"fraction {r['fraction']}" for r in rows]), row=1, col=col)
        _layout(figure, "Cost", "trainable parameters (log)", "test/acc", xaxis_type="log")
        figure.update_xaxes(title_text="seconds per epoch", row=1, col=2)
        figures.append(figure)
    return figures


STYLE = """.dash-controls{display:flex;gap:2em;flex-wrap:wrap;align-items:center;margin:0.5em 0}
.dash-controls label{font-size:13px}.dash-controls input{vertical-align:middle;width:12em}
.dash-grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:0.5em}
@media (max-width:1000px){.dash-grid{grid-template-columns:minmax(0,1fr)}}
.dash-cards{display:flex;flex-wrap:wrap;gap:0.6em;margin:0.5em 0}
.dash-card{border:1px solid #ddd;border-radius:6px;padding:6px 8px;font-size:12px;min-width:320px}
.dash-name{font-weight:600;margin-bottom:4px}.dash-swatch{display:inline-block;width:10px;height:10px;margin-right:5px}
.dash-pill{display:inline-block;background:#eef;border-radius:10px;padding:1px 8px;margin-right:6px}
.dash-clock{font-variant-numeric:tabular-nums;color:#333}.dash-strip{display:flex;gap:2px;margin-top:5px}
.dash-stage{flex:1;text-align:center;font-size:10px;padding:3px 2px;border-radius:3px;color:#fff;white-space:nowrap}
.dash-stage.trainable{background:#2a9d4b}.dash-stage.frozen{background:#8a94a6}"""

SCRIPT = """(function () {
  const D = JSON.parse(document.getElementById("dash-data").textContent);
  const $ = id => document.getElementById(id);
  const compact = new Intl.NumberFormat("en", {notation: "compact", maximumFractionDigits: 2});
  const el = (tag, cls, text) => { const e = document.createElement(tag); e.className = cls; e.textContent = text || ""; return e; };
  const num = v => v === null ? "-" : compact.format(v);
  const secs = v => v === null || v === undefined ? "- s" : v.toFixed(1) + " s";
  function shown(g, fraction, depth) {  // the rule in the module docstring
    return g.fraction === fraction && (g.strategy !== D.depth_strategy || depth === null || g.depth === depth);
  }
  function card(g, epoch) {
    const c = el("div", "dash-card"), name = el("div", "dash-name", g.series), e = Math.min(epoch, g.epoch.length - 1);
    const sw = el("span", "dash-swatch"); sw.style.background = D.colors[g.series]; name.prepend(sw);
    c.dataset.series = g.series;
    const grows = g.params[1] !== null && g.params[1] !== g.params[0];
    c.append(name, el("span", "dash-pill", "trainable " + num(g.params[0]) + (grows ? " \\u2192 " + num(g.params[1]) : "")),
      el("span", "dash-clock", "epoch " + g.epoch[e] + ": " + secs(g.elapsed[e]) + ", val/acc " + (g.mean[e] ?? NaN).toFixed(3) +
         " | fit " + secs(g.fit_s) + ", job " + secs(g.wall_s) + " (" + g.runs + " runs)"));
    const strip = el("div", "dash-strip");
    g.stages.forEach((stage, i) => {
      const from = g.trains_from[i], trains = from !== null && from <= epoch;
      const box = el("span", "dash-stage " + (trains ? "trainable" : "frozen"), stage);
      box.title = stage + (from === null ? ": frozen throughout" : ": trains from epoch " + (from + 1));
      strip.append(box);
    });
    c.append(strip);
    return c;
  }
  function update() {
    const fraction = D.fractions[+$("dash-fraction").value], epoch = +$("dash-epoch").value;
    const depth = D.depths.length ? D.depths[+$("dash-depth").value] : null;
    $("dash-fraction-value").textContent = fraction;
    $("dash-depth-value").textContent = depth === null ? "(no " + D.depth_strategy + " jobs)" : depth;
    $("dash-epoch-value").textContent = epoch + 1;
    const visible = D.groups.map(g => shown(g, fraction, depth));
    ["dash-race-epoch", "dash-race-time"].forEach(id => Plotly.restyle(id, {visible: visible}));
    $("dash-cards").replaceChildren(...D.groups.filter((g, i) => visible[i]).map(g => card(g, epoch)));
  }
  document.querySelectorAll(".dash-controls input").forEach(input => input.addEventListener("input", update));
  update();
})();"""


def _slider(key: str, label: str, count: int, value: int) -> str:
    disabled = " disabled" if count < 2 else ""
    return (f"<label>{label} <input type='range' id='dash-{key}' min='0' max='{max(count - 1, 0)}' value='{value}' "
            f"step='1'{disabled}> <b id='dash-{key}-value'></b></label>")


def dashboard_html(jobs: list[Job], fraction: float | None = None) -> str:
    """The interactive section (plotly's JS included once); a line saying why not where no job has a history."""
    groups = race_groups(jobs)
    if not groups:
        return "<p class='dash-none'>No completed job with a metrics.csv history: no interactive race.</p>"
    few_shot = few_shot_table(jobs)
    tables = [few_shot.as_dicts(), gain_table(few_shot).as_dicts(), cost_table(jobs).as_dicts()]
    names = {g["series"] for g in groups} | {row["strategy"] for rows in tables for row in rows}
    from matplotlib.colors import to_hex

    colors = {name: to_hex(color) for name, color in _colors(names).items()}
    fractions = sorted({g["fraction"] for g in groups})
    depths = sorted({g["depth"] for g in groups if g["strategy"] == DEPTH_STRATEGY and g["depth"] is not None})
    start = fractions[initial(fractions, choose_fraction(jobs, fraction))]  # the static race's fraction
    at_start = [g["depth"] for g in groups if g["strategy"] == DEPTH_STRATEGY and g["fraction"] == start]
    data = {"groups": groups, "fractions": fractions, "depths": depths, "colors": colors, "depth_strategy": DEPTH_STRATEGY}
    epochs = max(len(g["epoch"]) for g in groups)
    figures = [_figure_html(f, i, plotlyjs=not n) for n, (f, i) in
               enumerate(zip(race_figures(groups, colors), ("dash-race-epoch", "dash-race-time")))]
    results = [_figure_html(f, f"dash-result-{n}", plotlyjs=False) for n, f in enumerate(result_figures(*tables, colors))]
    return "\n".join([
        f"<style>{STYLE}</style>",
        "<p>Move the sliders: the curves switch to the series whose jobs ran that data fraction (and, for "
        f"<code>{DEPTH_STRATEGY}</code>, that frozen depth; other strategies fix their own depth). Per shown series: "
        "the stages (stem ... head) trainable or frozen at the chosen epoch, the trainable parameters (start "
        "&rarr; end), and the wall-clock at that epoch and of the whole fit (means over seeds).</p>",
        "<div class='dash-controls'>" + _slider("fraction", "data fraction", len(fractions), fractions.index(start))
        + _slider("depth", f"frozen depth ({DEPTH_STRATEGY})", len(depths),
                  initial(depths, at_start[0] if at_start else None))
        + _slider("epoch", "epoch", epochs, 0) + "</div>",
        f"<div class='dash-grid'>{''.join(figures)}</div>",
        "<div class='dash-cards' id='dash-cards'></div>",
        f"<div class='dash-grid'>{''.join(results)}</div>",
        "<script type='application/json' id='dash-data'>" + json.dumps(data).replace("</", "<\\/") + "</script>",
        f"<script>{SCRIPT}</script>",
    ])
