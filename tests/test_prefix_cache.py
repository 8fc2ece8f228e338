"""The feature cache below the pooled features: the frozen prefix of partial and gradual (``tlexp.feature_cache``).

Cached and uncached runs reach the same weights and validation accuracy (float32 storage: bit for bit here;
float16: close), also when a gradual run resumes in the middle of its schedule; gradual caches the stages its
schedule never reaches; the pass-through is checked on every timm test family and a model it does not reproduce
runs uncached; the budgets refuse or skip; a second job loads from disk; the pooled features are one key for
every strategy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tlexp.backbone import create_backbone
from tlexp.callbacks import EpochSeeder
from tlexp.data import Synthetic
from tlexp.errors import InvalidValue
from tlexp.feature_cache import FeatureCache, FeatureDataset, split_inputs
from tlexp.strategies import Frozen, Gradual, Partial

SEED = 3


def setup(model="test_efficientnet", image_size=32, **data):
    torch.manual_seed(SEED)
    try:
        backbone = create_backbone(model, img_size=image_size)
    except InvalidValue:  # a window or patch size that 32 px does not divide: the model's own size
        image_size = timm.create_model(model).pretrained_cfg["input_size"][-1]
        torch.manual_seed(SEED)
        backbone = create_backbone(model, img_size=image_size)
    datamodule = Synthetic(image_size=image_size, val_size=32, batch_size=32, seed=SEED, **data)
    return backbone, datamodule.prepare_for(backbone)


def trainer(root, epochs, **kwargs):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                     default_root_dir=root, callbacks=[EpochSeeder(SEED), *kwargs.pop("callbacks", [])], **kwargs)


class Inputs(Callback):
    """What the datamodule serves while training: the cached training inputs, or None (images)."""

    def __init__(self):
        self.train = None

    def on_train_start(self, trainer, pl_module):
        train = trainer.datamodule.train_set
        self.train = train if isinstance(train, FeatureDataset) else None


def cache(setting=True, dtype="float32", **kwargs) -> FeatureCache:
    """The cache callback as ``train`` attaches it from ``strategy.cache_*`` (float32: bit-identical runs)."""
    return FeatureCache(setting, cache_dtype=dtype, **kwargs)


def run(cls, root, setting, epochs=4, dtype="float32", cache_dir=None, memory_mb=4096, **kwargs):
    backbone, datamodule = setup()
    module = cls(backbone, datamodule.num_classes, head_dropout=0.1, **kwargs)  # dropout in the head: the RNG stream must match too
    fitted = trainer(root, epochs, enable_checkpointing=False,
                     callbacks=[cache(setting, dtype, cache_dir=cache_dir, cache_memory_mb=memory_mb), Inputs()])
    fitted.fit(module, datamodule=datamodule)
    return module, datamodule, fitted


def prefix_cache(fitted) -> FeatureCache:
    return next(c for c in fitted.callbacks if isinstance(c, FeatureCache))


def served(fitted) -> FeatureDataset | None:
    return next(c for c in fitted.callbacks if isinstance(c, Inputs)).train


def assert_same_weights(a, b, **tolerance):
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], **tolerance, msg=name)


@pytest.mark.parametrize("cls, kwargs", [(Partial, {"frozen_depth": 3}), (Gradual, {"unfreeze_every": 1})])
def test_cached_and_uncached_runs_train_the_same_weights(tmp_path, cls, kwargs):
    plain, _, plain_trainer = run(cls, tmp_path / "plain", False, **kwargs)
    cached, datamodule, cached_trainer = run(cls, tmp_path / "cached", True, **kwargs)
    # partial: its frozen depth; gradual (one more stage per epoch, 4 epochs, 6 stages): the 3 it never reaches
    callback = prefix_cache(cached_trainer)
    assert callback.enabled and callback.boundary.depth == 3 and len(served(cached_trainer)) == len(datamodule.train_set)
    assert cached.skipped == () and not isinstance(datamodule.train_set, FeatureDataset)  # after fit: images again
    assert_same_weights(plain, cached, rtol=1e-5, atol=1e-6)
    assert cached_trainer.callback_metrics["val/acc"] == plain_trainer.callback_metrics["val/acc"]
    # the test split is cached at the same boundary, and gives the uncached result
    tests = [t.test(m, datamodule=d, verbose=False)[0] for t, m, d in
             ((plain_trainer, plain, setup()[1]), (cached_trainer, cached, datamodule))]
    assert tests[0] == pytest.approx(tests[1], abs=1e-5)
    splits = callback.report["splits"]
    assert set(splits) == {"train", "val", "test"} and splits["test"]["shape"][1:] == splits["train"]["shape"][1:]


def test_float16_storage_stays_close(tmp_path):
    plain, _, plain_trainer = run(Gradual, tmp_path / "plain", False, unfreeze_every=1)
    half, _, half_trainer = run(Gradual, tmp_path / "half", True, dtype="float16", unfreeze_every=1)
    assert prefix_cache(half_trainer).dtype == torch.float16 and served(half_trainer).features.dtype == torch.float16
    assert_same_weights(plain, half, rtol=0, atol=2e-3)
    assert float(half_trainer.callback_metrics["val/acc"]) == pytest.approx(float(plain_trainer.callback_metrics["val/acc"]), abs=1 / 32)


class StopAfter(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def resumed_run(root, setting):
    """Gradual, stopped after epoch 2 of 4 (the schedule has moved twice), resumed by a fresh module and trainer."""
    backbone, datamodule = setup()
    first = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, head_dropout=0.1)
    saver = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    trainer(root / "first", 4, callbacks=[StopAfter(2), saver, cache(setting)]).fit(first, datamodule=datamodule)
    backbone, datamodule = setup()
    resumed = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, head_dropout=0.1)
    second = trainer(root / "second", 4, enable_checkpointing=False, callbacks=[cache(setting)])
    second.fit(resumed, datamodule=datamodule, ckpt_path=str(root / "ckpt" / "last.ckpt"))
    assert prefix_cache(second).enabled is setting and second.current_epoch == 4
    return resumed, second


def test_resume_in_the_middle_of_a_gradual_schedule(tmp_path):
    plain, plain_trainer = resumed_run(tmp_path / "plain", False)
    cached, cached_trainer = resumed_run(tmp_path / "cached", True)
    assert cached.plan.fixed_depth(2) < cached.plan.fixed_depth(0) and prefix_cache(cached_trainer).boundary.depth == 3
    assert_same_weights(plain, cached, rtol=1e-5, atol=1e-6)
    assert cached_trainer.callback_metrics["val/acc"] == plain_trainer.callback_metrics["val/acc"]


@pytest.mark.parametrize("model", timm.list_models("test_*"))
def test_every_timm_family_is_cached_exactly_or_refused(tmp_path, model):
    """The pass-through check decides: where it passes, a cached input gives the uncached logits."""
    backbone, datamodule = setup(model)
    module = Partial(backbone, datamodule.num_classes, frozen_depth=1)
    fitted = trainer(tmp_path, 1, enable_checkpointing=False, limit_train_batches=0, limit_val_batches=0, callbacks=[cache()])
    try:
        fitted.fit(module, datamodule=datamodule)
    except InvalidValue as error:
        assert error.name == "cache_features" and "does not reproduce" in str(error)
        return
    boundary = prefix_cache(fitted).boundary
    module.eval()
    images, _ = datamodule.train_set[0]
    cached, _ = split_inputs(boundary, datamodule, "train")[0][0]
    with torch.no_grad():
        expected = module(datamodule.normalize(images.unsqueeze(0)))
        with module.skipping(boundary.skipped):
            torch.testing.assert_close(module(cached.unsqueeze(0)), expected, rtol=1e-4, atol=1e-5)


def test_cnn_families_are_cached():
    """The check is not simply always off: the convolutional families pass it."""
    for model in ("test_efficientnet", "test_resnet", "test_convnext", "test_byobnet"):
        backbone, datamodule = setup(model)
        module = Partial(backbone, datamodule.num_classes, frozen_depth=1)
        fitted = trainer("/tmp", 1)
        fitted.strategy.connect(module)
        fitted._data_connector.attach_datamodule(module, datamodule=datamodule)
        assert FeatureCache(True)._decide(fitted, module) is not None, model


def test_refused_or_skipped_where_not_equivalent_or_over_budget(tmp_path, caplog):
    with pytest.raises(InvalidValue, match="^cache_dtype='int8' "):
        FeatureCache(cache_dtype="int8")
    backbone, datamodule = setup()
    module = Partial(backbone, datamodule.num_classes, frozen_depth=3)
    with pytest.raises(InvalidValue, match="^cache_disk_mb=0 .*MB"):
        trainer(tmp_path, 1, callbacks=[cache(cache_disk_mb=0, cache_dir=str(tmp_path / "c"))]).fit(module, datamodule=datamodule)
    backbone, datamodule = setup(augment=True)
    module = Partial(backbone, datamodule.num_classes, frozen_depth=3)
    with pytest.raises(InvalidValue, match="^cache_features=True .*augment"):
        trainer(tmp_path, 1, callbacks=[cache()]).fit(module, datamodule=datamodule)
    backbone, datamodule = setup()
    module = Gradual(backbone, datamodule.num_classes, unfreeze_on="plateau")
    with pytest.raises(InvalidValue, match="plateau"):
        trainer(tmp_path, 1, callbacks=[cache()]).fit(module, datamodule=datamodule)
    # auto: off with a log line, the run trains on images
    backbone, datamodule = setup()
    module = Partial(backbone, datamodule.num_classes, frozen_depth=3)
    fitted = trainer(tmp_path, 1, enable_checkpointing=False, callbacks=[cache("auto", cache_memory_mb=0), Inputs()])  # memory
    with caplog.at_level(logging.INFO, logger="tlexp"):
        fitted.fit(module, datamodule=datamodule)
    assert not prefix_cache(fitted).enabled and served(fitted) is None
    assert "cache_memory_mb=0" in caplog.text


def test_second_job_loads_from_disk_memory_mapped_over_budget(tmp_path):
    _, _, first = run(Partial, tmp_path / "a", True, epochs=1, cache_dir=str(tmp_path / "c"), frozen_depth=3)
    splits = prefix_cache(first).report["splits"]
    assert not any(s["hit"] for s in splits.values())
    files = sorted(p.name for p in (tmp_path / "c").glob("*.pt"))
    assert len(files) == 2  # train and val at the boundary
    _, _, second = run(Partial, tmp_path / "b", True, epochs=1, cache_dir=str(tmp_path / "c"), frozen_depth=3, memory_mb=0)
    assert all(s["hit"] for s in prefix_cache(second).report["splits"].values())
    assert sorted(p.name for p in (tmp_path / "c").glob("*.pt")) == files
    assert prefix_cache(second).report["memory_mapped"]
    assert mapped_file(served(second).features).startswith(str(tmp_path / "c"))  # not in memory


def mapped_file(tensor: torch.Tensor) -> str:
    """The file behind the memory mapping that holds ``tensor``'s data ("" when anonymous memory; Linux)."""
    address = tensor.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in parts[0].split("-"))
        if low <= address < high:
            return parts[5] if len(parts) > 5 else ""
    return ""


def test_frozen_depth_per_epoch_follows_the_plan():
    module = Gradual(create_backbone("test_efficientnet"), 4, unfreeze_every=2)
    stages = len(module.backbone_stages)
    assert [module.plan.fixed_depth(e) for e in range(5)] == [stages, stages, stages - 1, stages - 1, stages - 2]
    # what stays constant through a run: up to its last epoch; however long it runs, every stage starts
    assert module.plan.constant_depth(5) == stages - 2 and module.plan.constant_depth(None) == 0
    assert Gradual(create_backbone("test_efficientnet"), 4, unfreeze_on="plateau").plan.constant_depth(5) == 0  # decided in training
    partial = Partial(create_backbone("test_efficientnet"), 4, frozen_depth=2, bn_policy="train")
    assert partial.plan.fixed_depth(0) == 0  # BN affine weights train in frozen stages: nothing is fixed
    assert Partial(create_backbone("test_efficientnet"), 4, frozen_depth=2, bn_policy="adapt").plan.constant_depth(3) == 0
    assert Partial(create_backbone("test_efficientnet"), 4, frozen_depth=2).plan.constant_depth(3) == 2


def test_boundary_is_the_first_module_of_the_stage():
    """A stage that spans containers (``blocks.4`` with ``conv_head`` and ``bn2``) starts at its own block."""
    from tlexp.feature_cache.boundary import entry_module, prefix_modules, trace
    from tlexp.stages import split_stages
    backbone = create_backbone("test_efficientnet")
    stages = split_stages(backbone, torch.nn.Identity())
    starts, ends = trace(backbone.eval(), torch.zeros(1, 3, 32, 32))
    assert entry_module(backbone, stages[0], starts) is backbone.conv_stem
    assert [entry_module(backbone, stages[i], starts) for i in range(1, 6)] == list(backbone.blocks)
    assert prefix_modules(backbone, backbone.blocks[4], starts, ends) == [backbone.conv_stem, backbone.bn1, *backbone.blocks[:4]]


def test_auto_leaves_out_boundaries_larger_than_the_images(tmp_path, caplog):
    """At frozen depth 1 (after the stem: 16 x 16 x 16 values per 3 x 32 x 32 image) the cache would hold more than
    the images and save only the stem's forward: ``auto`` trains on images, ``true`` caches as told."""
    backbone, datamodule = setup()
    module = Partial(backbone, datamodule.num_classes, frozen_depth=1)
    fitted = trainer(tmp_path, 1, enable_checkpointing=False, callbacks=[cache("auto")])
    with caplog.at_level(logging.INFO, logger="tlexp"):
        fitted.fit(module, datamodule=datamodule)
    assert not prefix_cache(fitted).enabled and "larger than the images" in caplog.text
    _, datamodule, forced = run(Partial, tmp_path / "forced", True, epochs=1, frozen_depth=1)
    assert prefix_cache(forced).boundary.depth == 1 and served(forced) is not None


def test_the_pooled_features_are_one_key_for_every_strategy(tmp_path):
    """The last boundary is frozen's feature cache: a partial job with every stage frozen, and a gradual job whose
    schedule starts no stage within the run, load the pooled features a frozen job of the same sweep stored."""
    cache_dir = str(tmp_path / "c")
    backbone, datamodule = setup()
    frozen = trainer(tmp_path / "frozen", 1, enable_checkpointing=False, callbacks=[cache("auto", cache_dir=cache_dir)])
    frozen.fit(Frozen(backbone, datamodule.num_classes), datamodule=datamodule)
    stored = prefix_cache(frozen).report["splits"]
    assert not any(split["hit"] for split in stored.values())
    names = [stage.name for stage in Frozen(create_backbone("test_efficientnet"), 4).backbone_stages]
    for cls, kwargs in ((Partial, {"frozen_depth": len(names)}), (Gradual, {"milestones": {names[-1]: 10}})):
        _, _, fitted = run(cls, tmp_path / cls.__name__, "auto", epochs=1, cache_dir=cache_dir, **kwargs)
        splits = prefix_cache(fitted).report["splits"]
        assert prefix_cache(fitted).boundary.depth == len(names) and all(split["hit"] for split in splits.values())
        assert {name: split["key"] for name, split in splits.items()} == {name: split["key"] for name, split in stored.items()}


def test_interrupted_mid_epoch_then_resumed_equals_uninterrupted(tmp_path):
    """A cached gradual run stopped by Ctrl-C in the middle of an epoch, resumed by the same command: the
    inputs computed at the resume must not disturb the RNG streams the epoch continues with."""
    from test_interruption import SignalAt
    from tlexp.callbacks import Interrupted, Interruption

    uninterrupted, datamodule, _ = run(Gradual, tmp_path / "a", True, unfreeze_every=1)
    stop_at = len(datamodule.train_dataloader()) + 1  # in the second epoch
    backbone, datamodule = setup()
    first = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, head_dropout=0.1)
    with pytest.raises(Interrupted):
        trainer(tmp_path / "b", 4, enable_checkpointing=False,
                callbacks=[SignalAt(stop_at), Interruption(tmp_path / "ckpt"), cache()]).fit(first, datamodule=datamodule)
    backbone, datamodule = setup()
    resumed = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, head_dropout=0.1)
    trainer(tmp_path / "c", 4, enable_checkpointing=False, callbacks=[cache()]).fit(
        resumed, datamodule=datamodule, ckpt_path=tmp_path / "ckpt" / "interrupted.ckpt")
    assert_same_weights(uninterrupted, resumed, rtol=0, atol=0)
