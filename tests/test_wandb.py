"""The default logger (logger=wandb, mode auto) without credentials: an offline W&B run in the run
directory, never a prompt, with the nested config and the final metrics; read back with
``wandb leet inspect --summary --json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, run_train, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_wandb.wandb_run")]  # one worker runs wandb_run once

WANDB_CLI = Path(PYTHON).with_name("wandb")


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wandb_run")
    home = tmp_path_factory.mktemp("home")  # no ~/.netrc, no W&B settings
    no_credentials = {"HOME": home, "WANDB_API_KEY": None, "WANDB_MODE": None, "NETRC": None, "WANDB_DIR": None}
    result = run_train(run_dir, "logger=wandb", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                       "strategy=gradual", "strategy.unfreeze_every=1", "data.fraction=0.5", env=no_credentials, timeout=300)
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, (list((run_dir / "wandb").iterdir()) if (run_dir / "wandb").is_dir() else None, result.stdout[-4000:])
    inspect = subprocess.run([str(WANDB_CLI), "leet", "inspect", "--summary", "--json", str(offline[0])],
                             env=subprocess_env(HOME=home), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    return run_dir, json.loads(inspect.stdout)


def test_offline_run_in_run_dir(wandb_run):
    run_dir, summary = wandb_run
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert Path(summary["file"]).is_relative_to(run_dir / "wandb")
    assert summary["project"] == "tlexp"
    assert "gradual" in summary["tags"] and "fraction=0.5" in summary["tags"]
    assert (run_dir / "metrics.csv").is_file()
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_config_is_nested(wandb_run):
    _, summary = wandb_run
    config = summary["config"]
    assert config["strategy"]["lr_head"] == pytest.approx(5e-4)  # gradual's (conf/strategy/_fine_tuning_rates.yaml)
    assert config["strategy"]["_target_"] == "tlexp.strategies.Gradual"
    assert config["data"]["fraction"] == 0.5
    assert config["model"]["name"] == "test_efficientnet"
    assert config["trainer"]["max_epochs"] == 1
    derived = config["derived"]
    assert derived["frozen_depth"] == 6 and derived["num_stages"] == 6
    assert 0 < derived["params_trainable"] < derived["params_total"]
    assert derived["stage_lrs"]["head"] == pytest.approx(5e-4)
    assert derived["unfreeze_epochs"]["head"] == 0


def test_summary_holds_final_metrics(wandb_run):
    _, summary = wandb_run
    metrics = summary["summary"]
    for key in ("test/acc", "val/acc", "val/acc_best", "time/elapsed_s", "time/epoch_s", "lr/head", "lr/stem"):
        assert key in metrics, (key, sorted(metrics))
    assert any(key == "train/loss" for key in metrics), sorted(metrics)
    assert 0 <= metrics["test/acc"] <= 1 and metrics["time/elapsed_s"] > 0
    assert metrics["lr/stem"] == 0  # gradual: the stem is still frozen in epoch 0
    assert metrics["summary/params_trainable"] == summary["config"]["derived"]["params_trainable"]
