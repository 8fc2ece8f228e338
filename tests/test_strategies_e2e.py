"""Every strategy trains and tests end to end through train.py (tiny model, synthetic data, CPU).

The strategies run as one ``train.py -m`` sweep (session fixture ``strategy_sweep``), so the
imports are paid once; overrides run train.py's entry point in this process, reproducibility a fresh train.py.
"""

from __future__ import annotations

import math

import pytest

from conftest import STRATEGIES, SWEEP_FRACTION, metric_columns, read_json, read_metrics, run_train, timeless

pytestmark = pytest.mark.slow


# (frozen depth at epoch 0, stages training at epoch 0) for the tiny model's 6 backbone stages
EXPECTED_START = {
    "scratch": (0, 7), "frozen": (6, 1), "partial": (4, 3), "lpft": (6, 1), "full": (0, 7), "gradual": (6, 1), "discriminative": (0, 7),
    "reinit": (0, 7), "l2sp": (0, 7), "bss": (0, 7), "distill": (0, 7), "lwf": (0, 7),
    "lora": (1, 7),  # every backbone stage stays frozen; its adapters (`<stage>.lora`, right after it) train
    "pseudo_label": (0, 7), "dann": (0, 7),
    "bitfit": (1, 7), "ssf": (1, 7),  # as lora: their biases (`<stage>.biases`), scales and shifts (`<stage>.ssf`) train
    "surgical": (0, 2),  # conf/strategy/surgical.yaml: train_stages [0], the stem
}


def test_sweep_exits_zero(strategy_sweep):
    result, runs = strategy_sweep
    assert result.returncode == 0, result.stdout[-6000:]
    assert sorted(runs) == sorted(STRATEGIES), result.stdout[-6000:]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_end_to_end(strategy_sweep, strategy):
    _, runs = strategy_sweep
    assert strategy in runs, f"no run directory with result.json for {strategy}"
    run_dir = runs[strategy]
    record = read_json(run_dir / "result.json")
    assert record["status"] == "completed", record.get("error")
    assert record["strategy"] == strategy and record["fraction"] == SWEEP_FRACTION
    assert isinstance(record["test_acc"], float) and 0.0 <= record["test_acc"] <= 1.0
    assert record["max_epochs"] == 2

    # the best checkpoint exists (besides last.ckpt) and is what was tested
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints
    best = [name for name in checkpoints if name.startswith("epoch")]
    assert best, checkpoints
    assert record["best_checkpoint"] and (run_dir / "checkpoints" / best[0]).samefile(record["best_checkpoint"])

    # metrics.csv: losses, accuracy, one lr column per stage, epoch timing
    columns = metric_columns(run_dir)
    stages = record["stages"]
    assert stages[-1] == "head" and len(stages) == record["num_stages"] + 1
    assert any(c == "train/loss" for c in columns), columns
    for column in ("val/acc", "val/loss", "test/acc", "time/epoch_s", *(f"lr/{s}" for s in stages)):
        assert column in columns, (column, columns)
    rows = read_metrics(run_dir)
    epochs = {int(r["epoch"]) for r in rows if "time/epoch_s" in r}
    assert epochs == {0, 1}
    assert all(r["time/epoch_s"] > 0 for r in rows if "time/epoch_s" in r)
    assert all(math.isfinite(v) for r in rows for v in r.values())

    # the strategy's freeze schedule shows in the derived values and in the logged rates
    depth, training = EXPECTED_START[strategy]
    assert record["frozen_depth"] == depth
    start = record["unfreeze_epochs"]
    assert sum(1 for s in stages if start[s] == 0) == training
    first_epoch = [r for r in rows if int(r["epoch"]) == 0 and "lr/head" in r]
    assert first_epoch and all(r["lr/head"] > 0 for r in first_epoch)
    for stage in stages:
        rates = [r[f"lr/{stage}"] for r in first_epoch]
        assert (max(rates) > 0) == (start[stage] == 0), (stage, rates)
    if strategy == "frozen":
        assert record["params_trainable"] == record["params_trainable_end"] < record["params_total"] / 10
    if strategy in ("scratch", "full", "discriminative"):
        assert record["params_trainable"] == record["params_total"]
    if strategy == "gradual":  # blocks.4 unfreezes at epoch 1
        assert record["params_trainable_end"] > record["params_trainable"]
    if strategy == "discriminative":
        lrs = record["stage_lrs"]
        assert lrs["blocks.4"] > lrs["blocks.3"] > lrs["stem"]


def test_overrides(tmp_path, main_inprocess):
    """model, frozen depth, rates, epochs and seed from the command line (train.py's argv, through Hydra, in this
    process) all take effect."""
    code, output = main_inprocess(tmp_path, "model=timm", "model.name=test_resnet", "strategy=partial", "strategy.frozen_depth=2",
              "strategy.lr_head=0.005", "strategy.lr_backbone=0.0005", "trainer.max_epochs=1", "seed=7",
              "trainer.log_every_n_steps=1")
    assert code == 0, output[-3000:]
    record = read_json(tmp_path / "result.json")
    assert record["status"] == "completed"
    assert record["model"] == "test_resnet" and record["seed"] == 7 and record["max_epochs"] == 1
    assert record["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert record["frozen_depth"] == 2
    assert record["stage_lrs"]["head"] == pytest.approx(0.005)
    assert record["stage_lrs"]["layer4"] == pytest.approx(0.0005)
    assert read_json(tmp_path / "subset_indices.json")["seed"] == 7
    rows = read_metrics(tmp_path)
    assert {int(r["epoch"]) for r in rows if "time/epoch_s" in r} == {0}
    stepped = [r for r in rows if "lr/head" in r]
    assert stepped
    assert all(r["lr/stem"] == 0 and r["lr/layer1"] == 0 for r in stepped)  # frozen
    assert max(r["lr/layer2"] for r in stepped) > 0
    assert max(r["lr/head"] for r in stepped) <= 0.005 + 1e-12
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_same_command_twice_gives_identical_metrics(strategy_sweep, tmp_path):
    """A fresh process with the sweep's ``strategy=full`` config reproduces its metrics exactly (CPU)."""
    _, runs = strategy_sweep
    run_train(tmp_path, "strategy=full", f"data.fraction={SWEEP_FRACTION}", "trainer.log_every_n_steps=1")
    assert timeless(read_metrics(runs["full"])) == timeless(read_metrics(tmp_path))
    a, b = read_json(runs["full"] / "result.json"), read_json(tmp_path / "result.json")
    assert a["test_acc"] == b["test_acc"] and a["val_acc_best"] == b["val_acc_best"]
    assert read_json(runs["full"] / "subset_indices.json") == read_json(tmp_path / "subset_indices.json")
