"""WiSE-FT on a finished run (a tiny ``full`` run with a target domain, copied per test): a = 1 is the run itself (its
val/acc, test/acc and test/target_acc), a = 0 its starting weights, BatchNorm statistics interpolated too, the chosen
a the argmax on validation, the network exported at it; unfinished runs and missing checkpoints refused, nothing
written."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch
from conftest import call_main, read_json

from tlexp import config, export
from tlexp.wise_ft import OUTPUT, interpolate, main, networks, wise_ft


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """3 epochs of ``full`` at high rates with ``data.target_domain=invert``, in this process: a run whose a-curve is
    not flat (model=tiny at chance at a = 0, every validation image right at a = 1)."""
    run_dir = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, output = call_main(monkeypatch, run_dir, "strategy=full", "trainer.max_epochs=3", "data.target_domain=invert",
                                 "strategy.lr_backbone=3e-3", "strategy.lr_head=1e-2")
    assert code == 0, output[-3000:]
    return run_dir


@pytest.fixture
def run(tmp_path, finished_run):
    """A private copy of the finished run (its result.json still names the tested checkpoint in the original)."""
    return shutil.copytree(finished_run, tmp_path / "run")


def test_a_one_is_the_run_and_the_chosen_a_is_the_argmax_on_validation(run, tmp_path, restored_environ):
    record = wise_ft(run, out=tmp_path / "wise.pt", device="cpu")
    result = read_json(run / "result.json")
    assert record == read_json(run / OUTPUT)
    assert list(record["curve"]) == [str(i / 10) for i in range(11)]
    assert record["curve"]["1.0"] == record["fine_tuned"]["val/acc"] == pytest.approx(result["val_acc_best"], abs=1e-6)
    assert record["fine_tuned"]["test/acc"] == pytest.approx(result["test_acc"], abs=1e-6)
    assert record["fine_tuned"]["test/target_acc"] == pytest.approx(result["target_test_acc"], abs=1e-6)
    best = max(record["curve"].values())
    assert len(set(record["curve"].values())) > 1, record["curve"]  # a choice to make
    assert record["alpha"] == min(float(a) for a, v in record["curve"].items() if v == best)  # ties: the smaller a
    assert record["val/acc"] == best and 0 <= record["test/acc"] <= 1 and 0 <= record["test/target_acc"] <= 1
    saved = export.load(tmp_path / "wise.pt")
    assert torch.load(tmp_path / "wise.pt", weights_only=True)["wise_ft_alpha"] == record["alpha"]
    _, start, tuned, _, _ = networks(run, read_json(run / "result.json")["best_checkpoint"])
    expected = interpolate(start.state_dict(), tuned.state_dict(), record["alpha"])
    assert all(torch.equal(value, expected[name]) for name, value in saved.state_dict().items())


def test_a_zero_is_the_pretrained_backbone_and_statistics_are_interpolated(run, restored_environ):
    datamodule, start, tuned, module, cfg = networks(run, read_json(run / "result.json")["best_checkpoint"])
    L.seed_everything(cfg.seed)  # model=tiny's "pretrained" weights: the seeded random init the run started from
    pretrained = config.instantiate("model", cfg.model, img_size=cfg.data.image_size).state_dict()
    starting, fine_tuned = start.state_dict(), tuned.state_dict()
    at_zero, at_one = (interpolate(starting, fine_tuned, a) for a in (0.0, 1.0))
    assert all(torch.equal(at_zero[f"backbone.{name}"], value) for name, value in pretrained.items())
    assert all(torch.equal(at_one[name], value) for name, value in fine_tuned.items())
    assert all(torch.equal(at_zero[name], value) for name, value in fine_tuned.items() if name.startswith("head."))
    # full's BN statistics stay put (bn_trainable=frozen_stats); as after a batch_stats run, they move here
    moved = {name: value * 3 if "running_" in name else value + 5 if "num_batches" in name else value
             for name, value in fine_tuned.items()}
    halfway = interpolate(starting, moved, 0.5)
    statistics = [name for name in moved if "running_" in name]
    assert statistics
    for name in statistics:
        torch.testing.assert_close(halfway[name], 2 * starting[name])
    assert all(torch.equal(halfway[name], moved[name]) for name in moved if "num_batches" in name)  # counters: tuned's


@pytest.mark.parametrize("break_it,why", [
    (lambda record: {**record, "status": "interrupted", "best_checkpoint": None}, "result.json says interrupted"),
    (lambda record: {**record, "best_checkpoint": "/nowhere/epoch000.ckpt"}, "checkpoint /nowhere/epoch000.ckpt not found")])
def test_unfinished_runs_and_missing_checkpoints_are_refused(run, capsys, break_it, why):
    (run / "result.json").write_text(json.dumps(break_it(read_json(run / "result.json"))))
    assert main([str(run), "--export", str(run / "wise.pt")]) == 2
    error = capsys.readouterr().err
    assert f"tlexp-wise-ft: run='{run}' is not accepted" in error and why in error
    assert not (run / OUTPUT).exists() and not (run / "wise.pt").exists()


def test_several_runs_each_on_its_own(run, tmp_path, finished_run, capsys, restored_environ):
    """A race's confirmations in one command: a refused run (here a bad grid for both, then a directory without a
    run) does not stop the others."""
    assert main([str(run), "--alphas", "0,x"]) == 2 and "accepted: one or more numbers in [0, 1]" in capsys.readouterr().err
    assert main([str(run), str(tmp_path / "nothing"), "--alphas", "0,1"]) == 2
    assert list(read_json(run / OUTPUT)["curve"]) == ["0.0", "1.0"] and "tlexp-wise-ft: a=" in capsys.readouterr().out
