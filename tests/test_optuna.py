"""hparams_search=optuna: tlexp's Optuna sweeper (src/hydra_plugins/tlexp_sweepers) searches the chosen
strategy's own keys: the shared head rate and weight decay, plus conf/hparams_search/space/<strategy>.yaml
(picked by conf/hydra/sweeper/optuna_per_strategy.yaml), mapped onto Optuna by tlexp.search_space. Every
searched key must exist in the strategy's config, or each trial stops with "Key ... is not in struct"."""

from __future__ import annotations

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import CONF_DIR, NO_REPORT, STRATEGIES, read_json
from tlexp import config, search_space, study as studies
from tlexp.errors import InvalidValue

SHARED = {"strategy.lr_head"}
DECAY = "strategy.optimizer.weight_decay"
OWN = {
    "scratch": {"strategy.lr_backbone", DECAY},
    "frozen": {DECAY},  # the backbone never trains: no backbone rate to search
    "partial": {"strategy.lr_backbone", "strategy.frozen_depth", DECAY},
    "lpft": {"strategy.lr_backbone", "strategy.lr_probe", "strategy.probe_epochs", DECAY},
    "full": {"strategy.lr_backbone", DECAY},
    "gradual": {"strategy.lr_backbone", "strategy.lr_ratio", "strategy.unfreeze_by", DECAY},
    "discriminative": {"strategy.lr_backbone", "strategy.lr_ratio", DECAY},
    "reinit": {"strategy.lr_backbone", "strategy.lr_ratio", "strategy.reinit_stages", DECAY},
    "l2sp": {"strategy.lr_backbone", "strategy.alpha", "strategy.beta"},  # the penalty replaces weight decay
    "bss": {"strategy.lr_backbone", "strategy.bss_weight", "strategy.bss_k", DECAY},
    "lora": {"strategy.lr_lora", "strategy.rank", DECAY},
    "distill": {"strategy.lr_backbone", "strategy.alpha", "strategy.temperature", DECAY},
    "lwf": {"strategy.lr_backbone", "strategy.lambda_old", "strategy.temperature", DECAY},
    "pseudo_label": {"strategy.lr_backbone", "strategy.threshold", DECAY},
    "dann": {"strategy.lr_backbone", "strategy.domain_weight", DECAY},
    "bitfit": {"strategy.lr_backbone", DECAY},  # the biases' rate
    "ssf": {"strategy.lr_backbone", DECAY},  # the scales' and shifts' rate
    "surgical": {"strategy.lr_backbone", DECAY},  # not the stage set: the user's question, swept on the command line
}


def compose_search(tmp_path, *overrides: str, hydra: bool = True):
    """The config of ``-m hparams_search=optuna <overrides>``, with Hydra's own node (the sweeper) or without."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return compose(config_name="config", return_hydra_config=hydra,
                       overrides=["hparams_search=optuna", f"paths.output_dir={tmp_path}", *overrides])


def sweeper_space(cfg) -> dict:
    """The sweeper's params as Optuna distributions; every one must be a search dimension."""
    distributions, fixed = search_space.parse(search_space.as_overrides(cfg.hydra.sweeper.params))
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
    """The strategy's own keys are searched, the race reads the same space (search_space.strategy_space), and
    both ends of every dimension compose into the strategy (no "not in struct") and pass the config checks;
    ranges that depend on the model (frozen_depth against the stage count) are the strategy's to check."""
    space = sweeper_space(compose_search(tmp_path, f"strategy={strategy}"))
    assert set(space) == SHARED | OWN[strategy]
    assert search_space.parse(search_space.as_overrides(search_space.strategy_space(strategy)))[0] == space
    for end in ("low", "high"):
        ends = [f"{key}={getattr(distribution, end)}" for key, distribution in space.items()]
        config.check(compose_search(tmp_path, f"strategy={strategy}", *ends, hydra=False))


def test_partial_searches_every_frozen_depth_of_efficientnet_lite0(tmp_path):
    """0 (nothing frozen) to 8 (stem and blocks.0-6); under this sweeper range(a,b) would include b."""
    depth = sweeper_space(compose_search(tmp_path, "strategy=partial"))["strategy.frozen_depth"]
    assert (depth.low, depth.high, depth.step) == (0, 8, 1)


def test_the_sweep_grammar_maps_onto_optuna_distributions():
    distributions, fixed = search_space.parse([
        "a=tag(log, interval(1e-5, 1e-2))", "b=interval(0.3, 1.0)", "c=int(interval(1, 3))", "d=range(2, 8, 2)",
        "e=choice(sgd, adam)", "f=range(0.1, 0.5, 0.2)", "g=7", "c=int(interval(1, 4))"])
    assert distributions == {
        "a": FloatDistribution(1e-5, 1e-2, log=True), "b": FloatDistribution(0.3, 1.0),
        "c": IntDistribution(1, 4), "d": IntDistribution(2, 8, step=2),
        "e": CategoricalDistribution(["sgd", "adam"]), "f": FloatDistribution(0.1, 0.5, step=0.2)}
    assert fixed == {"g": "7"}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    overrides = dict(o.split("=", 1) for o in search_space.suggest(trial, distributions))
    assert 1 <= int(overrides["c"]) <= 4 and overrides["e"] in ("sgd", "adam") and int(overrides["d"]) in (2, 4, 6, 8)


def test_a_strategy_without_a_space_is_named():
    with pytest.raises(InvalidValue, match="strategy='nope' is not accepted; accepted: a strategy with a search space .*gradual"):
        search_space.strategy_space("nope")


@pytest.mark.slow
def test_a_search_with_a_storage_continues(tmp_path, main_inprocess):
    """2 trials of strategy=gradual in an SQLite study; the same command again (the config sets hydra.mode=MULTIRUN)
    keeps them and runs none again; a larger budget adds a trial with new settings. lr_ratio and unfreeze_by reach the
    strategy."""
    db = tmp_path / "study.db"
    search = ("hparams_search=optuna", "strategy=gradual", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}",
              f"hydra.sweeper.storage=sqlite:///{db}", NO_REPORT)
    for n_trials in (2, 2, 3):
        code, output = main_inprocess(tmp_path, *search, f"hydra.sweeper.n_trials={n_trials}")
        assert code == 0, output[-4000:]
    study = optuna.load_study(study_name="tlexp", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3
    records = {int(path.parent.name): read_json(path) for path in tmp_path.glob("*/result.json")}
    assert sorted(records) == [0, 1, 2] and all(r["status"] == "completed" and r["strategy"] == "gradual" for r in records.values())
    for trial in study.trials:  # each trial's job ran with the trial's settings and returned its val/acc_best
        assert trial.value == pytest.approx(records[trial.number]["val_acc_best"])
        assert {f"strategy.lr_ratio={trial.params['strategy.lr_ratio']}",
                f"strategy.unfreeze_by={trial.params['strategy.unfreeze_by']}"} <= set(records[trial.number]["overrides"])
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == SHARED | OWN["gradual"] and best["trials"] == 3
    assert best["best_value"] == pytest.approx(max(r["val_acc_best"] for r in records.values()))


@pytest.mark.slow
def test_a_proposal_the_strategy_refuses_costs_no_trial(tmp_path, main_inprocess):
    """lpft's probe_epochs must leave an epoch to fine-tune: proposals of 2 or 3 in a 2-epoch search are refused by the
    strategy, not counted and leave no job directory; the 2 trials of the budget are runnable ones."""
    db = tmp_path / "study.db"
    code, output = main_inprocess(tmp_path, "hparams_search=optuna", "strategy=lpft", "trainer.max_epochs=2",
                                  "strategy.probe_epochs=int(interval(0,3))", "hydra.sweeper.n_trials=2",
                                  f"hydra.sweep.dir={tmp_path}", f"hydra.sweeper.storage=sqlite:///{db}", NO_REPORT)
    assert code == 0, output[-4000:]
    study = optuna.load_study(study_name="tlexp", storage=f"sqlite:///{db}")
    refused = [t for t in study.trials if t.user_attrs.get(studies.RERUN) == studies.REFUSED]
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert refused and all(t.params["strategy.probe_epochs"] >= 2 for t in refused)
    assert len(completed) == 2 == studies.used(study) and all(t.params["strategy.probe_epochs"] <= 1 for t in completed)
    assert sorted(int(p.parent.name) for p in tmp_path.glob("*/result.json")) == sorted(t.number for t in completed)


def _open_storage(url: str, queue) -> None:
    from tlexp import study

    try:
        study.storage(url)
        queue.put("ok")
    except Exception as error:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(error).__name__}: {error}")


def test_workers_creating_one_new_database_at_once_all_open_it(tmp_path):
    """Three workers starting one race on a fresh SQLite file: without retrying, one of them dies on the schema's
    version row (IntegrityError) or a locked database; every one must open it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    url = f"sqlite:///{tmp_path / 'race.db'}"
    workers = [context.Process(target=_open_storage, args=(url, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [queue.get(timeout=5) for _ in workers] == ["ok"] * 3
