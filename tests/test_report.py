"""The sweep report (src/tlexp/report/) on hand-made sweep directories: its tables hold the numbers
of the jobs' result.json and metrics.csv, its figures exist, sections without data say so, and the
console script and scripts/report.py both write it. No training here (the real sweep's report is
checked in test_sweep.py)."""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tlexp.report import describe, generate
from tlexp.results import load_jobs, read_history

REPO = Path(__file__).resolve().parent.parent
NUM_STAGES = 8
FIELDS = ["epoch", "step", "train/loss_step", "val/acc", "val/loss", "val/acc_best", "train/acc", "train/loss",
          "time/epoch_s", "time/elapsed_s", "lr/head", "test/acc", "test/loss"]


def write_job(sweep: Path, name: str, *, strategy: str, fraction: float, seed: int, test_acc: float,
              val_accs: list[float], epoch_s: float = 2.0, frozen_depth: int = 0, params: int = 1000,
              train_size: int | None = None, status: str = "completed", settings: tuple[str, ...] = (), dataset: str | None = None) -> Path:
    """A job directory as train.py leaves it: result.json and Lightning's metrics.csv (rows split like Lightning's)."""
    job = sweep / name
    job.mkdir(parents=True)
    record = {"status": status, "overrides": [f"strategy={strategy}", f"data.fraction={fraction}", f"seed={seed}", *settings],
              "strategy": strategy, "fraction": fraction, "seed": seed, "lr_head": 1e-3, "lr_backbone": 1e-4,
              "weight_decay": 0.01, "max_epochs": len(val_accs), "group": sweep.name, "dataset": dataset}
    if status != "completed":
        record["error"] = "config error: data.fraction=2 is not accepted"
    else:
        record.update(params_total=5000, params_trainable=params, params_trainable_end=params, frozen_depth=frozen_depth,
                      num_stages=NUM_STAGES, train_size=train_size or int(1000 * fraction), val_acc_best=max(val_accs),
                      val_acc_final=val_accs[-1], test_acc=test_acc, fit_seconds=epoch_s * len(val_accs) + 1,
                      wall_seconds=epoch_s * len(val_accs) + 3)
        with (job / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            step = 0
            for epoch, acc in enumerate(val_accs):
                step += 5
                writer.writerow({"epoch": epoch, "step": step - 3, "train/loss_step": 1.0, "lr/head": 1e-3})
                writer.writerow({"epoch": epoch, "step": step, "val/acc": acc, "val/loss": 1 - acc, "val/acc_best": acc})
                writer.writerow({"epoch": epoch, "step": step, "train/acc": acc, "train/loss": 1 - acc,
                                 "time/epoch_s": epoch_s, "time/elapsed_s": epoch_s * (epoch + 1)})
            writer.writerow({"epoch": len(val_accs), "step": step + 1, "test/acc": test_acc, "test/loss": 1 - test_acc})
    (job / "result.json").write_text(json.dumps(record))
    return job


ACC = {  # (strategy, fraction) -> test/acc for seeds 0 and 1
    ("scratch", 0.1): (0.30, 0.40), ("scratch", 1.0): (0.60, 0.70),
    ("frozen", 0.1): (0.70, 0.72), ("frozen", 1.0): (0.80, 0.82),
    ("full", 0.1): (0.75, 0.85), ("full", 1.0): (0.90, 0.92),
}
EPOCH_S = {"scratch": 3.0, "frozen": 1.0, "full": 3.0, "partial": 2.0}
PARAMS = {"scratch": 4000, "frozen": 100, "full": 4000}


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "my_sweep"
    for (strategy, fraction), accs in ACC.items():
        for seed, acc in enumerate(accs):
            write_job(root, f"data.fraction={fraction},seed={seed},strategy={strategy}", strategy=strategy, fraction=fraction,
                      seed=seed, test_acc=acc, val_accs=[acc - 0.1 - 0.02 * seed, acc - 0.02 * seed], epoch_s=EPOCH_S[strategy] + seed,
                      params=PARAMS[strategy])
    for depth, acc in ((0, 0.9), (4, 0.85), (8, 0.7)):
        write_job(root, f"data.fraction=0.1,strategy.frozen_depth={depth}", strategy="partial", fraction=0.1, seed=0,
                  test_acc=acc, val_accs=[acc], frozen_depth=depth, params=4000 - 400 * depth, epoch_s=3.0 - 0.25 * depth)
    write_job(root, "data.fraction=2,strategy=full", strategy="full", fraction=2, seed=0, test_acc=0, val_accs=[0], status="failed")
    (root / "killed_job" / ".hydra").mkdir(parents=True)
    (root / "killed_job" / ".hydra" / "config.yaml").write_text("{}")
    return root


def tables(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())["tables"]


def test_history_merges_lightning_rows(sweep):
    history = read_history(sweep / "data.fraction=0.1,seed=1,strategy=full" / "metrics.csv")
    assert [row["epoch"] for row in history] == [0, 1]  # the test row adds no epoch
    assert history[1]["val/acc"] == pytest.approx(0.85 - 0.02) and history[1]["time/elapsed_s"] == pytest.approx(8.0)
    assert read_history(sweep / "missing.csv") == []


def test_jobs_include_failed_and_killed(sweep):
    jobs = {job.name: job for job in load_jobs(sweep)}
    assert len(jobs) == 12 + 3 + 2
    assert jobs["data.fraction=2,strategy=full"].status == "failed"
    assert jobs["killed_job"].status == "failed" and "no result.json" in jobs["killed_job"].record.error


def test_few_shot_and_gain_tables(sweep):
    generate(sweep, figures=False)  # tables only: the figures have tests of their own
    few_shot = {(r["strategy"], r["fraction"]): r for r in tables(sweep)["few_shot"]}
    for key, accs in ACC.items():
        row = few_shot[key]
        assert row["runs"] == 2 and row["test_acc_mean"] == pytest.approx(sum(accs) / 2)
        assert row["test_acc_min"] == min(accs) and row["test_acc_max"] == max(accs)
        assert row["train_size"] == int(1000 * key[1])
    gain = {(r["strategy"], r["fraction"]): r["gain"] for r in tables(sweep)["gain"]}
    for (strategy, fraction), accs in ACC.items():
        if strategy != "scratch":
            assert gain[(strategy, fraction)] == pytest.approx(sum(accs) / 2 - sum(ACC[("scratch", fraction)]) / 2)
    assert ("partial", 0.1) in gain and ("partial", 1.0) not in gain  # no partial at 1.0
    page = html.unescape((sweep / "report.html").read_text())
    assert f"<td>{0.80 - 0.35:.4f}</td>" in page  # frozen's gain at 0.1, as the HTML shows it


def test_race_uses_the_most_common_fraction_and_bands_over_seeds(sweep):
    generate(sweep, figures=False)
    race = tables(sweep)["race"]
    assert {r["strategy"] for r in race} == {"scratch", "frozen", "full", "partial"}  # fraction 0.1: 13 jobs vs 6
    full = [r for r in race if r["strategy"] == "full"]
    assert [r["epoch"] for r in full] == [1, 2]
    accs = [0.75 - 0.0, 0.85 - 0.02]  # last epoch's val/acc of seeds 0, 1
    assert full[1]["val_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert full[1]["val_acc_min"] == pytest.approx(min(accs)) and full[1]["val_acc_max"] == pytest.approx(max(accs))
    assert full[1]["elapsed_s"] == pytest.approx((3.0 * 2 + 4.0 * 2) / 2)
    generate(sweep, fraction=1.0, figures=False)
    assert {r["strategy"] for r in tables(sweep)["race"]} == {"scratch", "frozen", "full"}


def test_cost_and_frozen_depth_tables(sweep):
    generate(sweep, figures=False)
    cost = {(r["strategy"], r["fraction"]): r for r in tables(sweep)["cost"]}
    assert cost[("frozen", 1.0)]["params_trainable"] == 100
    assert cost[("frozen", 1.0)]["s_per_epoch"] == pytest.approx((1.0 + 2.0) / 2)  # seeds' epochs took 1 s and 2 s
    depth = {r["frozen_depth"]: r for r in tables(sweep)["frozen_depth"]}
    assert sorted(depth) == [0, 4, 8]
    assert depth[4]["test_acc_mean"] == 0.85 and depth[8]["params_trainable"] == 800 and depth[8]["s_per_epoch"] == 1.0
    assert depth[0]["num_stages"] == NUM_STAGES


def test_report_html_and_figures(sweep):
    path = generate(sweep)
    page = path.read_text()
    report = json.loads((sweep / "report.json").read_text())
    assert set(report["figures"]) == {"race", "few_shot", "gain", "cost", "frozen_depth"}
    for name in report["figures"].values():
        assert (sweep / name).stat().st_size > 5000 and (sweep / name).read_bytes()[:4] == b"\x89PNG"
    assert page.count('<img alt=') == 5  # the PNGs, embedded: the page opens offline with no server
    assert "no result.json" in page and "data.fraction=2 is not accepted" in page
    for section in ("race", "few_shot", "gain", "cost", "frozen_depth", "datasets", "jobs"):
        assert f"<h2 id='{section}'>" in page and f'<table id="{section}-table">' in page
    assert len(element_ids(page)) == len(set(element_ids(page))), "an id names one element (links, CSS, scripts)"
    assert page.count("class='empty'") == 1 and "No completed job logged movement/*" in page  # hand-made jobs: no movement


def element_ids(page: str) -> list[str]:
    """Every element's id in an HTML page (not strings in its scripts)."""
    from html.parser import HTMLParser

    found = []

    class Ids(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name == "id")

    Ids().feed(page)
    return found


def test_a_race_compares_its_confirmations_not_its_search_trials(tmp_path):
    """In a race's directory the search trials (never tested, each its own settings) stay out of the race figure and the
    interactive race, which compare each strategy's tested confirmations as one series over seeds."""
    root = tmp_path / "race_dir"
    for trial, lr in enumerate((1e-3, 3e-4, 1e-4)):
        job = write_job(root, f"race/full/{trial}", strategy="full", fraction=0.1, seed=0, test_acc=0.0, val_accs=[0.5, 0.6],
                        settings=(f"strategy.lr_backbone={lr}",))
        record = json.loads((job / "result.json").read_text())
        (job / "result.json").write_text(json.dumps({**record, "test_acc": None}))
    for seed in (0, 1):
        write_job(root, f"race/full/confirm_seed{seed}", strategy="full", fraction=0.1, seed=seed, test_acc=0.8,
                  val_accs=[0.6, 0.7], settings=("strategy.lr_backbone=0.0003",))
    generate(root, figures=False)
    rows = json.loads((root / "report.json").read_text())["tables"]["race"]
    assert {(row["strategy"], row["runs"]) for row in rows} == {("full", 2)}
    assert '"series": "full"' in (root / "report.html").read_text().replace("\'", '"')


def test_sections_without_data_say_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = generate(empty).read_text()
    assert "No job directories" in page and page.count("class='empty'") == 8  # the note and the 7 sections
    only_failed = tmp_path / "failed"
    write_job(only_failed, "a", strategy="full", fraction=2, seed=0, test_acc=0, val_accs=[0], status="failed")
    page = html.unescape(generate(only_failed).read_text())
    assert "No completed job with a metrics.csv history." in page and "No scratch jobs" in page
    assert json.loads((only_failed / "report.json").read_text())["figures"] == {}


def test_out_dir_and_requested_fraction(sweep, tmp_path):
    out = tmp_path / "elsewhere"
    generate(sweep, out=out, fraction=1.0)
    assert (out / "report.html").is_file() and (out / "race.png").is_file() and not (sweep / "report.html").exists()
    assert "fraction 1 " in (out / "report.html").read_text() or "fraction 1:" in (out / "report.html").read_text()


def test_only_seeds_are_averaged(tmp_path):
    """A sweep over frozen depth and BN policy: one series per setting, each averaged over its 2 seeds only;
    where and how a job was logged is no setting."""
    from tlexp.report.series import series_names
    from tlexp.report.tables import depth_table, few_shot_table, race_curves

    root = tmp_path / "depths"
    for depth in (2, 5):
        for seed in (0, 1):
            acc = 0.5 + depth / 20 + seed / 100
            write_job(root, f"d{depth}s{seed}", strategy="partial", fraction=0.1, seed=seed, test_acc=acc, val_accs=[acc],
                      frozen_depth=depth, settings=(f"strategy.frozen_depth={depth}", f"logger={'csv' if seed else 'wandb'}"))
    for policy, acc in (("frozen_stats", 0.8), ("batch_stats", 0.6)):
        for seed in (0, 1):
            write_job(root, f"{policy}{seed}", strategy="full", fraction=0.1, seed=seed, test_acc=acc, val_accs=[acc],
                      settings=(f"strategy.bn_trainable={policy}",))
    jobs = load_jobs(root)
    assert sorted(set(series_names(jobs).values())) == ["full (bn_trainable=batch_stats)", "full (bn_trainable=frozen_stats)",
                                                      "partial (frozen_depth=2)", "partial (frozen_depth=5)"]
    curves = race_curves(jobs, 0.1)
    assert {name: c["runs"] for name, c in curves.items()} == dict.fromkeys(sorted(curves), 2)
    assert curves["partial (frozen_depth=5)"]["mean"] == [pytest.approx(0.755)]
    few_shot = {r["strategy"]: r for r in few_shot_table(jobs).as_dicts()}
    assert few_shot["full (bn_trainable=batch_stats)"]["test_acc_mean"] == pytest.approx(0.6)
    assert few_shot["partial (frozen_depth=2)"]["runs"] == 2 and few_shot["partial (frozen_depth=2)"]["test_acc_std"] > 0
    depths = depth_table(jobs).as_dicts()
    assert [(r["strategy"], r["frozen_depth"], r["runs"]) for r in depths] == [("partial", 2, 2), ("partial", 5, 2)]


def test_dataset_table_names_the_best_strategy_and_its_gain_per_dataset(tmp_path):
    from tlexp.report.tables import dataset_table

    root = tmp_path / "many"
    results = {("CIFAR10", "scratch"): (0.40, 0.42), ("CIFAR10", "full"): (0.80, 0.82), ("CIFAR10", "frozen"): (0.70, 0.90),
               ("EuroSAT", "scratch"): (0.90, 0.92), ("EuroSAT", "frozen"): (0.85, 0.87)}
    for (dataset, strategy), accs in results.items():
        for seed, acc in enumerate(accs):
            write_job(root, f"{dataset}{strategy}{seed}", strategy=strategy, fraction=0.1, seed=seed, test_acc=acc,
                      val_accs=[acc], dataset=dataset, settings=(f"data.name={dataset}",))
    rows = dataset_table(load_jobs(root)).as_dicts()
    assert [(r["dataset"], r["best_strategy"], r["runs"]) for r in rows] == [("CIFAR10", "full", 2), ("EuroSAT", "frozen", 2)]
    assert rows[0]["gain"] == pytest.approx(0.81 - 0.41) and rows[1]["gain"] == pytest.approx(0.86 - 0.91)


def test_movement_table_averages_seeds_per_stage(tmp_path):
    from tlexp.report.tables import movement_table

    root = tmp_path / "moved"
    for seed in (0, 1):
        job = write_job(root, f"full{seed}", strategy="full", fraction=0.1, seed=seed, test_acc=0.8, val_accs=[0.8])
        record = json.loads((job / "result.json").read_text())
        record["stages"] = ["stem", "blocks.0", "head"]
        record["metrics"] = {"movement/stem/weight_distance": 0.01 * (seed + 1), "movement/stem/cka": 0.99,
                             "movement/blocks.0/weight_distance": 0.1, "movement/blocks.0/cka": 0.5 + 0.1 * seed}
        (job / "result.json").write_text(json.dumps(record))
    rows = movement_table(load_jobs(root)).as_dicts()
    assert [(r["stage"], r["runs"]) for r in rows] == [("stem", 2), ("blocks.0", 2)]
    assert rows[0]["weight_distance"] == pytest.approx(0.015) and rows[1]["cka"] == pytest.approx(0.55)


def test_wandb_charts_hold_every_view_with_data(sweep):
    import wandb

    from tlexp.report.wandb_charts import charts

    out = charts(load_jobs(sweep))
    assert {"charts/race", "charts/few_shot", "charts/transfer_gain", "tables/race", "tables/few_shot",
            "tables/transfer_gain"} <= set(out)
    assert all(isinstance(v, wandb.Table) for k, v in out.items() if k.startswith("tables/"))
    race = out["tables/race"]
    assert set(race.get_column("strategy")) == {"scratch", "frozen", "partial", "full"}


def test_describe():
    assert describe([1.0, None, 3.0]) == {"n": 2, "mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0, "max": 3.0}
    assert describe([])["mean"] is None


@pytest.mark.slow
@pytest.mark.parametrize("command", [["tlexp-report"], ["scripts/report.py"]])
def test_command_line(sweep, command, tmp_path):
    """Both entry points reach the same ``main`` (a missing directory: exit 2, the same line); the console script,
    which users run, also writes a whole report (the script would write the same: same function, same arguments)."""
    executable = shutil.which("tlexp-report", path=str(Path(sys.executable).parent))
    argv = [executable] if command == ["tlexp-report"] else [sys.executable, "scripts/report.py"]
    assert argv[0], "tlexp-report console script not installed: pip install -e ."
    if command == ["tlexp-report"]:  # and imports no torch (Python's import log): a report reads files, it trains nothing
        out = subprocess.run([*argv, str(sweep), "--out", str(tmp_path / "out"), "--fraction", "0.1"], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
        assert out.returncode == 0, out.stderr
        assert "wrote" in out.stdout and (tmp_path / "out" / "report.html").is_file()
        imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
        assert "json" in imported and "torch" not in imported and "lightning" not in imported
    missing = subprocess.run([*argv, str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def test_run_record_reads_older_files_and_keeps_unknown_keys(tmp_path):
    """result.json files of older versions: a missing key reads as None, an unknown one is written back as it was."""
    from tlexp.results import RunRecord, Status, read_result, write_result

    (tmp_path / "result.json").write_text(json.dumps({"status": "completed", "test_acc": 0.5, "old_key": [1, 2]}))
    record = read_result(tmp_path)
    assert record.status == Status.COMPLETED and record.test_acc == 0.5 and record.train_size is None
    assert record.extra == {"old_key": [1, 2]}
    write_result(tmp_path, record.update(resumed_in="elsewhere", val_acc_best=float("nan")))
    assert json.loads((tmp_path / "result.json").read_text()) == {"status": "completed", "test_acc": 0.5,
                                                                  "resumed_in": "elsewhere", "old_key": [1, 2]}
    with pytest.raises(TypeError):
        RunRecord().update(test_accuracy=0.5)
    assert read_result(tmp_path / "missing") is None


def test_every_strategy_has_a_colour_of_its_own_that_reads_apart():
    """All registered strategies in one figure: no two colours closer than 0.2 in RGB (full's red and the crimson it had beside it, 0.11
    apart, read as one series)."""
    import itertools

    import matplotlib.colors as mcolors

    from tlexp.report.figures import _colors, known_strategies

    colours = _colors(known_strategies())
    assert len(set(colours.values())) == len(colours)
    for (a, ca), (b, cb) in itertools.combinations(colours.items(), 2):
        distance = sum((x - y) ** 2 for x, y in zip(mcolors.to_rgb(ca), mcolors.to_rgb(cb))) ** 0.5
        assert distance >= 0.2, (a, ca, b, cb, distance)
