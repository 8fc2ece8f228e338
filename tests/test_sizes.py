"""The ``auto`` data sizes (``tlexp.data.sizes``): the rules at both ends (a few images per class, a million
labels), the former defaults they must reproduce, explicit values used as given, and every data source
trained end to end at its defaults on a dataset near its lower limit."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import read_json
from PIL import Image
from test_data_sources import PLAIN, datasets, hf_split, needs_datasets, write_eurosat

from tlexp.data import Synthetic, sizes
from tlexp.data.subset import stratified_split
from tlexp.errors import InvalidValue
from tlexp.strategies.pseudo_label import UnlabeledImages

QUICK = ("strategy=full", "trainer.max_epochs=1", "data.image_size=32")


def balanced(classes: int, per_class: int) -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(classes), per_class))


def carved(rule: sizes.Carve, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count, _ = rule.count(labels, "val_size")
    return stratified_split(labels, count, seed=0, keep=rule.keep)


# --- the rules ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("classes, per_class, held", [(2, 20, 8), (10, 16, 32), (10, 3, 10), (10, 2, 10), (3, 4, 3)])
def test_val_carve_of_a_few_images_per_class(classes, per_class, held):
    """A fifth, at least one per class, and never a class's last training image."""
    labels = balanced(classes, per_class)
    rest, val = carved(sizes.VAL, labels)
    assert len(val) == held and len(rest) + len(val) == len(labels)
    assert np.bincount(labels[val], minlength=classes).min() >= 1
    assert np.bincount(labels[rest], minlength=classes).min() >= 1


def test_test_carve_leaves_a_validation_and_a_training_image_per_class():
    labels = balanced(10, 3)
    rest, test = carved(sizes.TEST, labels)
    assert np.bincount(labels[test]).tolist() == [1] * 10 and np.bincount(labels[rest]).min() == 2
    rest, val = carved(sizes.VAL, labels[rest])
    assert len(val) == 10 and len(rest) == 10


def test_a_class_too_small_for_auto_is_a_clear_error():
    labels = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(InvalidValue, match="at least 2 images.*class 2 has 1") as error:
        sizes.VAL.count(labels, "val_split")
    assert error.value.name == "val_split" and error.value.value == "auto"
    with pytest.raises(InvalidValue, match="at least 3 images.*class 1 has 2"):
        sizes.TEST.count(labels[:5], "test_size")


def test_a_million_labels():
    labels = balanced(10, 100_000)
    assert sizes.VAL.count(labels, "val_size")[0] == 500
    assert sizes.TEST.count(labels, "test_size") == (10_000, "capped at 10,000; 20% of 1,000,000 is 200,000")
    rest, test = carved(sizes.TEST, labels)
    assert len(test) == 10_000 and np.bincount(labels[test]).tolist() == [1000] * 10
    assert sizes.batch_size(64, 50_000)[0] == 64 and sizes.cap_test_split(1_000_000)[0] == 10_000
    assert sizes.unlabeled_cap(50_000, 900_000)[0] == 500_000


@pytest.mark.parametrize("pool, rule, expected", [
    (60_000, sizes.VAL, 500),  # Fashion-MNIST's training split
    (1_348, "digits", 200),  # digits after its test split
    (256, "synthetic", 32),
    (1_797, "digits_test", 449),
])
def test_auto_gives_the_former_defaults(pool, rule, expected):
    from tlexp.data import Digits

    rule = {"digits": Digits.val_carve, "synthetic": Synthetic.val_carve, "digits_test": Digits.test_carve}.get(rule, rule)
    labels = np.arange(pool) % 10
    assert rule.count(labels, "val_size")[0] == expected
    # an auto carve holds out exactly what the former number held out: the same images
    assert np.array_equal(stratified_split(labels, expected, 0, keep=rule.keep)[1], stratified_split(labels, expected, 0)[1])


def test_auto_share_is_the_former_image_folder_share():
    labels = balanced(3, 333)
    count, _ = sizes.Carve(0.2, sizes.TEST_CAP, 1).count(labels, "val_split")
    assert np.array_equal(stratified_split(labels, count, 0, keep=1)[1], stratified_split(labels, 0.2, 0)[1])


@pytest.mark.parametrize("default, train, expected", [
    (64, 2_980, 64), (64, 600, 64), (64, 1_148, 64), (32, 224, 32),  # the default runs keep their batch
    (64, 102, 26), (32, 112, 28), (32, 19, 8), (64, 5, 5), (64, 256, 64), (64, 255, 64), (64, 200, 50),
])
def test_batch_size(default, train, expected):
    assert sizes.batch_size(default, train)[0] == expected


def test_batch_size_counts_the_images_pseudo_labels_may_add():
    assert sizes.batch_size(64, 20, 1_128) == (64, "20 training images + 1,128 unlabeled")
    assert sizes.batch_size(64, 20, 100)[0] == 30


def test_unlabeled_cap():
    assert sizes.unlabeled_cap(24, 72)[0] == 2_000 and sizes.unlabeled_cap(2_980, 56_520)[0] == 29_800


# --- in the datamodule ---------------------------------------------------------------------------------------

def test_explicit_values_are_used_as_given(tmp_path):
    data = Synthetic(num_classes=2, train_per_class=20, val_size=10, batch_size=64, test_limit=None,
                     output_dir=str(tmp_path)).prepare_for(PLAIN)
    assert (len(data.train_set), len(data.val_set), data.batch_size) == (30, 10, 64)
    assert data.auto_sizes == {} and "auto" not in read_json(tmp_path / "subset_indices.json")
    assert data.train_dataloader().batch_size == 64


def test_auto_values_reach_the_loaders_the_log_and_the_indices(tmp_path, caplog):
    with caplog.at_level("INFO", logger="tlexp"):
        data = Synthetic(num_classes=2, train_per_class=20, unlabeled="rest", fraction=0.5,
                         output_dir=str(tmp_path)).prepare_for(PLAIN)
    assert data.auto_sizes == {"val_size": 8, "test_limit": 10_000, "unlabeled_limit": 2_000, "batch_size": 8}
    unlabeled = UnlabeledImages(data)  # pseudo_label's view of the data's unlabeled images
    assert (len(data.train_set), len(data.val_set), len(unlabeled)) == (16, 8, 16)
    assert all(loader.batch_size == 8 for loader in (data.train_dataloader(), data.val_dataloader(), unlabeled.loader()))
    assert read_json(tmp_path / "subset_indices.json")["auto"] == data.auto_sizes
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert lines == ["data: val_size auto -> 8 (20% of 40), test_limit auto -> 10000 (all of 64), unlabeled_limit auto "
                     "-> 2000 (max(2,000, 10 x 16 labeled); 16 available), batch_size auto -> 8 (32 cut for 4 steps an "
                     "epoch on 16 training images + 16 unlabeled)"]


def test_test_limit_auto_keeps_a_stratified_10000(tmp_path):
    data = Synthetic(num_classes=2, train_per_class=8, test_per_class=5_001, source_size=4, image_size=8).prepare_for(PLAIN)
    assert len(data.test_set) == 10_000 and np.bincount(data.test_set.labels.numpy()).tolist() == [5_000, 5_000]


# --- every source at its defaults, near its lower limit, through the training task ---------------------------

@pytest.fixture
def trained(run_task, caplog):
    """``run_task`` with the log captured: ``call(run_dir, *overrides) -> (the run's record fields, its log)``."""

    def call(run_dir, *overrides: str) -> tuple[dict, str]:
        with caplog.at_level(logging.INFO):
            return run_task(run_dir, *overrides), caplog.text

    return call


def finished(run_dir, record: dict, log: str, sizes_: tuple[int, int, int], auto: dict) -> None:
    assert 0 <= record["test_acc"] <= 1
    assert (record["train_size"], record["val_size"], record["test_size"]) == sizes_
    assert json.loads((run_dir / "subset_indices.json").read_text())["auto"] == auto
    assert log.count("data: ") == 1 and f"batch_size auto -> {auto['batch_size']} " in log


def test_torchvision_eurosat_of_160_images(tmp_path, trained):
    """The issue's case: data=torchvision data.name=EuroSAT on 10 classes x 16 images, every other value default."""
    root = write_eurosat(tmp_path / "torchvision", classes=[f"class{i}" for i in range(10)], per_class=16)
    run_dir = tmp_path / "run"
    record, log = trained(run_dir, "data=torchvision", "data.name=EuroSAT", f"data.root={root}", "data.download=false", *QUICK)
    finished(run_dir, record, log, (102, 26, 32), {"test_size": 32, "val_size": 26, "test_limit": 10_000, "batch_size": 26})


@needs_datasets
def test_hf_save_to_disk_of_120_images(tmp_path, trained):
    folder = tmp_path / "saved"
    datasets.DatasetDict(train=hf_split(120, classes=("a", "b", "c", "d"))).save_to_disk(str(folder))
    run_dir = tmp_path / "run"
    record, log = trained(run_dir, "data=hf", f"data.path={folder}", *QUICK)
    finished(run_dir, record, log, (77, 19, 24), {"test_size": 24, "val_size": 19, "test_limit": 10_000, "batch_size": 20})


def test_image_folder_of_2_classes_x_12(tmp_path, trained):
    for label, name in enumerate(("cats", "dogs")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((12, 12, 3), 100 * label + i, dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    run_dir = tmp_path / "run"
    record, log = trained(run_dir, "data=image_folder", f"data.root={tmp_path / 'images'}", *QUICK)
    finished(run_dir, record, log, (19, 5, 5), {"val_split": 5, "test_limit": 10_000, "batch_size": 8})


def test_digits_at_a_small_fraction(tmp_path, trained):
    run_dir = tmp_path / "run"
    record, log = trained(run_dir, "data=digits", "data.fraction=0.02", *QUICK)
    finished(run_dir, record, log, (20, 200, 449), {"test_size": 449, "val_size": 200, "test_limit": 10_000, "batch_size": 8})
