"""The Lightning side of the feature cache: features swapped in at setup, the module told so."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from tlexp.errors import InvalidValue
from tlexp.feature_cache.dataset import cache_datamodule
from tlexp.feature_cache.key import weights_hash
from tlexp.feature_cache.rules import check_setting, resolve

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test", "target_test")}
"""Splits whose features each Trainer stage needs: test features only when a test runs."""


class FeatureCache(Callback):
    """Swaps the datamodule's images for cached features at setup, on the trainer's device, and
    sets ``pl_module.on_cached_features`` for as long as the stage runs on them.

    Rank zero computes and stores first; the other ranks then load from disk.
    """

    def __init__(self, setting="auto", cache_dir: str | None = None, bn_policy: str = "frozen"):
        check_setting(setting)
        self.setting, self.cache_dir, self.bn_policy = setting, cache_dir, bn_policy
        self.enabled: bool | None = None
        self.report: dict = {}
        self.weights: str | None = None

    def setup(self, trainer, pl_module, stage):
        pl_module.on_cached_features = False
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "normalize"):
            if self.setting is True:
                raise InvalidValue("cache_features", True, "false or auto without a tlexp datamodule",
                                   "feature caching needs trainer.fit(module, datamodule=...) with a tlexp datamodule")
            return
        if self.enabled is None:
            self.enabled = resolve(self.setting, self.bn_policy, getattr(datamodule, "augment", False), pl_module.backbone)
        if not self.enabled:
            return
        device = trainer.strategy.root_device
        splits = STAGE_SPLITS.get(str(getattr(stage, "value", stage)), ())
        shared = self.cache_dir is not None and trainer.world_size > 1
        if shared and not trainer.is_global_zero:
            trainer.strategy.barrier("feature_cache")
        self.report.update(cache_datamodule(pl_module.backbone, datamodule, self.cache_dir, device, splits=splits))
        if shared and trainer.is_global_zero:
            trainer.strategy.barrier("feature_cache")
        self.weights = weights_hash(pl_module.backbone)
        pl_module.on_cached_features = True

    def teardown(self, trainer, pl_module, stage):
        """After the stage the module takes images again (e.g. ``module(images)`` for inference)."""
        pl_module.on_cached_features = False

    def on_test_start(self, trainer, pl_module):
        """The test checkpoint's backbone must be the one the features were computed with."""
        if self.enabled and self.weights and weights_hash(pl_module.backbone) != self.weights:
            raise RuntimeError("feature cache: the backbone's weights changed after the features were computed "
                               "(a checkpoint of another model?); run with strategy.cache_features=false")
