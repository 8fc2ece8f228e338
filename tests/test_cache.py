"""The feature cache of the frozen strategy, and no autograd work in frozen prefixes.

Cached and uncached runs train the same head; the key follows the subset, the image size
and the weights; a second run loads from disk; caching is refused where it is not
equivalent. For partial: autograd records nothing below the first trainable stage.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tlexp import feature_cache
from tlexp.backbone import create_backbone
from tlexp.callbacks import EpochSeeder, FineTuning
from tlexp.data import Synthetic
from tlexp.errors import ConfigError
from tlexp.feature_cache import FeatureCache, FeatureDataset, cache_datamodule, cache_key, key_fields
from tlexp.strategies import Frozen, Partial

from conftest import compose_config

SEED = 3


def setup_data(seed=SEED, weights_seed=SEED, image_size=32, fraction=1.0, augment=False, **model_kwargs):
    torch.manual_seed(weights_seed)
    backbone = create_backbone("test_efficientnet", **model_kwargs)
    datamodule = Synthetic(image_size=image_size, val_size=32, batch_size=32, seed=seed, fraction=fraction, augment=augment)
    datamodule.configure_preprocessing(timm.data.resolve_model_data_config(backbone))
    datamodule.setup()
    return backbone, datamodule


def fit(module, datamodule, root, epochs=2, checkpoint=False):
    callbacks = [EpochSeeder(SEED)] + ([ModelCheckpoint(dirpath=root, monitor="val/acc", mode="max")] if checkpoint else [])
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                        default_root_dir=root, enable_checkpointing=checkpoint, callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def cache_callback(trainer) -> FeatureCache:
    return next(c for c in trainer.callbacks if isinstance(c, FeatureCache))


def test_cached_and_uncached_runs_train_the_same_head(tmp_path):
    heads, tests = [], []
    for cache in (False, True):
        backbone, datamodule = setup_data()
        module = Frozen(backbone, datamodule.num_classes, cache_features=cache, cache_dir=str(tmp_path / "cache"),
                        head_dropout=0.1)  # dropout in the head: the RNG stream must match too
        trainer = fit(module, datamodule, tmp_path / str(cache), checkpoint=cache)
        assert isinstance(datamodule.train_set, FeatureDataset) == cache
        assert cache_callback(trainer).enabled is cache
        # the FineTuning callback still reports and keeps the backbone frozen
        head_size = sum(p.numel() for p in module.head.parameters())
        assert trainer.callback_metrics["params/trainable"].item() == head_size
        assert not any(p.requires_grad for p in module.backbone.parameters())
        heads.append({k: v.clone() for k, v in module.head.state_dict().items()})
        # the best checkpoint holds the whole model and tests on the cached test features
        best = trainer.checkpoint_callback.best_model_path if cache else None
        assert not best or any(k.startswith("backbone.") for k in torch.load(best, weights_only=False)["state_dict"])
        tests.append(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]["test/acc"])
    for name in heads[0]:
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-5, atol=1e-6)
    assert tests[0] == pytest.approx(tests[1])


def keys(**kwargs) -> dict[str, str]:
    backbone, datamodule = setup_data(**kwargs)
    return {split: cache_key(key_fields(backbone, datamodule, split)) for split in ("train", "val", "test")}


def test_cache_key_follows_subset_image_size_and_weights():
    base = keys()
    assert keys() == base  # deterministic
    subset = keys(fraction=0.5)
    assert subset["train"] != base["train"]
    assert subset["val"] == base["val"] and subset["test"] == base["test"]  # val/test do not depend on the fraction
    assert keys(seed=SEED + 1, fraction=0.5)["train"] != subset["train"]  # another subset of the same size
    assert set(keys(image_size=40).values()).isdisjoint(base.values())
    assert set(keys(weights_seed=SEED + 1).values()).isdisjoint(base.values())
    assert len(set(base.values())) == 3  # train, val and test are different inputs


def test_second_run_loads_from_disk_and_a_changed_key_recomputes(tmp_path):
    backbone, datamodule = setup_data()
    first = cache_datamodule(backbone, datamodule, tmp_path)
    assert not any(r["hit"] for r in first.values())
    assert len(list(tmp_path.glob("*.pt"))) == 3

    backbone, datamodule = setup_data()  # a new job of the same sweep: same key
    module = Frozen(backbone, datamodule.num_classes, cache_dir=str(tmp_path))
    trainer = fit(module, datamodule, tmp_path / "run", epochs=1)
    report = cache_callback(trainer).report
    assert set(report) == {"train", "val"} and all(r["hit"] for r in report.values())  # test features: at test time
    assert all(report[split]["key"] == first[split]["key"] for split in report)
    torch.testing.assert_close(datamodule.val_set.features, feature_cache._load(tmp_path / f"{first['val']['key']}.pt", first["val"]["key"])[0])

    backbone, datamodule = setup_data(image_size=40)  # changed key: computed again, stored beside
    again = cache_datamodule(backbone, datamodule, tmp_path)
    assert not any(r["hit"] for r in again.values())
    assert len(list(tmp_path.glob("*.pt"))) == 6
    other, _ = setup_data(weights_seed=SEED + 1)  # features of one backbone are never served to another
    with pytest.raises(RuntimeError, match="fresh datamodule"):
        cache_datamodule(other, datamodule, tmp_path)


def test_refused_where_not_equivalent(tmp_path, caplog):
    backbone, datamodule = setup_data(augment=True)
    module = Frozen(backbone, datamodule.num_classes, cache_features=True)
    with pytest.raises(ConfigError, match="strategy.cache_features") as error:
        fit(module, datamodule, tmp_path, epochs=1)
    assert error.value.key == "strategy.cache_features" and "augment" in str(error.value)

    with pytest.raises(ConfigError, match="strategy.cache_features.*bn_policy"):
        Frozen(create_backbone("test_efficientnet"), 4, cache_features=True, bn_policy="adapt")
    with pytest.raises(ConfigError, match="strategy.cache_features.*drop"):
        Frozen(create_backbone("test_efficientnet", drop_rate=0.2), 4, cache_features=True)
    with pytest.raises(ConfigError, match="strategy.cache_features"):
        Frozen(create_backbone("test_efficientnet"), 4, cache_features="yes")

    # the entry point refuses before building anything (the real config from conf/)
    from tlexp.train import check_config

    def config(*overrides):
        cfg = compose_config("strategy=frozen", *overrides)
        cfg.paths.output_dir = str(tmp_path)
        return cfg

    check_config(config())  # auto, no augmentation: accepted
    for overrides in (("data.augment=true",), ("strategy.bn_policy=adapt",)):
        with pytest.raises(ConfigError, match="strategy.cache_features"):
            check_config(config("strategy.cache_features=true", *overrides))

    # auto: off with an info log, and the run trains on images
    backbone, datamodule = setup_data(augment=True)
    module = Frozen(backbone, datamodule.num_classes)
    with caplog.at_level(logging.INFO, logger="tlexp"):
        trainer = fit(module, datamodule, tmp_path / "auto", epochs=1)
    assert cache_callback(trainer).enabled is False and not isinstance(datamodule.train_set, FeatureDataset)
    assert "feature cache off" in caplog.text and "augment" in caplog.text


def saved_activations(module, images) -> tuple[int, int]:
    """(count, bytes) of the tensors autograd saves for backward in one training forward."""
    count, size = 0, 0

    def pack(tensor):
        nonlocal count, size
        count += 1
        size += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(images)
    return count, size


def test_frozen_prefix_records_no_autograd_work():
    backbone, datamodule = setup_data()
    images = datamodule.normalize(torch.stack([datamodule.train_set[i][0] for i in range(16)]))
    results = []
    for depth in range(0, 7):
        torch.manual_seed(SEED)
        module = Partial(create_backbone("test_efficientnet"), 4, frozen_depth=depth).train()
        callback = FineTuning("frozen")
        callback.apply(SimpleNamespace(optimizers=[], lr_scheduler_configs=[]), module, epoch=0)
        callback.apply_bn_policy(module)
        frozen = module.backbone_stages[:depth]
        assert all(not p.requires_grad for stage in frozen for p in stage.params)
        results.append(saved_activations(module, images))
    counts = [c for c, _ in results]
    sizes = [s for _, s in results]
    assert all(a > b for a, b in zip(counts, counts[1:])), counts
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes
    # everything frozen but the head: only the head's linear layer saves its input
    assert counts[-1] <= 2 and sizes[-1] <= 16 * backbone.num_features * 4 + 64
