"""Divergence is a result: a non-finite loss stops the job at that step and is recorded as such."""

from __future__ import annotations

import pytest

from conftest import read_json

HUGE = ("strategy.lr_head=1e30", "strategy.lr_backbone=1e30")


def test_single_run_stops_at_the_first_non_finite_loss(tmp_path, main_direct):
    code, output = main_direct(tmp_path, *HUGE, "trainer.max_epochs=3")
    assert code != 0
    errors = [line for line in output.splitlines() if line.startswith("tlexp: error:")]
    assert len(errors) == 1 and "diverged" in errors[0], output[-2000:]
    record = read_json(tmp_path / "result.json")
    assert record["status"] == "diverged"
    details = record["diverged"]
    assert details["loss"] in ("nan", "inf", "-inf")
    assert details["step"] < 8  # stopped at once, not after 3 epochs of NaNs
    assert details["last_finite_loss"] is not None and details["last_finite_loss"] == details["last_finite_loss"]
    assert set(details["learning_rates"]) >= {"head", "head/no_decay"}
    assert "test_acc" not in record and not (tmp_path / "checkpoints" / "last.ckpt").exists()


SWEEP = ("strategy.lr_head=1e-3,1e30", "strategy.lr_backbone=1e30", "trainer.max_epochs=1", "hydra.mode=MULTIRUN")


@pytest.mark.slow
def test_sweep_lists_diverged_jobs_apart_and_skips_them_on_rerun(tmp_path, main_inprocess):
    """The sweep, through train.py's entry point in this process, twice into one directory."""
    code, output = main_inprocess(tmp_path, *SWEEP, f"hydra.sweep.dir={tmp_path}")
    assert code == 0, output[-4000:]
    summary = read_json(tmp_path / "sweep_summary.json")
    assert summary["counts"]["diverged"] >= 1 and summary["counts"]["failed"] == 0
    assert all(entry["status"] == "diverged" for entry in summary["diverged"])
    report = read_json(tmp_path / "report.json")
    assert {row["job"] for row in report["tables"]["unfinished"]} == {e["job"] for e in summary["diverged"]}
    assert "Diverged, interrupted and killed jobs" in (tmp_path / "report.html").read_text()
    code, again = main_inprocess(tmp_path, *SWEEP, f"hydra.sweep.dir={tmp_path}")
    assert code == 0 and "Trainer.fit" not in again and again.count("skipping") == 2, again[-4000:]
