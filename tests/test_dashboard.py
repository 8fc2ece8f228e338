"""The interactive race of report.html (src/tlexp/report/dashboard.py) on a hand-made sweep: the page is
self-contained, and in headless Chromium (the Debian package, driven by Playwright) it loads with no
console error and no network request, each slider switches the curves to exactly the matching series,
and the stage strip shows the chosen job's frozen stages. No training here."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from test_report import NUM_STAGES, write_job

from tlexp.report import generate
from tlexp.report.dashboard import race_groups, trains_from
from tlexp.results import load_jobs

CHROMIUM = Path("/usr/bin/chromium")
STAGES = ["stem", *(f"blocks.{i}" for i in range(NUM_STAGES - 1)), "head"]
EPOCHS = 3
# (strategy, frozen depth or None: the strategy's own) -> fractions it ran; partial at depth 5 only at 0.1
RUNS = {("scratch", None): (0.1, 0.5), ("frozen", None): (0.1,), ("full", None): (0.1, 0.5), ("gradual", None): (0.1,),
        ("partial", 2): (0.1, 0.5), ("partial", 5): (0.1,)}
OWN_DEPTH = {"scratch": 0, "frozen": NUM_STAGES, "full": 0, "gradual": NUM_STAGES}


def series(strategy: str, depth: int | None) -> str:
    return f"partial (frozen_depth={depth})" if strategy == "partial" else strategy


def unfreeze_epochs(strategy: str, depth: int) -> dict:
    if strategy == "gradual":  # the head at epoch 0, then one more stage from the top each epoch
        return {stage: len(STAGES) - 1 - i for i, stage in enumerate(STAGES)}
    return {stage: None if i < depth and stage != "head" else 0 for i, stage in enumerate(STAGES)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict]:
    """The sweep directory and, per (series, fraction), the val/acc curves its seeds wrote."""
    root, curves = tmp_path_factory.mktemp("dash") / "sweep", {}
    for n, ((strategy, depth), fractions) in enumerate(RUNS.items()):
        frozen = OWN_DEPTH.get(strategy, depth)
        settings = (f"strategy.frozen_depth={depth}",) if depth is not None else ()
        for fraction in fractions:
            for seed in (0, 1):
                accs = [0.3 + 0.05 * n + fraction / 4 + 0.1 * epoch + 0.02 * seed for epoch in range(EPOCHS)]
                job = write_job(root, f"data.fraction={fraction},seed={seed},strategy={strategy}" + "".join(settings),
                                strategy=strategy, fraction=fraction, seed=seed, test_acc=accs[-1], val_accs=accs,
                                frozen_depth=frozen, settings=settings, params=1000 * (n + 1))
                record = json.loads((job / "result.json").read_text())
                record.update(stages=STAGES, unfreeze_epochs=unfreeze_epochs(strategy, frozen))
                (job / "result.json").write_text(json.dumps(record))
                curves.setdefault((series(strategy, depth), fraction), []).append(accs)
    return root, curves


@pytest.fixture(scope="module")
def page(sweep) -> Path:
    return generate(sweep[0], figures=False)


def expected(fraction: float, depth: int) -> set[str]:
    """The rule: every series at that fraction, but of partial only the one at that frozen depth."""
    return {series(s, d) for (s, d), fractions in RUNS.items() if fraction in fractions and d in (None, depth)}


def test_groups_and_stage_strip_data(sweep):
    groups = {(g["series"], g["fraction"]): g for g in race_groups(load_jobs(sweep[0]))}
    assert set(groups) == set(sweep[1])
    partial = groups[("partial (frozen_depth=5)", 0.1)]
    assert partial["depth"] == 5 and partial["runs"] == 2 and partial["stages"] == STAGES
    assert partial["trains_from"] == [None] * 5 + [0] * 4
    assert groups[("gradual", 0.1)]["trains_from"] == [8, 7, 6, 5, 4, 3, 2, 1, 0]
    job = next(j for j in load_jobs(sweep[0]) if j.record.strategy == "partial")
    job.record.unfreeze_epochs, job.record.stages = None, None  # an older record: the strip from frozen_depth alone
    assert trains_from(job.record).count(None) == job.record.frozen_depth and len(trains_from(job.record)) == NUM_STAGES + 1


def test_page_is_self_contained(page, tmp_path):
    text = page.read_text()
    sources = re.findall(r"<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*['\"]([^'\"]*)", text, re.I)
    assert not [s for s in sources if not s.startswith("data:")]  # nothing fetched, from the web or disk
    assert text.count("window.PlotlyConfig") == 1 and "Interactive race" in text  # plotly's JS once
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no interactive race" in generate(empty, figures=False).read_text()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: install the Debian package chromium (make browser)")
def test_sliders_and_stage_strip_in_chromium(page, sweep):
    from playwright.sync_api import sync_playwright

    curves = sweep[1]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        tab = browser.new_page()
        errors, requests = [], []
        tab.on("console", lambda message: message.type == "error" and errors.append(message.text))
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("request", lambda request: requests.append(request.url))
        tab.goto(page.as_uri())
        tab.wait_for_selector(".dash-card")

        def move(slider: str, key: str):
            tab.focus(f"#dash-{slider}")
            tab.keyboard.press(key)

        def check(fraction: float, depth: int):
            for plot in ("dash-race-epoch", "dash-race-time"):
                shown = tab.evaluate(f"document.getElementById('{plot}').data.filter(t => t.visible !== false)"
                                     ".map(t => [t.name, t.meta, t.y])")
                assert {name for name, _, _ in shown} == expected(fraction, depth) and len(shown) == len(expected(fraction, depth))
                for name, meta, y in shown:
                    assert meta == fraction
                    assert y == pytest.approx([statistics.fmean(e) for e in zip(*curves[(name, fraction)])])
            assert set(tab.eval_on_selector_all(".dash-card", "cs => cs.map(c => c.dataset.series)")) == expected(fraction, depth)
            assert tab.inner_text("#dash-fraction-value") == f"{fraction:g}" and tab.inner_text("#dash-depth-value") == str(depth)

        def frozen_boxes(name: str) -> int:
            return tab.locator(f".dash-card[data-series='{name}'] .dash-stage.frozen").count()

        check(0.1, 2)  # the most common fraction, partial's first depth there
        assert frozen_boxes("partial (frozen_depth=2)") == 2 and frozen_boxes("frozen") == NUM_STAGES
        assert frozen_boxes("full") == 0 and tab.locator(".dash-card[data-series='full'] .dash-stage").count() == len(STAGES)
        # write_job: params 1000 per place in RUNS (frozen: 2nd), 2 s per epoch, fit 2 s x 3 epochs + 1 s, job 2 s more
        assert tab.inner_text(".dash-card[data-series='frozen'] .dash-pill") == "trainable 2K"
        clock = "epoch 1: 2.0 s, val/acc {:.3f} | fit 7.0 s, job 9.0 s (2 runs)"
        assert tab.inner_text(".dash-card[data-series='frozen'] .dash-clock") == clock.format(curves[("frozen", 0.1)][0][0] + 0.01)
        move("depth", "ArrowRight")
        check(0.1, 5)
        assert frozen_boxes("partial (frozen_depth=5)") == 5
        move("fraction", "ArrowRight")
        check(0.5, 5)  # no partial job at depth 5 there
        move("depth", "ArrowLeft")
        check(0.5, 2)
        assert frozen_boxes("partial (frozen_depth=2)") == 2
        move("fraction", "ArrowLeft")
        assert frozen_boxes("gradual") == NUM_STAGES  # epoch 1: only the head trains
        move("epoch", "ArrowRight")
        assert frozen_boxes("gradual") == NUM_STAGES - 1 and frozen_boxes("partial (frozen_depth=2)") == 2
        browser.close()
    assert errors == [] and requests == [page.as_uri()]


def test_many_series_keep_the_plot_wide(sweep):
    """A race's dozens of trials: no legend beside the second plot (the cards name the series); a few series keep it."""
    from tlexp.report.dashboard import LEGEND_SERIES, race_figures

    groups = race_groups(load_jobs(sweep[0]))
    colors = {g["series"]: "#000" for g in groups}
    assert len({g["series"] for g in groups}) <= LEGEND_SERIES
    assert race_figures(groups, colors)[1].layout.showlegend is not False
    many = [dict(g, series=f"trial {i}") for i, g in enumerate(groups * (LEGEND_SERIES // len(groups) + 1))]
    assert race_figures(many, {g["series"]: "#000" for g in many})[1].layout.showlegend is False
