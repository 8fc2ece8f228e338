"""Every config rule has one home: the annotation of the parameter it constrains (``tlexp.rules``).

The config layer reads the rules from a node's ``_target_`` (up the class hierarchy) and refuses a bad value
before anything is built, naming the full key; the class enforces the same declaration when it is built in
Python, before its ``__init__`` runs. A new strategy's rules live in its own file."""

from __future__ import annotations

import ast
from functools import partial
from pathlib import Path
from typing import Annotated

import pytest
import torch
from omegaconf import open_dict

from conftest import compose_config
from tlexp import config
from tlexp.acceleration import Trainer
from tlexp.backbone import create_backbone
from tlexp.errors import ConfigError, InvalidValue
from tlexp.rules import Rule, arguments, number, rules_of
from tlexp.strategies import Full, Gradual, Lora, PseudoLabel

BUILT: list[str] = []
"""Names of the ``Toy`` modules whose ``__init__`` ran."""


class Toy(Full):
    """A strategy as a new one would be written: its rule beside its parameter, nothing added to tlexp.config."""

    def __init__(self, *args, strength: Annotated[float, Rule("a strength in [0, 1]", lambda v: number(v) and 0 <= v <= 1)] = 0.5,
                 **kwargs):
        BUILT.append("toy")
        super().__init__(*args, **kwargs)
        self.hparams.strength = strength


def toy_config(**values):
    cfg = compose_config("strategy=full")
    cfg.paths.output_dir = "/tmp/tlexp-test-rules"
    with open_dict(cfg):
        cfg.strategy._target_ = f"{__name__}.Toy"
        cfg.strategy.update(values)
    return cfg


def test_a_new_strategys_rule_is_read_from_its_signature():
    config.check(toy_config(strength=0.25))
    with pytest.raises(ConfigError) as error:
        config.check(toy_config(strength=2))
    assert error.value.key == "strategy.strength" and str(error.value).endswith("accepted: a strength in [0, 1]")
    with pytest.raises(ConfigError) as error:  # the base class's rules come with it
        config.check(toy_config(lr_head=0))
    assert error.value.key == "strategy.lr_head" and "a learning rate > 0" in str(error.value)


def test_the_same_rule_refuses_a_module_built_in_python_before_its_init_runs():
    BUILT.clear()
    backbone = create_backbone("test_efficientnet")
    for kwargs, name in (({"strength": 2}, "strength"), ({"lr_head": -1.0}, "lr_head")):
        with pytest.raises(InvalidValue) as error:
            Toy(backbone, 4, **kwargs)
        assert error.value.name == name
    assert BUILT == []
    with pytest.raises(InvalidValue, match="^lr_head=0.0 .*a learning rate > 0"):  # positional, as the signature takes it
        Full(backbone, 4, partial(torch.optim.AdamW), 0.0)
    assert Toy(backbone, 4, strength=1).hparams.strength == 1 and BUILT == ["toy"]


def test_arguments_go_to_the_init_that_names_them():
    """Positional arguments pass through ``*args`` to the parameters not yet given (``Lora`` passes ``backbone`` on)."""
    assert arguments(Lora, ("b", 4, "optimizer"), {"rank": 2}) == {"backbone": "b", "num_classes": 4, "optimizer": "optimizer",
                                                                  "rank": 2}
    assert arguments(Gradual, ("b", 4), {"unfreeze_by": 0.5, "lr_head": 1.0}) == {
        "backbone": "b", "num_classes": 4, "unfreeze_by": 0.5, "lr_head": 1.0}


def test_a_rule_on_each_value_of_a_mapping_names_the_entry():
    backbone = create_backbone("test_efficientnet")
    with pytest.raises(InvalidValue) as error:
        Gradual(backbone, 4, milestones={"blocks.4": -1})
    assert error.value.name == "milestones.blocks.4" and error.value.accepted == "an epoch number >= 0"
    with pytest.raises(InvalidValue, match="^milestones=3 .*a mapping whose every value is an epoch number >= 0"):
        Gradual(backbone, 4, milestones=3)


def test_a_refined_rule_is_the_configs_part_of_a_check_the_class_makes_with_the_model():
    """reinit_stages >= 1 before anything is built; the upper bound (the stage count) by ``Reinit`` itself."""
    cfg = compose_config("strategy=reinit", "strategy.reinit_stages=0")
    cfg.paths.output_dir = "/tmp/tlexp-test-rules"
    with pytest.raises(ConfigError, match=r"^strategy.reinit_stages=0 .*accepted: an integer >= 1$"):
        config.check(cfg)
    assert rules_of(Lora)["target_stages"].refined


def test_hyperparameters_are_still_saved_from_every_init():
    """Checked validates in ``__new__``: Lightning's ``save_hyperparameters`` still finds every ``__init__``'s arguments."""
    module = PseudoLabel(create_backbone("test_efficientnet"), 4, threshold=0.7, lr_head=0.5)
    assert module.hparams.threshold == 0.7 and module.hparams.lr_head == 0.5 and module.hparams.rounds == 2


def test_the_trainer_node_has_its_rules_in_tlexps_trainer():
    assert {"max_epochs", "channels_last", "compile"} <= set(rules_of(Trainer))
    with pytest.raises(InvalidValue, match="^compile='fast' .*inductor"):
        Trainer(compile="fast")
    with pytest.raises(InvalidValue, match="^max_epochs=0 "):
        Trainer(max_epochs=0)


def test_rules_need_a_class_that_enforces_them():
    class Loose:  # a class of tlexp's (the annotations of other packages' classes are not read) that forgot Checked
        __module__ = "tlexp.example"

        def __init__(self, size: Annotated[int, Rule("an integer", lambda v: isinstance(v, int))] = 1):
            self.size = size

    with pytest.raises(TypeError, match="not a tlexp.rules.Checked class"):
        rules_of(Loose)


def test_the_config_layer_imports_no_rule_from_the_classes():
    """tlexp.config reads the rules from the targets' signatures: it imports no strategy, and no constant to say a rule."""
    tree = ast.parse(Path(config.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(module.startswith(("tlexp.strategies", "tlexp.freeze_plan", "tlexp.heads", "tlexp.schedules",
                                      "tlexp.acceleration", "tlexp.data.image_folder")) for module in imported)
    assert not hasattr(config, "RULES")
