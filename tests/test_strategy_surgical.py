"""The surgical strategy, measured: the stages ``train_stages`` names (by name or index, not necessarily the top ones)
and the head train, every other stage stays bit-identical, BatchNorm statistics included; a wrong name is refused
naming ``strategy.train_stages`` and this model's stages; resume is exact; and a Hydra multirun sweeps the stage set."""

from __future__ import annotations

import pytest

from conftest import NO_REPORT, read_json
from test_errors import assert_failed_cleanly
from test_finetuning import build, resume_differences, train_frozen_and_trained
from tlexp.backbone import create_backbone
from tlexp.errors import InvalidValue
from tlexp.strategies import Surgical


def surgical(train_stages) -> Surgical:
    return Surgical(create_backbone("test_efficientnet"), 10, train_stages=train_stages)


def test_the_chosen_stages_train_and_the_others_stay_bit_identical(tmp_path):
    datamodule, module = build(Surgical, train_stages=["stem", "blocks.2"])
    assert module.plan.trainable(0) == ["stem", "blocks.2", "head"] and module.plan.frozen_depth == 0
    frozen = ["blocks.0", "blocks.1", "blocks.3", "blocks.4"]
    moved_frozen, unmoved_trained = train_frozen_and_trained(tmp_path, module, datamodule, frozen)
    assert moved_frozen == set() and unmoved_trained == set()


@pytest.mark.parametrize("train_stages,trained", [([0], ["stem"]), ("blocks.4", ["blocks.4"]), ([5, "blocks.1"], ["blocks.1", "blocks.4"]),
                                                  (["stem", 0], ["stem"])])
def test_names_and_indices_choose_the_same_stages(train_stages, trained):
    module = surgical(train_stages)
    assert module.hparams.train_stages == trained and module.plan.trainable(0) == [*trained, "head"]
    assert module.plan.trainable_params(0) == sum(module.plan.sizes[name] for name in [*trained, "head"])


@pytest.mark.parametrize("bad", [["blocks.9"], [6], "layer1", [], [-1], [True], [1.5]])
def test_a_stage_outside_the_model_is_refused_naming_its_stages(bad):
    with pytest.raises(InvalidValue, match="train_stages") as error:
        surgical(bad)
    assert error.value.name == "train_stages" and "0: stem, 1: blocks.0" in str(error.value) and "5: blocks.4" in str(error.value)


@pytest.mark.parametrize("override,fragments", [
    ("strategy.train_stages=[blocks.9]", ["strategy.train_stages=['blocks.9'] ", "0: stem", "5: blocks.4"]),  # by the model
    ("strategy.train_stages=[1.5]", ["strategy.train_stages=[1.5] ", "backbone stage names"]),  # the form: before building
])
def test_bad_settings_name_the_key(tmp_path, main_direct, override, fragments):
    code, output = main_direct(tmp_path, "strategy=surgical", override)
    assert_failed_cleanly(code, output, tmp_path, fragments)


def test_resume_matches_the_uninterrupted_run(tmp_path):
    assert resume_differences(tmp_path, Surgical, train_stages=["blocks.1", "blocks.4"]) == []


@pytest.mark.slow
def test_a_multirun_sweeps_the_stage_set(tmp_path, main_inprocess):
    """``train.py -m strategy=surgical 'strategy.train_stages=[stem],[blocks.3,5]'``: one job per list (Hydra's grammar:
    a comma between lists sweeps them; quoted for the shell, whose globbing would read the brackets)."""
    code, output = main_inprocess(tmp_path, "hydra.mode=MULTIRUN", "strategy=surgical", "strategy.train_stages=[stem],[blocks.3,5]",
                                  "trainer.max_epochs=1", "data.fraction=0.25", f"hydra.sweep.dir={tmp_path}", NO_REPORT)
    assert code == 0, output[-4000:]
    records = [read_json(path) for path in sorted(tmp_path.glob("*/result.json"))]
    trained = [[stage for stage, start in r["unfreeze_epochs"].items() if start == 0] for r in records]
    assert sorted(trained) == [["blocks.3", "blocks.4", "head"], ["stem", "head"]]
    assert all(r["status"] == "completed" and r["strategy"] == "surgical" for r in records)


@pytest.mark.slow
def test_a_race_of_surgical_at_a_chosen_stage_set(tmp_path, main_inprocess):
    """``train.py -m experiment=race 'race.strategies=[surgical]' strategy=surgical 'strategy.train_stages=[blocks.4]'``:
    the race searches the rates, every trial and confirmation trains that stage set (a swept stage set is refused:
    test_race.py's test_bad_race_settings_are_named)."""
    code, output = main_inprocess(tmp_path, "experiment=race", "race.strategies=[surgical]", "strategy=surgical",
                                  "strategy.train_stages=[blocks.4]", "race.trials=1", "race.seeds=1", "trainer.max_epochs=1",
                                  "data.fraction=0.25", f"hydra.sweep.dir={tmp_path}", NO_REPORT)
    assert code == 0, output[-4000:]
    records = [read_json(path) for path in sorted((tmp_path / "race" / "surgical").glob("*/result.json"))]
    assert len(records) == 2 and all(r["status"] == "completed" for r in records)
    assert all([s for s, start in r["unfreeze_epochs"].items() if start == 0] == ["blocks.4", "head"] for r in records)
