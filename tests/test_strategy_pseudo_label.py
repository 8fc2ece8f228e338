"""Pseudo-labelling, measured: ``data.unlabeled=rest`` is exactly the training pool minus the labeled subset;
after a round the confident predictions (and only they) join the training set, their count and accuracy
logged as a hand computation gives them; the unlabeled images' true labels never reach the loss; the first
round is bit for bit ``full``; a resume across a round boundary is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import read_json, read_metrics
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_bn_policies import bn_buffers, changed
from test_finetuning import SEED, trainer

from tlexp.backbone import create_backbone
from tlexp.data import Synthetic
from tlexp.errors import InvalidValue
from tlexp.strategies import Full, PseudoLabel
from tlexp.strategies.pseudo_label import UnlabeledImages

NAME = "test_efficientnet"
SETTINGS = {"lr_head": 0.05, "lr_backbone": 0.01, "schedule": "constant", "threshold": 0.8}
"""Rates that make the tiny model confident within one epoch, so that the threshold splits the unlabeled set."""


def data(**kwargs) -> Synthetic:
    """128 training images: 32 carved for validation, 24 labeled (the fraction), 72 the rest."""
    return Synthetic(train_per_class=32, image_size=32, val_size=32, batch_size=16, seed=SEED,
                     **{"fraction": 0.25, "unlabeled": "rest", **kwargs})


def build(strategy_cls=PseudoLabel, datamodule=None, **kwargs):
    torch.manual_seed(SEED)
    backbone = create_backbone(NAME)
    datamodule = (datamodule or data()).prepare_for(backbone)
    return datamodule, strategy_cls(backbone, datamodule.num_classes, **kwargs)


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class SecondRound(Callback):
    """What the trainer holds when the second round starts: the model, the training set, the epoch's batches."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.weights, self.train_set, self.batches = weights(pl_module), trainer.datamodule.training_set(), trainer.num_training_batches


def fit_two_rounds(shuffle_hidden_labels: bool = False):
    datamodule, module = build(rounds=2, **SETTINGS)
    if shuffle_hidden_labels:  # the data's, before the strategy takes them
        hidden = datamodule.extra_split("unlabeled").labels
        hidden[:] = hidden[torch.randperm(len(hidden), generator=torch.Generator().manual_seed(0)).numpy()]
    second = SecondRound()
    fit = trainer(2, None, [second])
    fit.fit(module, datamodule=datamodule)
    return datamodule, module, fit, second


@pytest.fixture(scope="module")
def two_rounds():
    return fit_two_rounds()


def test_rest_is_the_pool_minus_the_labeled_subset(tmp_path):
    datamodule = data(output_dir=str(tmp_path)).prepare_for(create_backbone(NAME))
    indices = json.loads((tmp_path / "subset_indices.json").read_text())
    train, val, unlabeled = set(indices["train"]), set(indices["val"]), set(indices["unlabeled"])
    pool = len(datamodule.load()[0].labels)  # the synthetic training split; its test split is separate images
    assert not (unlabeled & train) and not (unlabeled & val)
    assert len(train) + len(val) + len(unlabeled) == pool == 128 and indices["unlabeled_size"] == len(unlabeled) == 72
    unlabeled_images = UnlabeledImages(datamodule)  # the strategy's view of the data's unlabeled images
    assert len(unlabeled_images) == 72 and len(datamodule.train_set) == len(train) == 24
    images, positions = next(iter(unlabeled_images.loader()))  # no labels: positions, in order
    assert images.dtype == torch.uint8 and torch.equal(positions, torch.arange(16))
    assert torch.equal(images, unlabeled_images.dataset.images[:16])
    limited = data(unlabeled_limit=30).prepare_for(create_backbone(NAME))
    assert len(UnlabeledImages(limited)) == 30 and set(limited.indices["unlabeled"]) <= unlabeled
    assert data(unlabeled=None).prepare_for(create_backbone(NAME)).extra_split("unlabeled") is None
    assert len(UnlabeledImages(data(fraction=1.0).prepare_for(create_backbone(NAME)))) == 0


def hand_pseudo_labels(datamodule, state: dict, threshold: float):
    """The rule by hand, from the model of the round's end: eval mode, all unlabeled images at once."""
    _, model = build(rounds=2, **SETTINGS)
    model.load_state_dict(state)
    with torch.no_grad():
        probabilities = model.eval()(datamodule.normalize(UnlabeledImages(datamodule).dataset.images)).softmax(1)
    confidence, predicted = probabilities.max(1)
    chosen = torch.nonzero(confidence >= threshold).flatten()
    return chosen, predicted[chosen]


def test_confident_predictions_become_labels_counted_and_measured(two_rounds):
    datamodule, module, fit, second = two_rounds
    chosen, labels = hand_pseudo_labels(datamodule, second.weights, SETTINGS["threshold"])
    pseudo = module.pseudo
    assert pseudo["round"] == 1 and 0 < len(chosen) < len(module.unlabeled(datamodule))
    assert torch.equal(pseudo["indices"], chosen) and torch.equal(pseudo["labels"], labels)
    hidden = module.unlabeled(datamodule).labels()
    accuracy = (hidden[chosen] == labels).float().mean().item()
    metrics = fit.callback_metrics
    assert metrics["pseudo/count"].item() == len(chosen) and metrics["pseudo/threshold"].item() == pytest.approx(0.8)
    assert metrics["pseudo/accuracy"].item() == pytest.approx(accuracy) and accuracy > 0.25  # chance: 0.25
    print(f"round 1: {len(chosen)} of {len(hidden)} unlabeled images pseudo-labeled, accuracy {accuracy:.3f}")


def test_second_round_trains_on_labeled_plus_confident(two_rounds):
    datamodule, module, _, second = two_rounds
    labeled, count = len(datamodule.train_set), len(module.pseudo["indices"])
    assert len(second.train_set) == labeled + count and second.batches == math.ceil((labeled + count) / 16)
    assert [second.train_set[i][1] for i in range(labeled)] == [datamodule.train_set[i][1] for i in range(labeled)]
    for k, (index, label) in enumerate(zip(module.pseudo["indices"], module.pseudo["labels"])):
        image, target = second.train_set[labeled + k]
        assert torch.equal(image, module.unlabeled(datamodule).dataset.images[index]) and target == label
    scheduler = module.trainer.lr_scheduler_configs[0].scheduler  # two labeled epochs' worth of schedule
    assert scheduler.last_epoch == pytest.approx(2 * scheduler.steps_per_epoch)


def test_relabelling_leaves_batchnorm_statistics_alone(two_rounds):
    """Predicting in eval mode and restoring the modes afterwards: under ``bn_trainable=frozen_stats`` (the
    default) no running statistic moves through both rounds, as in every strategy."""
    _, module, _, _ = two_rounds
    _, fresh = build(rounds=2, **SETTINGS)
    assert bn_buffers(fresh) and changed(bn_buffers(fresh), bn_buffers(module)) == set()


def test_hidden_labels_never_reach_the_loss(two_rounds):
    """Shuffling the unlabeled images' true labels changes the measured accuracy and nothing else."""
    _, module, fit, _ = two_rounds
    _, shuffled, shuffled_fit, _ = fit_two_rounds(shuffle_hidden_labels=True)
    before, after = weights(module), weights(shuffled)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(module.pseudo["labels"], shuffled.pseudo["labels"])
    assert fit.callback_metrics["pseudo/accuracy"] != shuffled_fit.callback_metrics["pseudo/accuracy"]


def test_first_round_is_full_bit_for_bit():
    results = []
    for strategy_cls, kwargs in ((Full, {}), (PseudoLabel, {"rounds": 1, "threshold": 0.9})):
        datamodule, module = build(strategy_cls, **kwargs, **{k: v for k, v in SETTINGS.items() if k != "threshold"})
        trainer(1, None).fit(module, datamodule=datamodule)
        results.append(weights(module))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_bad_settings_are_refused(tmp_path):
    for key, value in (("rounds", 0), ("rounds", 1.5), ("rounds", True), ("threshold", -0.1), ("threshold", 1.5),
                       ("threshold", "high")):
        with pytest.raises(InvalidValue) as error:
            build(**{key: value})
        assert error.value.name == key
    for key, value in (("unlabeled", "all"), ("unlabeled", True), ("unlabeled_limit", 0), ("unlabeled_limit", 2.5)):
        with pytest.raises(InvalidValue) as error:
            data(**{key: value})
        assert error.value.name == key
    for datamodule, kwargs, name in ((data(unlabeled=None), {}, "unlabeled"), (data(), {"rounds": 3}, "rounds")):
        _, module = build(datamodule=datamodule, **kwargs)
        with pytest.raises(InvalidValue) as error:
            trainer(2, tmp_path).fit(module, datamodule=datamodule)
        assert error.value.name == name


class StopAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.slow
def test_resume_across_a_round_boundary_is_exact(tmp_path):
    """4 epochs in 2 rounds, stopped after the first round (its last checkpoint holds the pseudo-labels) and
    resumed, end bit-identical to the uninterrupted run."""
    datamodule, module = build(rounds=2, **SETTINGS)
    trainer(4, tmp_path / "a").fit(module, datamodule=datamodule)
    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    datamodule, stopped = build(rounds=2, **SETTINGS)
    trainer(4, tmp_path / "b", [last, StopAfter(1)]).fit(stopped, datamodule=datamodule)
    assert stopped.pseudo["round"] == 1 and torch.load(last.last_model_path, weights_only=True)["pseudo_labels"]["round"] == 1
    datamodule, resumed = build(rounds=2, **SETTINGS)
    trainer(4, tmp_path / "c").fit(resumed, datamodule=datamodule, ckpt_path=last.last_model_path)
    assert torch.equal(resumed.pseudo["indices"], module.pseudo["indices"])
    before, after = weights(module), weights(resumed)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pseudo_label_end_to_end(tmp_path, main_direct):
    """The job strategy=pseudo_label with no data.unlabeled given: rest is taken, the round logged. In this process
    (``main_direct``: the job train.py runs, result.json and metrics.csv included, without Hydra's runtime, which the
    run does not use); train.py itself runs pseudo_label in the shared sweep (test_strategies_e2e.py)."""
    code, output = main_direct(tmp_path, "strategy=pseudo_label", "data.fraction=0.25", "strategy.threshold=0.3")
    assert code == 0, output[-6000:]
    record = read_json(tmp_path / "result.json")
    assert record["status"] == "completed" and record["strategy"] == "pseudo_label" and 0 <= record["test_acc"] <= 1
    assert read_json(tmp_path / "subset_indices.json")["unlabeled_size"] == 256 - 32 - 56
    rows = [row for row in read_metrics(tmp_path) if "pseudo/count" in row]
    assert [(int(r["epoch"]), r["pseudo/round"], r["pseudo/threshold"]) for r in rows] == [(0, 1.0, pytest.approx(0.3))]
