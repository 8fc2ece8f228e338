"""The datamodules: the seeded, stratified, nested ``data.fraction`` subset; the fixed validation
split; model-driven preprocessing; and each data source (Fashion-MNIST, digits, image folders)."""

from __future__ import annotations

import json

import hydra
import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

import tlexp.data.fashion_mnist as fashion_mnist
from conftest import STRATEGIES, SWEEP_FRACTION, compose_config, read_json
from tlexp.data import Digits, FashionMNIST, ImageFolder
from tlexp.data.subset import stratified_fraction, stratified_split
from tlexp.errors import InvalidValue
from tlexp.train import build

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}


def ready(datamodule, data_config=IMAGENET):
    return datamodule.prepare_for(data_config)


@pytest.fixture(scope="module")
def digits_cfg():
    return compose_config("data=digits")


def digits(digits_cfg, tmp_path=None, **overrides):
    """The Digits datamodule of conf/data/digits.yaml with ``overrides``, ready to use."""
    node = OmegaConf.merge(digits_cfg.data, {"output_dir": str(tmp_path) if tmp_path else None, **overrides})
    return ready(hydra.utils.instantiate(node))


def class_counts(labels, num_classes=10):
    return np.bincount(np.asarray(labels), minlength=num_classes)


def train_pool(datamodule):
    """Indices (into the source's training split) that the fraction is drawn from: all but validation."""
    full = Digits(fraction=1.0, val_size=datamodule.val_size, test_size=datamodule.test_size,
                  split_seed=datamodule.split_seed, image_size=8)
    return np.array(ready(full).indices["train"])


# --- the fraction subset ----------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.1, 0.5, 1.0])
def test_stratified_fraction_counts(fraction):
    labels = np.repeat(np.arange(4), [200, 50, 7, 1])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    chosen = stratified_fraction(labels, fraction, seed=3)
    assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
    counts = class_counts(labels[chosen], 4)
    expected = [max(1, round(fraction * n)) for n in (200, 50, 7, 1)]
    assert counts.tolist() == expected


def test_fraction_is_stratified_in_the_datamodule(digits_cfg):
    dm = digits(digits_cfg, fraction=0.1, seed=1)
    pool = train_pool(dm)
    all_labels = Digits(image_size=8).load()[0].labels  # the labels the indices refer to
    pool_counts = class_counts(all_labels[pool])
    chosen = np.array(dm.indices["train"])
    assert set(chosen) <= set(pool)
    counts = class_counts(all_labels[chosen])
    assert counts.tolist() == [max(1, round(0.1 * n)) for n in pool_counts]
    assert np.all(np.abs(counts / pool_counts - 0.1) < 0.02)
    assert counts.sum() == len(dm.train_set)
    assert torch.equal(torch.as_tensor(all_labels[chosen]), dm.train_set.labels)


def test_fraction_keeps_one_example_per_class(digits_cfg):
    dm = digits(digits_cfg, fraction=0.001)
    assert class_counts(dm.train_set.labels).tolist() == [1] * 10


def test_fraction_is_seeded(digits_cfg, tmp_path):
    first = digits(digits_cfg, tmp_path / "a", fraction=0.1, seed=1).indices["train"]
    again = digits(digits_cfg, tmp_path / "b", fraction=0.1, seed=1).indices["train"]
    other = digits(digits_cfg, tmp_path / "c", fraction=0.1, seed=2).indices["train"]
    assert first == again
    assert first != other and len(first) == len(other)
    assert read_json(tmp_path / "a" / "subset_indices.json") == read_json(tmp_path / "b" / "subset_indices.json")


def test_fraction_subsets_are_nested(digits_cfg):
    subsets = [set(digits(digits_cfg, fraction=f, seed=7).indices["train"]) for f in (0.02, 0.1, 0.3, 0.7, 1.0)]
    for smaller, larger in zip(subsets, subsets[1:]):
        assert smaller < larger
    assert subsets[-1] == set(train_pool(digits(digits_cfg, fraction=1.0)))


@pytest.mark.slow
def test_subset_identical_across_strategies(strategy_sweep, cfg):
    """Every strategy of one train.py sweep (same seed) trained on the very same examples."""
    _, runs = strategy_sweep
    assert sorted(runs) == sorted(STRATEGIES)
    saved = {name: read_json(run_dir / "subset_indices.json") for name, run_dir in runs.items()}
    reference = saved["full"]
    assert reference["fraction"] == SWEEP_FRACTION and reference["seed"] == 42
    labeled = ("train", "val", "test", "fraction", "seed", "split_seed")  # pseudo_label and dann add their own sets
    for name, indices in saved.items():
        assert {k: indices.get(k) for k in labeled} == {k: reference.get(k) for k in labeled}, name
    # and it is the datamodule's own seeded choice
    cfg.data.fraction = SWEEP_FRACTION
    dm = ready(hydra.utils.instantiate(cfg.data))
    assert dm.indices["train"] == reference["train"] and dm.indices["val"] == reference["val"]


def test_indices_saved_in_run_dir(cfg, tmp_path):
    cfg.data.fraction = 0.25
    dm = ready(hydra.utils.instantiate(cfg.data))
    saved = json.loads((tmp_path / "subset_indices.json").read_text())
    assert saved == dm.indices
    assert saved["fraction"] == 0.25 and saved["seed"] == cfg.seed and saved["split_seed"] == 0
    assert len(saved["train"]) == len(dm.train_set) and len(saved["val"]) == len(dm.val_set) == 32  # val_size: auto
    assert not set(saved["train"]) & set(saved["val"])


# --- the validation split -----------------------------------------------------------------------------

def test_validation_split_fixed_across_seeds_and_fractions(digits_cfg):
    runs = [digits(digits_cfg, fraction=f, seed=s) for f, s in ((1.0, 1), (0.1, 1), (0.1, 2), (0.01, 99), (0.5, 3))]
    reference = runs[0].indices["val"]
    for dm in runs:
        assert dm.indices["val"] == reference
        assert len(dm.val_set) == dm.auto_sizes["val_size"] == 200  # never shrunk by the fraction
        assert len(dm.test_set) == runs[0].test_set.__len__()
        assert torch.equal(dm.val_set.images, runs[0].val_set.images)
        assert not set(dm.indices["train"]) & set(reference)
    assert digits(digits_cfg, split_seed=1).indices["val"] != reference  # the split seed alone moves it


@pytest.mark.parametrize("size", [4, 5, 31, 200, 0.1, 0.5])
def test_validation_split_has_exactly_val_size(size):
    """An int ``val_size`` holds out exactly that many (a float: that share), stratified, one per class at least."""
    labels = np.repeat(np.arange(4), [200, 50, 7, 1])
    rest, held = stratified_split(labels, size, seed=0)
    expected = size if isinstance(size, int) else round(size * len(labels))
    assert len(held) == expected and len(rest) + len(held) == len(labels)
    assert not set(rest) & set(held)
    counts = class_counts(labels[held], 4)
    assert counts.min() >= 1
    assert list(counts) == sorted(counts, reverse=True)  # a larger class never gets fewer
    if expected >= 30:  # once the one-per-class minimum stops dominating: proportional
        assert np.all(np.abs(counts - expected * np.array([200, 50, 7, 1]) / len(labels)) < 2)
    assert np.array_equal(held, stratified_split(labels, size, seed=0)[1])


# --- preprocessing --------------------------------------------------------------------------------------

def test_grayscale_becomes_three_channels(digits_cfg):
    dm = digits(digits_cfg, image_size=16, batch_size=8)
    assert dm.train_set.images.shape[1:] == (1, 16, 16)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 16, 16)
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out_labels, labels)
    for c in range(3):
        expected = (images[:, 0].float() / 255 - IMAGENET["mean"][c]) / IMAGENET["std"][c]
        torch.testing.assert_close(out[:, c], expected)


@pytest.mark.parametrize("model", [("model=tiny",), ("model=timm", "model.name=test_resnet")])
def test_preprocessing_follows_timm_data_config(model, tmp_path):
    config = compose_config(*model, "logger=csv")
    config.paths.output_dir = str(tmp_path)
    datamodule, module = build(config)
    expected = timm.data.resolve_model_data_config(module.backbone)
    assert datamodule.mean.flatten().tolist() == pytest.approx(list(expected["mean"]))
    assert datamodule.std.flatten().tolist() == pytest.approx(list(expected["std"]))
    assert datamodule.interpolation == expected["interpolation"]
    assert datamodule.train_set.images.shape[-1] == config.data.image_size  # the size is ours, not timm's


def test_two_models_get_different_statistics(tmp_path):
    """The two tiny test models have different timm statistics, so the test above is not vacuous."""
    a = timm.data.resolve_model_data_config(timm.create_model("test_efficientnet"))
    b = timm.data.resolve_model_data_config(timm.create_model("test_resnet"))
    assert a["mean"] != b["mean"] and a["interpolation"] != b["interpolation"]


def test_setup_before_the_preprocessing_is_known_is_refused():
    """The splits are resized with the model's interpolation: ``prepare_for`` first, which also sets up."""
    with pytest.raises(RuntimeError, match=r"call prepare_for\(backbone\) first"):
        Digits(image_size=8).setup("fit")


# --- data sources -----------------------------------------------------------------------------------------

@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    config = compose_config("data=fashion_mnist", "data.fraction=0.01", "data.image_size=28", "data.download=false")
    config.paths.output_dir = str(tmp_path)
    config.data.root = str(tmp_path / "nothing_here")  # not a folder: falls through to the Debian one
    dm = hydra.utils.instantiate(config.data)
    train, val, test, classes = dm.load()
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert val is None and len(classes) == 10 and classes[0] == "T-shirt/top"
    assert class_counts(train.labels).tolist() == [6000] * 10 and class_counts(test.labels).tolist() == [1000] * 10
    ready(dm)
    assert len(dm.val_set) == 500 and len(dm.test_set) == 10000
    pool_counts = class_counts(np.delete(train.labels, dm.indices["val"]))  # 5950 per class
    assert class_counts(dm.train_set.labels).tolist() == [round(0.01 * n) for n in pool_counts]


def test_fashion_mnist_unreachable_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no_debian_dir")
    (tmp_path / "empty").mkdir()
    dm = FashionMNIST(root=str(tmp_path / "empty"), download=False)
    with pytest.raises(InvalidValue) as error:
        dm.prepare_for(IMAGENET)
    assert error.value.name == "root"
    message = str(error.value)
    assert "Fashion-MNIST IDX files" in message and "no_debian_dir" in message and "apt-get install" in message


def test_digits_offline(digits_cfg):
    dm = digits(digits_cfg)
    assert dm.classes == [str(d) for d in range(10)]
    total = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
    assert total == 1797
    assert len(dm.val_set) == 200 and len(dm.test_set) == round(0.25 * 1797)


def write_images(folder, per_class: dict[str, int], rng):
    for name, count in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            size = (int(rng.integers(10, 30)), int(rng.integers(10, 30)))
            if i % 3 == 0:  # grayscale files too: decoded as RGB
                Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8), mode="L").save(folder / name / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    (folder / next(iter(per_class)) / "notes.txt").write_text("not an image")


def check_batches(dm, expected_len):
    seen = 0
    for images, labels in dm.train_dataloader():
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, dm.image_size, dm.image_size)
        out, _ = dm.on_after_batch_transfer((images, labels), 0)
        assert out.shape[1] == 3 and torch.isfinite(out).all()
        seen += len(labels)
    assert seen == expected_len


def test_image_folder_train_val_layout(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "train", {"cat": 5, "dog": 5, "eel": 5}, rng)
    write_images(tmp_path / "val", {"cat": 2, "dog": 2, "eel": 2}, rng)
    config = compose_config("data=image_folder", f"data.root={tmp_path}", "data.num_workers=0", "data.image_size=16")
    config.paths.output_dir = str(tmp_path / "run")
    dm = ready(hydra.utils.instantiate(config.data))
    assert dm.classes == ["cat", "dog", "eel"]
    assert len(dm.train_set) == 15 and len(dm.val_set) == 6 and len(dm.test_set) == 6  # no test/: tests on val
    assert dm.val_set.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert "val" not in dm.indices  # given, not carved
    check_batches(dm, 15)


def test_image_folder_single_folder_split(tmp_path):
    rng = np.random.default_rng(1)
    write_images(tmp_path / "images", {"a": 10, "b": 10, "c": 10}, rng)
    dm = ready(ImageFolder(root=str(tmp_path / "images"), val_split=0.2, image_size=12, batch_size=4,
                           fraction=0.5, output_dir=str(tmp_path / "run")))
    assert dm.classes == ["a", "b", "c"]
    assert class_counts(dm.val_set.labels, 3).tolist() == [2, 2, 2]
    assert class_counts(dm.train_set.labels, 3).tolist() == [4, 4, 4]  # half of the 8 left per class
    assert not set(dm.indices["train"]) & set(dm.indices["val"])
    assert (tmp_path / "run" / "subset_indices.json").is_file()
    check_batches(dm, 12)
