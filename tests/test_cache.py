"""The feature cache of the frozen strategy, and no autograd work in frozen prefixes.

Cached and uncached runs train the same head; the key follows the subset, the image size
and the weights; a second run loads from disk; caching is refused where it is not
equivalent. For partial: autograd records nothing below the first trainable stage.
"""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from timm.layers import DropPath

from tlexp.backbone import create_backbone
from tlexp.callbacks import EpochSeeder
from tlexp.data import Synthetic
from tlexp.errors import InvalidValue
from tlexp.feature_cache import Boundary, FeatureCache, FeatureDataset, cache_key, key_fields, split_inputs, stochastic_layers, store
from tlexp.freeze_plan import freeze
from tlexp.strategies import Frozen, Partial

from conftest import compose_config, read_json

SEED = 3


def setup_data(seed=SEED, weights_seed=SEED, image_size=32, fraction=1.0, augment=False):
    torch.manual_seed(weights_seed)
    backbone = create_backbone("test_efficientnet")
    datamodule = Synthetic(image_size=image_size, val_size=32, batch_size=32, seed=seed, fraction=fraction, augment=augment)
    return backbone, datamodule.prepare_for(backbone)


class InputsProbe(Callback):
    """Per training batch: (whether the module is told to skip the backbone, whether the batch holds features, not
    uint8 images), and whether the datamodule holds the cached training inputs."""

    def __init__(self):
        self.seen = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.add((pl_module.skipped == (pl_module.backbone,), batch[0].dtype == torch.float32 and batch[0].ndim == 2,
                       isinstance(trainer.datamodule.train_set, FeatureDataset)))


def pooled(backbone, datamodule, cache_dir=None, splits=("train", "val", "test")) -> dict:
    """Each split's pooled features loaded or computed, swapped into the datamodule; the reports."""
    reports = {}
    for split in splits:
        inputs, reports[split] = split_inputs(Boundary.pooled(backbone), datamodule, split, cache_dir)
        setattr(datamodule, f"{split}_set", inputs)
    return reports


def fit(module, datamodule, root, epochs=2, checkpoint=False, probe=None, cache=None):
    callbacks = [EpochSeeder(SEED)] + ([ModelCheckpoint(dirpath=root, monitor="val/acc", mode="max")] if checkpoint else [])
    callbacks += ([probe] if probe else []) + ([cache] if cache else [])
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
        module = Frozen(backbone, datamodule.num_classes, head_dropout=0.1)  # dropout in the head: the RNG stream must match too
        probe = InputsProbe()
        trainer = fit(module, datamodule, tmp_path / str(cache), checkpoint=cache, probe=probe,
                      cache=FeatureCache(cache, cache_dir=str(tmp_path / "cache")))
        assert cache_callback(trainer).enabled is cache
        # told explicitly, not by the batch's shape: the module skips the backbone while the datamodule serves features
        assert probe.seen == {(cache, cache, cache)}
        assert module.skipped == () and not isinstance(datamodule.train_set, FeatureDataset)  # after the stage: images again
        # the FineTuning callback still reports and keeps the backbone frozen
        head_size = sum(p.numel() for p in module.head.parameters())
        assert trainer.callback_metrics["params/trainable"].item() == head_size
        assert not any(p.requires_grad for p in module.backbone.parameters())
        heads.append({k: v.clone() for k, v in module.head.state_dict().items()})
        # the best checkpoint holds the whole model and tests on the cached test features
        best = trainer.checkpoint_callback.best_model_path if cache else None
        assert not best or any(k.startswith("backbone.") for k in torch.load(best, weights_only=True)["state_dict"])
        tests.append(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]["test/acc"])
        assert set(cache_callback(trainer).report["splits"]) == ({"train", "val", "test"} if cache else set())
    for name in heads[0]:
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-5, atol=1e-6)
    assert tests[0] == pytest.approx(tests[1])


def test_cached_batches_are_left_unnormalised():
    backbone, datamodule = setup_data()
    pooled(backbone, datamodule, splits=("val",))
    batch = next(iter(datamodule.val_dataloader()))
    assert batch[0].dtype == torch.float32 and batch[0].ndim == 2 and datamodule.on_after_batch_transfer(batch, 0) is batch
    half = [batch[0].half(), batch[1]]  # activations stored in float16 reach the model as float32, not normalised
    torch.testing.assert_close(datamodule.on_after_batch_transfer(half, 0)[0], batch[0].half().float())
    images, labels = next(iter(datamodule.train_dataloader()))  # not cached: normalised images
    assert datamodule.on_after_batch_transfer((images, labels), 0)[0].dtype == torch.float32


def test_stochastic_layers_found_by_public_classes():
    layers = nn.Sequential(nn.Dropout(0.1), nn.Dropout2d(0.0), nn.Dropout3d(0.1), nn.AlphaDropout(0.2),
                           nn.FeatureAlphaDropout(0.3), DropPath(0.1), DropPath(0.0), nn.Identity(), nn.Dropout1d(0.5))
    assert stochastic_layers(layers) == ["0", "2", "3", "4", "5", "8"]


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


class ValBatches(Callback):
    """The validation batches' inputs, as the module receives them."""

    def __init__(self):
        self.inputs = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.inputs.append(batch[0].clone())


def test_second_run_loads_from_disk_and_a_changed_key_recomputes(tmp_path):
    backbone, datamodule = setup_data()
    first = pooled(backbone, datamodule, tmp_path)
    assert not any(r["hit"] for r in first.values())
    assert len(list(tmp_path.glob("*.pt"))) == 3

    backbone, datamodule = setup_data()  # a new job of the same sweep: same key
    seen = ValBatches()
    trainer = fit(Frozen(backbone, datamodule.num_classes), datamodule, tmp_path / "run", epochs=1, probe=seen,
                  cache=FeatureCache(cache_dir=str(tmp_path)))
    report = cache_callback(trainer).report["splits"]
    assert set(report) == {"train", "val"} and all(r["hit"] for r in report.values())  # test features: at test time
    assert all(report[split]["key"] == first[split]["key"] for split in report)
    torch.testing.assert_close(torch.cat(seen.inputs), store.load(tmp_path / f"{first['val']['key']}.pt", first["val"]["key"])[0])

    other, _ = setup_data(weights_seed=SEED + 1)  # features of one backbone are never served to another
    trainer = fit(Frozen(other, datamodule.num_classes), datamodule, tmp_path / "other", epochs=1,
                  cache=FeatureCache(cache_dir=str(tmp_path)))
    report = cache_callback(trainer).report["splits"]
    assert not any(r["hit"] for r in report.values()) and all(report[s]["key"] != first[s]["key"] for s in report)
    assert len(list(tmp_path.glob("*.pt"))) == 5

    backbone, datamodule = setup_data(image_size=40)  # changed key: computed again, stored beside
    again = pooled(backbone, datamodule, tmp_path)
    assert not any(r["hit"] for r in again.values())
    assert len(list(tmp_path.glob("*.pt"))) == 8


def test_refused_where_not_equivalent(tmp_path, caplog):
    backbone, datamodule = setup_data(augment=True)
    with pytest.raises(InvalidValue, match="^cache_features=True ") as error:
        fit(Frozen(backbone, datamodule.num_classes), datamodule, tmp_path, epochs=1, cache=FeatureCache(True))
    assert error.value.name == "cache_features" and "augment" in str(error.value)

    backbone, datamodule = setup_data()
    with pytest.raises(InvalidValue, match="^cache_features=True .*bn_policy"):
        fit(Frozen(backbone, 4, bn_policy="adapt"), datamodule, tmp_path, epochs=1, cache=FeatureCache(True))
    backbone = create_backbone("test_efficientnet", kwargs={"drop_rate": 0.2})
    with pytest.raises(InvalidValue, match="^cache_features=True .*drop"):
        fit(Frozen(backbone, 4), datamodule, tmp_path, epochs=1, cache=FeatureCache(True))
    with pytest.raises(InvalidValue, match="^cache_features='yes' "):
        FeatureCache("yes")

    # auto: off with an info log, and the run trains on images
    backbone, datamodule = setup_data(augment=True)
    probe = InputsProbe()
    with caplog.at_level(logging.INFO, logger="tlexp"):
        trainer = fit(Frozen(backbone, datamodule.num_classes), datamodule, tmp_path / "auto", epochs=1, probe=probe,
                      cache=FeatureCache())
    assert cache_callback(trainer).enabled is False and probe.seen == {(False, False, False)}
    assert "feature cache off" in caplog.text and "augment" in caplog.text


def test_entry_point_refuses_before_building_anything(tmp_path):
    """The real config from conf/: ``cache_features=true`` where caching is not equivalent stops the run
    in the config check, before any model or data is loaded."""
    from tlexp import config

    def composed(*overrides):
        cfg = compose_config("strategy=frozen", *overrides)
        cfg.paths.output_dir = str(tmp_path)
        return cfg

    config.check(composed())  # auto, no augmentation: accepted
    for overrides in (("data.augment=true",), ("strategy.bn_policy=adapt",)):
        with pytest.raises(InvalidValue, match="^strategy.cache_features=True "):
            config.check(composed("strategy.cache_features=true", *overrides))


def test_the_strategy_node_configures_the_cache_not_the_strategy(tmp_path):
    """``strategy.cache_*`` keys: checked with the config, given to the cache callback ``train`` attaches, never to the
    strategy, which knows nothing of caching; a strategy the cache does not serve refuses them as unknown keys."""
    from tlexp import config
    from tlexp.feature_cache import callbacks_for

    def composed(*overrides):
        cfg = compose_config(*overrides)
        cfg.paths.output_dir = str(tmp_path)
        return cfg

    for strategy in ("frozen", "partial", "gradual"):
        cfg = composed(f"strategy={strategy}", "strategy.cache_dir=null")
        config.check(cfg)
        [cache] = callbacks_for(cfg.strategy)
        assert cache.setting == "auto" and cache.cache_dir is None
        module = config.instantiate("strategy", cfg.strategy, backbone=create_backbone("test_efficientnet"), num_classes=4)
        assert not any(key.startswith("cache") for key in module.hparams)
    cfg = composed("strategy=partial", "strategy.cache_dtype=float32", "strategy.cache_features=false")
    assert callbacks_for(cfg.strategy)[0].dtype == torch.float32 and callbacks_for(cfg.strategy)[0].setting is False
    for override, key in (("strategy.cache_dtype=int8", "cache_dtype"), ("strategy.cache_memory_mb=-1", "cache_memory_mb"),
                          ("strategy.cache_features=yes", "cache_features")):
        with pytest.raises(InvalidValue, match=f"^strategy.{key}=") as error:
            config.check(composed("strategy=partial", override))
        assert error.value.key == f"strategy.{key}"
    assert callbacks_for(composed("strategy=full").strategy) == []
    with pytest.raises(InvalidValue, match="^strategy.cache_features=True .*unknown key"):
        config.check(composed("strategy=full", "+strategy.cache_features=true"))


def test_train_attaches_the_cache_and_a_run_rebuilds_without_it(tmp_path, main_inprocess):
    """``train.py strategy=frozen``: the pooled features land in ``strategy.cache_dir``; the run's config still holds
    ``strategy.cache_*``, and ``tlexp-export`` and a distillation teacher rebuild the strategy from it."""
    from tlexp.export import locate, restore
    from tlexp.strategies.distill import load_teacher

    code, output = main_inprocess(tmp_path, "strategy=frozen", "trainer.max_epochs=1")
    assert code == 0, output[-3000:]
    assert read_json(tmp_path / "result.json")["status"] == "completed"
    assert len(list((tmp_path / "data" / "feature_cache").glob("*.pt"))) == 3  # train, val, test
    module, cfg = restore(*locate(tmp_path))
    assert cfg.strategy.cache_features == "auto" and isinstance(module, Frozen)
    teacher = load_teacher(str(tmp_path), module.hparams.num_classes)
    assert type(teacher) is Frozen and not teacher.training


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
        assert freeze(module, epoch=0) == list(module.plan.stages[depth:])
        assert sum(p.numel() for p in module.parameters() if p.requires_grad) == module.plan.trainable_params(0)
        results.append(saved_activations(module, images))
    counts = [c for c, _ in results]
    sizes = [s for _, s in results]
    assert all(a > b for a, b in zip(counts, counts[1:])), counts
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes
    # everything frozen but the head: only the head's linear layer saves its input
    assert counts[-1] <= 2 and sizes[-1] <= 16 * backbone.num_features * 4 + 64
