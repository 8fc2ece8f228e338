"""``data.target_domain``, measured: every shift is deterministic and changes the images (dtype and shape
kept), the target training set is the shifted training pool without labels (never a validation or test
image), and every strategy is also tested on the shifted test split (``test/target_acc``), the frozen
strategy's feature cache included."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from conftest import metric_columns, read_json
from PIL import Image
from test_finetuning import SEED

from tlexp.backbone import create_backbone
from tlexp.data import ImageFolder, Synthetic
from tlexp.data.domain_shift import SHIFTS, shift_array, shift_images
from tlexp.errors import InvalidValue
from tlexp.feature_cache import FeatureCache
from tlexp.strategies import Frozen
from tlexp.strategies.dann import target_training_set
from tlexp.strategies.pseudo_label import UnlabeledImages


def batch(channels: int, size: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).integers(0, 256, (6, channels, size, size), dtype=np.uint8))


@pytest.mark.parametrize("name", list(SHIFTS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 16), (1, 8)])
def test_each_shift_is_deterministic_and_changes_the_images(name, channels, size):
    images = batch(channels, size)
    first = shift_images(images, name)
    torch.manual_seed(123)  # the global random state plays no part
    np.random.seed(123)
    second = shift_images(images, name)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, second)
    assert (first != images).float().mean() > 0.5
    assert torch.equal(images, batch(channels, size))  # the input is left as it was


def test_invert_is_255_minus_x_and_arrays_keep_their_layout():
    images = batch(3, 16)
    assert torch.equal(shift_images(images, "invert"), 255 - images)
    grey = np.random.default_rng(1).integers(0, 256, (5, 12, 12), dtype=np.uint8)
    colour = np.random.default_rng(2).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    assert np.array_equal(shift_array(grey, "invert"), 255 - grey)
    assert np.array_equal(shift_array(colour, "invert"), 255 - colour)


def test_noise_is_seeded_per_image():
    images = batch(1, 28)
    assert torch.equal(shift_images(images, "noise", seed=0)[:3], shift_images(images[:3], "noise", seed=0))
    assert not torch.equal(shift_images(images, "noise", seed=0), shift_images(images, "noise", seed=1))


def test_an_unknown_shift_is_refused_naming_the_key():
    with pytest.raises(InvalidValue) as error:
        Synthetic(target_domain="sepia")
    assert error.value.name == "target_domain" and all(name in error.value.accepted for name in SHIFTS)


def datamodule(**kwargs) -> Synthetic:
    """Synthetic data at its source size (16 px): no resize, so shifted images compare exactly."""
    backbone = create_backbone("test_efficientnet")
    return Synthetic(image_size=16, val_size=32, batch_size=32, seed=SEED, **kwargs).prepare_for(backbone)


def rows(images) -> set[bytes]:
    return {bytes(image.contiguous().numpy()) for image in torch.as_tensor(images)}


def test_target_sets_are_the_shifted_pool_and_test_split_never_validation():
    data = datamodule(fraction=0.25, target_domain="invert")
    train, _, test, _ = data.load()
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
    val = np.asarray(data.indices["val"])
    pool = np.setdiff1d(np.arange(len(train.labels)), val)
    target = target_training_set(data, "invert")  # dann's, from the data's pool
    assert len(target) == len(pool) > len(data.train_set)  # the whole pool, not only the labeled fraction
    assert torch.equal(target.images, 255 - images[pool])
    assert (target.labels == -1).all()  # no labels kept: nothing can train on them
    shifted = rows(target.images)
    assert not shifted & rows(255 - images[val])
    assert not shifted & rows(255 - torch.from_numpy(test.images).permute(0, 3, 1, 2))
    assert torch.equal(data.target_test_set.images, 255 - data.test_set.images)
    assert torch.equal(data.target_test_set.labels, data.test_set.labels)
    assert data.indices["target_domain"] == "invert"
    assert datamodule().extra_split("pool") is None and datamodule().target_test_set is None


def test_with_a_target_domain_the_unlabeled_set_is_the_shifted_rest():
    """pseudo_label under experiment=domain_shift self-trains on target images, not on source ones."""
    data = datamodule(fraction=0.25, unlabeled="rest", target_domain="invert")
    train, _, _, _ = data.load()
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
    rest = np.asarray(data.indices["unlabeled"])
    unlabeled = UnlabeledImages(data)  # what pseudo_label predicts
    assert len(rest) and torch.equal(unlabeled.dataset.images, 255 - images[rest])
    assert torch.equal(unlabeled.labels(), torch.as_tensor(train.labels[rest]))  # only to measure pseudo-labels


def test_an_image_folder_refuses_a_target_domain(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = ImageFolder(root=str(tmp_path), val_split=0.25, image_size=8, target_domain="blur", output_dir=None)
    with pytest.raises(InvalidValue) as error:
        data.prepare_for(create_backbone("test_efficientnet"))
    assert error.value.name == "target_domain" and "not to image files" in str(error.value)


def test_frozen_reports_target_accuracy_with_and_without_the_feature_cache(tmp_path):
    """Two test loaders; the cache computes the shifted split's features as it does the test split's."""
    def test(cache_features):
        torch.manual_seed(SEED)
        backbone = create_backbone("test_efficientnet")
        data = Synthetic(image_size=32, val_size=32, batch_size=32, seed=SEED, target_domain="invert").prepare_for(backbone)
        module = Frozen(backbone, data.num_classes)
        callback = FeatureCache(cache_features)
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[callback],
                            enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
        results = trainer.test(module, datamodule=data, verbose=False)
        return {k: v for result in results for k, v in result.items()}, callback.report["splits"]

    cached, report = test(True)
    plain, _ = test(False)
    assert set(report) == {"test", "target_test"}
    assert set(cached) == {"test/acc", "test/loss", "test/target_acc", "test/target_loss"}
    assert cached == pytest.approx(plain, abs=1e-5)
    assert cached["test/acc"] != cached["test/target_acc"] or cached["test/loss"] != cached["test/target_loss"]


def test_a_source_only_run_reports_the_target_accuracy(tmp_path, run_task):
    record = run_task(tmp_path, "strategy=frozen", "data.target_domain=invert", "trainer.max_epochs=1")
    assert 0 <= record["target_test_acc"] <= 1 and record["test_acc"] is not None
    assert record["metrics"]["test/target_acc"] == record["target_test_acc"]
    assert {"test/acc", "test/target_acc", "test/target_loss"} <= set(metric_columns(tmp_path))
    assert read_json(tmp_path / "subset_indices.json")["target_domain"] == "invert"
