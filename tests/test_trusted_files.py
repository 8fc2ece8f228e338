"""A file from someone else runs no code: every place tlexp reads a checkpoint, an exported network, a cache file
or a run's config refuses a crafted one with one clear error, and the crafted payload never runs.

The payload of each crafted file creates a marker file when unpickled (or, in a config, when instantiated); each
test asserts the marker is absent. Every strategy's own checkpoint loads with ``weights_only=True``: what tlexp
saves is tensors and plain values."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_json

from tlexp import export
from tlexp.errors import InvalidValue
from tlexp.feature_cache import store
from tlexp.strategies.distill import load_teacher
from tlexp.trusted_files import UntrustedFile, load_run_config, load_tensors


class Payload:
    """Unpickling this calls ``os.system``: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path: Path, marker: Path, **extra) -> Path:
    """A checkpoint-shaped file whose unpickling runs a shell command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 4}, "payload": Payload(marker), **extra}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    marker = tmp_path / "code_ran"
    yield marker
    assert not marker.exists(), "the crafted file's code ran"


@pytest.fixture
def copied_run(teacher_run, tmp_path):
    """A finished run directory, as a colleague would share it."""
    return Path(shutil.copytree(teacher_run, tmp_path / "shared_run", ignore=shutil.ignore_patterns("wandb")))


def test_the_payload_runs_without_weights_only(tmp_path):
    """The crafted file is real: loaded the unsafe way, it runs its command."""
    marker = tmp_path / "ran"
    torch.load(craft(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_load_tensors_refuses_with_why_and_how(tmp_path, marker):
    with pytest.raises(UntrustedFile) as error:
        load_tensors(craft(tmp_path / "evil.ckpt", marker), "checkpoint")
    message = str(error.value)
    assert "evil.ckpt" in message and "weights_only=True" in message and "system" in message and "If you trust" in message


def test_teacher_checkpoint_is_refused(copied_run, marker):
    evil = craft(copied_run / "checkpoints" / "evil.ckpt", marker)
    with pytest.raises(InvalidValue) as error:
        load_teacher(str(evil), num_classes=4)
    assert error.value.name == "teacher" and "refused" in str(error.value)


def test_teacher_run_config_that_calls_other_code_is_refused(copied_run, marker):
    config = copied_run / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["model"] = {"_target_": "os.system", "command": f"touch {marker}"}
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(InvalidValue) as error:
        load_teacher(str(copied_run), num_classes=4)
    assert "model._target_=os.system" in str(error.value)


def test_nested_targets_are_checked(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"strategy": {"_target_": "tlexp.strategies.Full",
                                                   "optimizer": {"_target_": "subprocess.call", "args": ["true"]}}}))
    with pytest.raises(UntrustedFile, match=r"strategy.optimizer._target_=subprocess.call"):
        load_run_config(config)
    config.write_text(yaml.safe_dump({"strategy": {"_target_": "tlexp.strategies.Full",
                                                   "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}}}))
    assert load_run_config(config).strategy.optimizer._target_ == "torch.optim.AdamW"


def test_export_refuses_checkpoint_and_config_with_exit_2(copied_run, tmp_path, marker, capsys):
    evil = craft(copied_run / "checkpoints" / "evil.ckpt", marker)
    assert export.main([str(evil), str(tmp_path / "out.pt")]) == 2
    assert "refused to load this checkpoint" in capsys.readouterr().err and not (tmp_path / "out.pt").exists()
    with pytest.raises(UntrustedFile):
        export.load(craft(tmp_path / "network.pt", marker))


def test_resume_from_a_crafted_checkpoint_fails_naming_ckpt_path(main_direct, tmp_path, marker):
    evil = craft(tmp_path / "evil.ckpt", marker)
    code, output = main_direct(tmp_path / "run", f"ckpt_path={evil}", "strategy=full")
    assert code == 1 and "ckpt_path=" in output and "refused to load this checkpoint" in output
    assert read_json(tmp_path / "run" / "result.json")["status"] == "failed"


def test_feature_cache_file_is_ignored_not_run(tmp_path, marker, caplog):
    evil = craft(tmp_path / "key.pt", marker, key="key")
    assert store.load(evil, "key") is None
    assert "refused" in caplog.text


@pytest.mark.slow
def test_every_strategys_checkpoint_is_plain(strategy_sweep):
    """What tlexp writes loads with weights_only=True: its own files never need the unsafe path."""
    _, runs = strategy_sweep
    for strategy, run_dir in runs.items():
        checkpoints = sorted(Path(run_dir, "checkpoints").glob("*.ckpt"))
        assert checkpoints, strategy
        for checkpoint in checkpoints:
            assert "state_dict" in load_tensors(checkpoint, "checkpoint"), (strategy, checkpoint)
