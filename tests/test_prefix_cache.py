"""The frozen-prefix cache of partial and gradual (``tlexp.feature_cache.prefix``).

Cached and uncached runs reach the same weights and validation accuracy (float32 storage: bit for bit here;
float16: close), also when a gradual run resumes in the middle of its schedule; every boundary a gradual
schedule reaches is computed in one pass; the pass-through is checked on every timm test family and a
model it does not reproduce runs uncached; the budgets refuse or skip; a second job loads from disk.
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
from tlexp.feature_cache.prefix import EpochInputs, PrefixCache
from tlexp.strategies import Gradual, Partial

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


def run(cls, root, cache, epochs=4, dtype="float32", cache_dir=None, **kwargs):
    backbone, datamodule = setup()
    module = cls(backbone, datamodule.num_classes, cache_features=cache, cache_dir=cache_dir, cache_dtype=dtype,
                 head_dropout=0.1, **kwargs)  # dropout in the head: the RNG stream must match too
    fitted = trainer(root, epochs, enable_checkpointing=False)
    fitted.fit(module, datamodule=datamodule)
    return module, datamodule, fitted


def prefix_cache(fitted) -> PrefixCache:
    return next(c for c in fitted.callbacks if isinstance(c, PrefixCache))


def assert_same_weights(a, b, **tolerance):
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], **tolerance, msg=name)


@pytest.mark.parametrize("cls, kwargs", [(Partial, {"frozen_depth": 3}), (Gradual, {"unfreeze_every": 1})])
def test_cached_and_uncached_runs_train_the_same_weights(tmp_path, cls, kwargs):
    plain, _, plain_trainer = run(cls, tmp_path / "plain", False, **kwargs)
    cached, datamodule, cached_trainer = run(cls, tmp_path / "cached", True, **kwargs)
    top = len(cached.backbone_stages)  # 6 in test_efficientnet: head only, then one more stage per epoch
    depths = [3] * 4 if cls is Partial else [top, top - 1, top - 2, top - 3]
    callback = prefix_cache(cached_trainer)
    assert callback.enabled and callback.depths == depths and isinstance(datamodule.train_set, EpochInputs)
    assert sorted(datamodule.train_set.by_depth) == sorted(set(depths))  # every boundary, one pass
    assert cached.cached_depth is None  # after fit: images again
    assert_same_weights(plain, cached, rtol=1e-5, atol=1e-6)
    assert cached_trainer.callback_metrics["val/acc"] == plain_trainer.callback_metrics["val/acc"]
    # the test split is cached where the stages never train, and gives the uncached result
    tests = [t.test(m, datamodule=d, verbose=False)[0] for t, m, d in
             ((plain_trainer, plain, setup()[1]), (cached_trainer, cached, datamodule))]
    assert tests[0] == pytest.approx(tests[1], abs=1e-5)
    assert isinstance(datamodule.test_set, EpochInputs) and list(datamodule.test_set.by_depth) == [min(depths)]


def test_float16_storage_stays_close(tmp_path):
    plain, _, plain_trainer = run(Gradual, tmp_path / "plain", False, unfreeze_every=1)
    half, _, half_trainer = run(Gradual, tmp_path / "half", True, dtype="float16", unfreeze_every=1)
    assert prefix_cache(half_trainer).dtype == torch.float16
    assert_same_weights(plain, half, rtol=0, atol=2e-3)
    assert float(half_trainer.callback_metrics["val/acc"]) == pytest.approx(float(plain_trainer.callback_metrics["val/acc"]), abs=1 / 32)


class StopAfter(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def resumed_run(root, cache):
    """Gradual, stopped after epoch 2 of 4 (the boundary has moved twice), resumed by a fresh module and trainer."""
    backbone, datamodule = setup()
    first = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, cache_features=cache, cache_dtype="float32", head_dropout=0.1)
    saver = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    trainer(root / "first", 4, callbacks=[StopAfter(2), saver]).fit(first, datamodule=datamodule)
    backbone, datamodule = setup()
    resumed = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, cache_features=cache, cache_dtype="float32", head_dropout=0.1)
    second = trainer(root / "second", 4, enable_checkpointing=False)
    second.fit(resumed, datamodule=datamodule, ckpt_path=str(root / "ckpt" / "last.ckpt"))
    assert prefix_cache(second).enabled is cache and second.current_epoch == 4
    return resumed, second


def test_resume_in_the_middle_of_a_gradual_schedule(tmp_path):
    plain, plain_trainer = resumed_run(tmp_path / "plain", False)
    cached, cached_trainer = resumed_run(tmp_path / "cached", True)
    assert prefix_cache(cached_trainer).depth_at(2) < prefix_cache(cached_trainer).depth_at(0)
    assert_same_weights(plain, cached, rtol=1e-5, atol=1e-6)
    assert cached_trainer.callback_metrics["val/acc"] == plain_trainer.callback_metrics["val/acc"]


@pytest.mark.parametrize("model", timm.list_models("test_*"))
def test_every_timm_family_is_cached_exactly_or_refused(tmp_path, model):
    """The pass-through check decides: where it passes, a cached batch gives the uncached logits."""
    backbone, datamodule = setup(model)
    module = Partial(backbone, datamodule.num_classes, frozen_depth=1, cache_features=True, cache_dtype="float32")
    fitted = trainer(tmp_path, 1, enable_checkpointing=False, limit_train_batches=0, limit_val_batches=0)
    try:
        fitted.fit(module, datamodule=datamodule)
    except InvalidValue as error:
        assert error.name == "cache_features" and "does not reproduce" in str(error)
        return
    callback = prefix_cache(fitted)
    module.eval()
    images, _ = datamodule.train_set.images[0]
    datamodule.train_set.select(1)
    cached, _ = datamodule.train_set[0]
    with torch.no_grad():
        expected = module(datamodule.normalize(images.unsqueeze(0)))
        module.cached_depth, module.skipped_modules = 1, callback.prefixes[1]
        torch.testing.assert_close(module(cached.unsqueeze(0)), expected, rtol=1e-4, atol=1e-5)


def test_cnn_families_are_cached():
    """The check is not simply always off: the convolutional families pass it."""
    for model in ("test_efficientnet", "test_resnet", "test_convnext", "test_byobnet"):
        backbone, datamodule = setup(model)
        module = Partial(backbone, datamodule.num_classes, frozen_depth=1)
        fitted = trainer("/tmp", 1)
        fitted.strategy.connect(module)
        fitted._data_connector.attach_datamodule(module, datamodule=datamodule)
        assert PrefixCache(True)._decide(fitted, module), model


def test_refused_or_skipped_where_not_equivalent_or_over_budget(tmp_path, caplog):
    with pytest.raises(InvalidValue, match="^cache_dtype='int8' "):
        Partial(create_backbone("test_efficientnet"), 4, cache_dtype="int8")
    backbone, datamodule = setup()
    module = Partial(backbone, datamodule.num_classes, frozen_depth=3, cache_features=True, cache_disk_mb=0,
                     cache_dir=str(tmp_path / "c"))
    with pytest.raises(InvalidValue, match="^cache_disk_mb=0 .*MB"):
        trainer(tmp_path, 1).fit(module, datamodule=datamodule)
    backbone, datamodule = setup(augment=True)
    module = Partial(backbone, datamodule.num_classes, frozen_depth=3, cache_features=True)
    with pytest.raises(InvalidValue, match="^cache_features=True .*augment"):
        trainer(tmp_path, 1).fit(module, datamodule=datamodule)
    backbone, datamodule = setup()
    module = Gradual(backbone, datamodule.num_classes, unfreeze_on="plateau", cache_features=True)
    with pytest.raises(InvalidValue, match="plateau"):
        trainer(tmp_path, 1).fit(module, datamodule=datamodule)
    # auto: off with a log line, the run trains on images
    backbone, datamodule = setup()
    module = Partial(backbone, datamodule.num_classes, frozen_depth=3, cache_memory_mb=0)  # no cache_dir: memory
    fitted = trainer(tmp_path, 1, enable_checkpointing=False)
    with caplog.at_level(logging.INFO, logger="tlexp"):
        fitted.fit(module, datamodule=datamodule)
    assert not prefix_cache(fitted).enabled and not isinstance(datamodule.train_set, EpochInputs)
    assert "cache_memory_mb=0" in caplog.text


def test_second_job_loads_from_disk_memory_mapped_over_budget(tmp_path):
    _, _, first = run(Partial, tmp_path / "a", True, epochs=1, cache_dir=str(tmp_path / "c"), frozen_depth=3)
    splits = prefix_cache(first).report["splits"]
    assert not any(s["hit"] for s in splits.values())
    files = sorted(p.name for p in (tmp_path / "c").glob("*.pt"))
    assert len(files) == 2  # train and val at the boundary
    cached, datamodule, second = run(Partial, tmp_path / "b", True, epochs=1, cache_dir=str(tmp_path / "c"),
                                     frozen_depth=3, cache_memory_mb=0)
    assert all(s["hit"] for s in prefix_cache(second).report["splits"].values())
    assert sorted(p.name for p in (tmp_path / "c").glob("*.pt")) == files
    assert prefix_cache(second).report["memory_mapped"]
    assert mapped_file(datamodule.train_set.by_depth[3].features).startswith(str(tmp_path / "c"))  # not in memory


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
    partial = Partial(create_backbone("test_efficientnet"), 4, frozen_depth=2, bn_policy="train")
    assert partial.plan.fixed_depth(0) == 0  # BN affine weights train in frozen stages: nothing is fixed


def test_boundary_is_the_first_module_of_the_stage():
    """A stage that spans containers (``blocks.4`` with ``conv_head`` and ``bn2``) starts at its own block."""
    from tlexp.feature_cache.prefix import boundary_module, prefix_modules, trace
    from tlexp.stages import split_stages
    backbone = create_backbone("test_efficientnet")
    stages = split_stages(backbone, torch.nn.Identity())
    starts, ends = trace(backbone.eval(), torch.zeros(1, 3, 32, 32))
    assert boundary_module(backbone, stages[0], starts) is backbone.conv_stem
    assert [boundary_module(backbone, stages[i], starts) for i in range(1, 6)] == list(backbone.blocks)
    assert prefix_modules(backbone, backbone.blocks[4], starts, ends) == [backbone.conv_stem, backbone.bn1, *backbone.blocks[:4]]


def test_auto_leaves_out_boundaries_larger_than_the_images(tmp_path, caplog):
    """At frozen depth 1 (after the stem: 16 x 16 x 16 values per 3 x 32 x 32 image) the cache would hold more than
    the images and save only the stem's forward: ``auto`` trains on images, ``true`` caches as told."""
    backbone, datamodule = setup()
    module = Partial(backbone, datamodule.num_classes, frozen_depth=1)
    fitted = trainer(tmp_path, 1, enable_checkpointing=False)
    with caplog.at_level(logging.INFO, logger="tlexp"):
        fitted.fit(module, datamodule=datamodule)
    assert not prefix_cache(fitted).enabled and "larger than the images" in caplog.text
    _, datamodule, forced = run(Partial, tmp_path / "forced", True, epochs=1, frozen_depth=1)
    assert prefix_cache(forced).depths == [1] and isinstance(datamodule.train_set, EpochInputs)


def test_gradual_computes_only_what_another_job_has_not_stored(tmp_path):
    """A frozen job of the same sweep stored the pooled features: gradual loads them and computes only its
    other boundaries, in a pass that stops at the last of them."""
    cache_dir = str(tmp_path / "c")
    backbone, datamodule = setup()
    from tlexp.strategies import Frozen
    trainer(tmp_path / "frozen", 1, enable_checkpointing=False).fit(
        Frozen(backbone, datamodule.num_classes, cache_dir=cache_dir), datamodule=datamodule)
    _, _, fitted = run(Gradual, tmp_path / "gradual", True, cache_dir=cache_dir, unfreeze_every=1)
    splits = prefix_cache(fitted).report["splits"]
    top = max(int(name.split("@")[1]) for name in splits)
    assert splits[f"train@{top}"]["hit"] and not splits[f"train@{top - 1}"]["hit"]


def test_interrupted_mid_epoch_then_resumed_equals_uninterrupted(tmp_path):
    """A cached gradual run stopped by Ctrl-C in the middle of an epoch, resumed by the same command: the
    activations computed at the resume must not disturb the RNG streams the epoch continues with."""
    from test_interruption import SignalAt
    from tlexp.callbacks import Interrupted, Interruption

    uninterrupted, datamodule, _ = run(Gradual, tmp_path / "a", True, unfreeze_every=1)
    stop_at = len(datamodule.train_dataloader()) + 1  # in the second epoch
    backbone, datamodule = setup()
    first = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, cache_features=True, cache_dtype="float32", head_dropout=0.1)
    with pytest.raises(Interrupted):
        trainer(tmp_path / "b", 4, enable_checkpointing=False,
                callbacks=[SignalAt(stop_at), Interruption(tmp_path / "ckpt")]).fit(first, datamodule=datamodule)
    backbone, datamodule = setup()
    resumed = Gradual(backbone, datamodule.num_classes, unfreeze_every=1, cache_features=True, cache_dtype="float32", head_dropout=0.1)
    trainer(tmp_path / "c", 4, enable_checkpointing=False).fit(resumed, datamodule=datamodule,
                                                              ckpt_path=tmp_path / "ckpt" / "interrupted.ckpt")
    assert_same_weights(uninterrupted, resumed, rtol=0, atol=0)
