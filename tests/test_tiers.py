"""What keeps ``make test-fast`` fast (``conftest.in_process_only``): a fast test that starts a program or trains a
study is failed and told to mark itself slow."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from conftest import FAST_FITS, in_process_only


def fast_item():
    return SimpleNamespace(nodeid="tests/test_x.py::test_y", stash=pytest.Stash(), get_closest_marker=lambda name: None)


def test_a_fast_test_that_starts_a_program_is_told_to_mark_itself_slow():
    item = fast_item()
    with in_process_only(item):
        subprocess.run(["true"], check=True)
        with pytest.raises(pytest.fail.Exception, match="test_y starts sleep but is not marked slow"):
            subprocess.run(["sleep", "0"])


def test_a_fast_test_that_trains_a_study_is_told_to_mark_itself_slow():
    """Setup and call count together; a model trained as a sweep's job is refused at once. (``MonkeyPatch.context``,
    not the fixture: the stub must be undone before this test's own guard restores ``Trainer.fit``.)"""
    trained = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", lambda trainer, *args, **kwargs: trained.append(trainer))
        item = fast_item()
        with in_process_only(item):  # the setup
            Trainer.fit("teacher")
        with in_process_only(item):  # the call
            for _ in range(FAST_FITS - 1):
                Trainer.fit("model")
            with pytest.raises(pytest.fail.Exception, match=f"trains {FAST_FITS + 1} models but is not marked slow"):
                Trainer.fit("one more")
        job = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "job": {"override_dirname": "seed=1"}}})
        patch.setattr(HydraConfig.instance(), "cfg", job)
        with in_process_only(fast_item()), pytest.raises(pytest.fail.Exception, match=r"trains a sweep's job \(seed=1\)"):
            Trainer.fit("a job")
    assert trained == ["teacher", *["model"] * (FAST_FITS - 1)]
