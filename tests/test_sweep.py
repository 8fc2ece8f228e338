"""Sweeps end to end: ``train.py -m`` with a failing job, a re-run that skips finished jobs,
sweep_summary.json, the report's numbers, one W&B group per sweep (offline), joblib and Optuna;
plus the experiment, launcher and search configs composing.

The sweep: tiny model, synthetic data, 2 strategies x (2 fractions + one invalid fraction), 2 epochs,
the default W&B logger with no credentials (HOME is empty, WANDB_MODE unset: mode auto -> offline).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF_DIR, NO_REPORT, REPO, read_json, run_train
from tlexp import sweep as sweeps
from tlexp.strategies import STRATEGIES as STRATEGY_REGISTRY

STRATEGIES = ("frozen", "full")
FRACTIONS = (0.5, 1.0)
BAD_FRACTION = 2
WANDB = Path(sys.executable).with_name("wandb")


def sweep_overrides() -> list[str]:
    return ["logger=wandb", f"strategy={','.join(STRATEGIES)}",
            f"data.fraction={','.join(map(str, (*FRACTIONS, BAD_FRACTION)))}", "seed=0"]


SWEEP_TESTS = pytest.mark.xdist_group("test_sweep.sweep")
"""The tests that read the module fixture ``sweep`` (two train.py -m runs): on one xdist worker, which runs it once."""


def no_credentials(home: Path) -> dict:
    """A child environment where W&B mode auto resolves to offline: no key, no netrc, no WANDB_MODE."""
    return {"HOME": home, "WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": None}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep run twice into one directory: (first result, second result, sweep dir, mtimes after the first)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    env = no_credentials(tmp_path_factory.mktemp("home"))
    first = run_train(sweep_dir, *sweep_overrides(), multirun=True, check=False, env=env)
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.name in ("result.json", "metrics.csv")}
    second = run_train(sweep_dir, *sweep_overrides(), multirun=True, check=False, env=env)
    return first, second, sweep_dir, stamps


def job_records(sweep_dir: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(sweep_dir)): read_json(p) for p in sweep_dir.rglob("result.json")}


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of an offline W&B run, read back with ``wandb leet inspect --json``."""
    out = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def wandb_run_info(run_dir: Path) -> dict:
    return next(r["run"] for r in wandb_records(run_dir) if r.get("type") == "run")


def wandb_summary(run_dir: Path) -> dict:
    out = subprocess.run([str(WANDB), "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)



# --- the sweep ------------------------------------------------------------------------------------------
@pytest.mark.slow
@SWEEP_TESTS
def test_sweep_finishes_despite_failing_jobs(sweep):
    first, _, sweep_dir, _ = sweep
    assert first.returncode == 0, first.stdout[-6000:]
    records = job_records(sweep_dir)
    assert len(records) == len(STRATEGIES) * (len(FRACTIONS) + 1), sorted(records)
    done = [r for r in records.values() if r["status"] == "completed"]
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert sorted((r["strategy"], r["fraction"]) for r in done) == sorted((s, f) for s in STRATEGIES for f in FRACTIONS)
    assert len(failed) == len(STRATEGIES) and all(r["fraction"] == BAD_FRACTION and "data.fraction" in r["error"] for r in failed)
    # job directories are named by their overrides, so a re-run finds them
    assert all(f"data.fraction={r['fraction']}" in name and f"strategy={r['strategy']}" in name for name, r in records.items())


@pytest.mark.slow
@SWEEP_TESTS
def test_result_json_fields(sweep):
    _, _, sweep_dir, _ = sweep
    for record in job_records(sweep_dir).values():
        if record["status"] != "completed":
            continue
        for key in ("overrides", "strategy", "fraction", "frozen_depth", "lr_head", "lr_backbone", "weight_decay", "seed",
                    "params_trainable", "val_acc_best", "val_acc_final", "test_acc", "wall_seconds", "train_size", "group"):
            assert record.get(key) is not None, key
        assert f"data.fraction={record['fraction']}" in record["overrides"]
        assert record["frozen_depth"] == (6 if record["strategy"] == "frozen" else 0)


@pytest.mark.slow
@SWEEP_TESTS
def test_sweep_summary_lists_completed_and_failed(sweep):
    first, _, sweep_dir, _ = sweep
    # the second invocation overwrote the file; the first one's counts are in its output
    assert ("4 completed, 0 skipped (already completed), 0 diverged, 0 interrupted, 0 killed, 2 failed, 6 jobs"
            in first.stdout), first.stdout[-3000:]
    assert re.search(r"failed .*data\.fraction=2.*not accepted", first.stdout)


@pytest.mark.slow
@SWEEP_TESTS
def test_rerun_skips_completed_jobs(sweep):
    _, second, sweep_dir, stamps = sweep
    assert second.returncode == 0, second.stdout[-6000:]
    summary = read_json(sweep_dir / "sweep_summary.json")
    assert summary["counts"] == {"completed": 0, "skipped": 4, "pruned": 0, "diverged": 0, "interrupted": 0, "killed": 0,
                                 "failed": 2, "total": 6}
    assert all("data.fraction=2" in entry["job"] and "data.fraction" in entry["error"] for entry in summary["failed"])
    assert {e["job"] for e in summary["skipped"]} == {n for n, r in job_records(sweep_dir).items() if r["status"] == "completed"}
    assert second.stdout.count("already completed") >= 4
    assert "Trainer.fit" not in second.stdout  # nothing trained
    for path, stamp in stamps.items():  # finished jobs untouched
        if read_json(path.parent / "result.json")["status"] == "completed":
            assert path.stat().st_mtime_ns == stamp, path


@pytest.mark.slow
@SWEEP_TESTS
def test_report_tables_hold_result_values(sweep):
    _, _, sweep_dir, _ = sweep
    page = (sweep_dir / "report.html").read_text()
    report = read_json(sweep_dir / "report.json")
    records = job_records(sweep_dir)
    jobs = {row["job"]: row for row in report["tables"]["jobs"]}
    assert set(jobs) == set(records)
    for name, record in records.items():
        assert jobs[name]["status"] == record["status"]
        assert jobs[name]["test_acc"] == record.get("test_acc")
        if record.get("test_acc") is not None:
            assert f"<td>{record['test_acc']:.4f}</td>" in page
    few_shot = {(r["strategy"], r["fraction"]): r for r in report["tables"]["few_shot"]}
    for record in records.values():
        if record["status"] == "completed":  # one seed: the mean is the job's own value
            row = few_shot[(record["strategy"], record["fraction"])]
            assert row["test_acc_mean"] == pytest.approx(record["test_acc"]) and row["runs"] == 1
            assert row["train_size"] == record["train_size"]
    race = report["tables"]["race"]
    assert {r["strategy"] for r in race} == set(STRATEGIES) and {r["epoch"] for r in race} == {1, 2}
    assert set(report["figures"]) >= {"race", "few_shot", "cost"}
    assert all((sweep_dir / name).is_file() for name in report["figures"].values())
    assert "data:image/png;base64," in page
    # no scratch and one frozen depth of partial: those sections say so
    assert "No scratch jobs" in html.unescape(page) and "Fewer than two frozen depths" in page


@pytest.mark.slow
@SWEEP_TESTS
def test_wandb_runs_share_the_sweep_group(sweep):
    _, _, sweep_dir, _ = sweep
    group = sweep_dir.name
    records = job_records(sweep_dir)
    job_runs = [p for p in sweep_dir.glob("*/wandb/offline-run-*")]
    assert len(job_runs) == sum(r["status"] == "completed" for r in records.values())  # the re-run made no new job runs
    for run_dir in job_runs:
        info = wandb_run_info(run_dir)
        assert info["run_group"] == group and info["job_type"] == "train"
    (summary_run,) = sweep_dir.glob("wandb/offline-run-*")  # one for both invocations: the second resumed the first's
    info, inspected = wandb_run_info(summary_run), wandb_summary(summary_run)
    assert info["run_group"] == group and info["job_type"] == "summary" and inspected["run_id"] == sweeps.summary_run_id(group, sweep_dir)
    summary = inspected["summary"]
    assert summary["jobs/skipped"] == 4 and summary["jobs/failed"] == 2
    assert "jobs" in summary and any(key.startswith("report/") for key in summary)  # the table and the figures
    # the report's views as W&B custom charts: wandb keeps a chart's data under "<key>_table", its panel in the config
    assert {"charts/race_table", "charts/few_shot_table", "tables/few_shot"} <= set(summary)
    assert all(r["group"] == group for r in records.values())


@pytest.mark.slow
@SWEEP_TESTS
def test_sync_wandb_dry_run_lists_offline_runs(sweep):
    _, _, sweep_dir, _ = sweep
    out = subprocess.run([sys.executable, "scripts/sync_wandb.py", str(sweep_dir), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("5 offline W&B run(s)") and out.stdout.count("offline-run-") == 5  # 4 jobs, 1 summary


# --- other launchers and sweepers ------------------------------------------------------------------------
@pytest.mark.slow
def test_optuna_search_on_joblib_launcher(tmp_path, main_inprocess):
    """Optuna asks for 2 trials at once; joblib runs them in 2 worker processes. The search
    maximises what train.main returns; jobs in other processes still share the sweep's group.
    The sweep is driven from train.py's entry point in this process; its jobs run in joblib's processes."""
    sweep_dir = tmp_path / "optuna"
    code, output = main_inprocess(sweep_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                                  "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_epochs=1",
                                  "strategy.frozen_depth=int(interval(0,6))", NO_REPORT, f"hydra.sweep.dir={sweep_dir}")
    assert code == 0, output[-6000:]
    assert "Joblib.Parallel" in output
    records = [r for r in job_records(sweep_dir).values() if r["status"] == "completed"]
    assert len(records) == 2 and all(r["strategy"] == "partial" and r["group"] == "optuna" for r in records)
    best = (sweep_dir / "optimization_results.yaml").read_text()
    best_value = float(re.search(r"best_value: ([0-9.e-]+)", best).group(1))
    assert best_value == pytest.approx(max(r["val_acc_best"] for r in records))
    summary = read_json(sweep_dir / "sweep_summary.json")
    assert summary["group"] == "optuna" and summary["counts"]["completed"] == 2


# --- configs ---------------------------------------------------------------------------------------------
def compose_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


EXPERIMENTS = ["transfer_study", "transfer_study_cpu", "frozen_depth_sweep", "lr_sweep",
               "scratch", "frozen", "partial", "full", "gradual", "discriminative", "bitfit", "ssf", "surgical"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_group_tags_and_sweep(name):
    cfg = compose_hydra(f"experiment={name}")
    assert cfg.group == name and cfg.tags
    assert cfg.hydra.sweeper.params, "an experiment sweeps"
    assert cfg.model.name == "tf_efficientnet_lite0" and cfg.data._target_ == "tlexp.data.FashionMNIST"


def test_transfer_study_sweeps_strategies_fractions_seeds():
    params = compose_hydra("experiment=transfer_study").hydra.sweeper.params
    assert params.strategy.split(",") == [s for s in STRATEGY_REGISTRY if s not in ("distill", "dann")]  # no teacher, no target
    assert [float(f) for f in params["data.fraction"].split(",")] == [0.01, 0.05, 0.1, 0.5, 1.0]
    assert len(params.seed.split(",")) >= 2


def test_transfer_study_cpu_fits_in_45_minutes_on_2_cores():
    """Pessimistic estimate: every strategy at full fine-tuning cost, 50 img/s training and 270 img/s
    inference on 2 cores (measured under load; ~140 and ~370 on idle cores), 10 s start-up per job;
    pseudo_label also predicts its capped unlabeled set and trains one epoch on it."""
    cfg = compose_hydra("experiment=transfer_study_cpu")
    params = cfg.hydra.sweeper.params
    fractions = [float(f) for f in params["data.fraction"].split(",")]
    strategies = params.strategy.split(",")
    seeds = str(params.seed).split(",")
    epochs, val, test = cfg.trainer.max_epochs, cfg.data.val_size, cfg.data.test_limit
    assert cfg.trainer.accelerator == "cpu" and test is not None and test <= 2000
    assert strategies[:5] == ["scratch", "frozen", "partial", "full", "gradual"] and "pseudo_label" in strategies
    assert len(fractions) >= 3
    train_pool, unlabeled = 60000 - val, cfg.data.unlabeled_limit
    per_seed = sum(train_pool * f * epochs / 50 + (val * epochs + test) / 270 + 10 for f in fractions) * len(strategies)
    per_seed += len(fractions) * (unlabeled / 270 + unlabeled / 50)
    assert per_seed * len(seeds) < 45 * 60


def test_frozen_depth_sweep_covers_every_depth_of_efficientnet_lite0():
    from tlexp.backbone import create_backbone
    from tlexp.heads import build_head
    from tlexp.stages import split_stages

    cfg = compose_hydra("experiment=frozen_depth_sweep")
    assert cfg.strategy._target_ == "tlexp.strategies.Partial"
    backbone = create_backbone(cfg.model.name, pretrained=False, weights=None)
    stages = [s.name for s in split_stages(backbone, build_head("linear", backbone.num_features, 10, 8, 0.0))][:-1]
    assert stages == ["stem"] + [f"blocks.{i}" for i in range(7)]
    assert cfg.hydra.sweeper.params["strategy.frozen_depth"] == f"range(0,{len(stages) + 1})"


def test_lr_sweep_grid():
    params = compose_hydra("experiment=lr_sweep").hydra.sweeper.params
    assert len(str(params["strategy.lr_backbone"]).split(",")) >= 2 and len(str(params["strategy.lr_head"]).split(",")) >= 2


def test_cli_overrides_replace_experiment_sweep_values():
    """What Hydra's BasicSweeper does with `-m experiment=transfer_study data.fraction=0.1,1.0 seed=0`:
    the experiment's params, then the command line, one value list per key."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = compose_hydra("experiment=transfer_study").hydra.sweeper.params
    arguments = [f"{k}={v}" for k, v in params.items()] + ["data.fraction=0.1,1.0", "seed=0"]
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    strategies = params.strategy.split(",")
    assert len(jobs) == len(strategies) * 2 * 1
    assert {tuple(sorted(job)) for job in jobs} == {
        tuple(sorted([f"strategy={s}", f"data.fraction={f}", "seed=0"])) for s in strategies for f in ("0.1", "1.0")}


def test_slurm_launcher_config():
    cfg = compose_hydra("hydra/launcher=slurm")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    for key in ("partition", "gpus_per_node", "timeout_min", "cpus_per_task", "mem_gb", "array_parallelism"):
        assert key in launcher


def test_sweep_callback_registered():
    cfg = compose_hydra()
    assert cfg.hydra.callbacks.sweep_summary._target_ == "tlexp.sweep.SweepSummary"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${tlexp_job_dir:${hydra.job.override_dirname}}"


def test_a_job_directory_is_one_name_whatever_the_overrides():
    """A path among the overrides (model.weights=/x/y.pth) stays inside one directory name, escaped and
    reversible; a name over the limit keeps its start and a hash of the whole, so two long ones stay apart;
    ordinary overrides are left as Hydra writes them."""
    from urllib.parse import unquote

    from tlexp import JOB_DIR_BYTES, job_dir

    assert job_dir("seed=0,strategy=full") == "seed=0,strategy=full"
    named = job_dir("model.weights=/x/50%/y.pth,seed=0")
    assert "/" not in named and unquote(named) == "model.weights=/x/50%/y.pth,seed=0"
    long_a, long_b = job_dir("a" * 300 + "1"), job_dir("a" * 300 + "2")
    assert long_a != long_b and len(long_a.encode()) == JOB_DIR_BYTES and long_a.startswith("a" * 100)
    cfg = OmegaConf.create({"hydra": {"job": {"override_dirname": "data.root=/my/images,seed=1"}},
                            "subdir": compose_hydra().hydra.sweep._get_node("subdir")._value()})
    assert cfg.subdir == "data.root=%2Fmy%2Fimages,seed=1"
