"""The config layer (``tlexp.config``): every composed config is checked once, before anything is
built; unknown keys name the accepted ones; the strategy registry and conf/strategy agree."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR, compose_config
from tlexp import config
from tlexp.errors import ConfigError, InvalidValue
from tlexp.strategies import STRATEGIES


def composed(*overrides: str):
    """The composed config as a run sees it (outside a Hydra run, the output dir is not resolvable)."""
    cfg = compose_config(*overrides)
    cfg.paths.output_dir = "/tmp/tlexp-test-config"
    return cfg


def test_registry_names_every_strategy_config():
    files = {path.stem for path in (CONF_DIR / "strategy").glob("*.yaml") if not path.stem.startswith("_")}
    assert files == set(STRATEGIES)
    for name, cls in STRATEGIES.items():
        node = OmegaConf.load(CONF_DIR / "strategy" / f"{name}.yaml")
        assert node._target_ == f"tlexp.strategies.{cls.__name__}"


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("model", ["tiny", "efficientnet_lite0", "timm"])
def test_every_shipped_config_passes(strategy, model):
    config.check(composed(f"strategy={strategy}", f"model={model}"))


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_every_logger_config_passes(logger):
    config.check(composed(f"logger={logger}"))


@pytest.mark.parametrize("node, key, close", [
    ("strategy", "frozn_depth", "strategy.frozen_depth"),
    ("data", "batchsize", "data.batch_size"),
    ("model", "wieghts", "model.weights"),
    ("trainer", "max_epoch", "trainer.max_epochs"),
])
def test_unknown_key_names_the_closest_accepted_one(node, key, close):
    cfg = composed("strategy=partial")
    with open_dict(cfg):
        cfg[node][key] = 3
    with pytest.raises(ConfigError) as error:
        config.check(cfg)
    assert error.value.key == f"{node}.{key}"
    assert f"did you mean {close}?" in str(error.value)


@pytest.mark.parametrize("override, key", [
    ("strategy.lr_decay=1.5", "strategy.lr_decay"),
    ("strategy.schedule=cosine", "strategy.schedule"),
    ("strategy.bn_trainable=train", "strategy.bn_trainable"),
    ("strategy.head=transformer", "strategy.head"),
    ("data.batch_size=0", "data.batch_size"),
])
def test_bad_values_are_refused_before_anything_is_built(override, key):
    with pytest.raises(ConfigError) as error:
        config.check(composed(override))
    assert error.value.key == key and "accepted:" in str(error.value)


def test_library_errors_come_out_with_the_full_key():
    """A library class knows its parameter (``frozen_depth``); the node it was built from adds the path."""
    error = ConfigError.at("strategy", InvalidValue("frozen_depth", 9, "an integer in [0, 6]"))
    assert error.key == "strategy.frozen_depth" and str(error).startswith("strategy.frozen_depth=9 ")
