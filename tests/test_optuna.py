"""hparams_search=optuna searches the chosen strategy's own keys: the shared head rate and weight decay, plus
conf/hparams_search/space/<strategy>.yaml (picked by conf/hydra/sweeper/optuna_per_strategy.yaml). Every
searched key must exist in the strategy's config, or each trial stops with "Key ... is not in struct"."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

from conftest import CONF_DIR, STRATEGIES, read_json, run_train
from tlexp import config

SHARED = {"strategy.lr_head"}
DECAY = "strategy.optimizer.weight_decay"
OWN = {
    "scratch": {"strategy.lr_backbone", DECAY},
    "frozen": {DECAY},  # the backbone never trains: no backbone rate to search
    "partial": {"strategy.lr_backbone", "strategy.frozen_depth", DECAY},
    "full": {"strategy.lr_backbone", DECAY},
    "gradual": {"strategy.lr_backbone", "strategy.lr_ratio", "strategy.unfreeze_by", DECAY},
    "discriminative": {"strategy.lr_backbone", "strategy.lr_ratio", DECAY},
    "reinit": {"strategy.lr_backbone", "strategy.lr_ratio", "strategy.reinit_stages", DECAY},
    "l2sp": {"strategy.lr_backbone", "strategy.alpha", "strategy.beta"},  # the penalty replaces weight decay
    "lora": {"strategy.lr_lora", "strategy.rank", DECAY},
    "distill": {"strategy.lr_backbone", "strategy.alpha", "strategy.temperature", DECAY},
    "lwf": {"strategy.lr_backbone", "strategy.lambda_old", "strategy.temperature", DECAY},
    "pseudo_label": {"strategy.lr_backbone", "strategy.threshold", DECAY},
    "dann": {"strategy.lr_backbone", "strategy.domain_weight", DECAY},
}


def compose_search(tmp_path, *overrides: str, hydra: bool = True):
    """The config of ``-m hparams_search=optuna <overrides>``, with Hydra's own node (the sweeper) or without."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return compose(config_name="config", return_hydra_config=hydra,
                       overrides=["hparams_search=optuna", f"paths.output_dir={tmp_path}", *overrides])


def search_space(cfg) -> dict:
    """The sweeper's params as Optuna distributions; every one must be a search dimension."""
    distributions, fixed = create_params_from_overrides([f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()])
    assert fixed == {}, fixed
    return distributions


def test_default_search_is_partial_as_before(tmp_path):
    cfg = compose_search(tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.strategy._target_ == "tlexp.strategies.Partial" and cfg.optimized_metric == "val/acc_best"
    assert set(sweeper.params) == SHARED | OWN["partial"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_search_space_follows_the_strategy(tmp_path, strategy):
    """The strategy's own keys are searched, and both ends of every dimension compose into the strategy (no
    "not in struct") and pass the config checks; ranges that depend on the model (frozen_depth against the
    stage count) are the strategy's to check."""
    space = search_space(compose_search(tmp_path, f"strategy={strategy}"))
    assert set(space) == SHARED | OWN[strategy]
    for end in ("low", "high"):
        ends = [f"{key}={getattr(distribution, end)}" for key, distribution in space.items()]
        config.check(compose_search(tmp_path, f"strategy={strategy}", *ends, hydra=False))


def test_partial_searches_every_frozen_depth_of_efficientnet_lite0(tmp_path):
    """0 (nothing frozen) to 8 (stem and blocks.0-6); under this sweeper range(a,b) would include b."""
    depth = search_space(compose_search(tmp_path, "strategy=partial"))["strategy.frozen_depth"]
    assert (depth.low, depth.high, depth.step) == (0, 8, 1)


@pytest.mark.slow
def test_two_trials_of_gradual_search_its_own_keys(tmp_path):
    """A real search: 2 trials of strategy=gradual, whose lr_ratio and unfreeze_by reach the strategy."""
    result = run_train(tmp_path, "hparams_search=optuna", "strategy=gradual", "hydra.sweeper.n_trials=2",
                       "trainer.max_epochs=1", multirun=True, check=False)
    assert result.returncode == 0, result.stdout[-6000:]
    records = [read_json(path) for path in tmp_path.rglob("result.json")]
    assert len(records) == 2 and all(r["status"] == "completed" and r["strategy"] == "gradual" for r in records), records
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == SHARED | OWN["gradual"]
    assert best["best_value"] == pytest.approx(max(r["val_acc_best"] for r in records))
