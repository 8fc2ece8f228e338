"""``FeatureCache``: the one callback that serves cached inputs to a Lightning run.

It asks the module's freeze plan how many backbone stages stay unchanged through the whole run
(``FreezePlan.constant_depth``): every stage for ``frozen`` (the boundary is the pooled features), ``frozen_depth``
for ``partial``, the stages a ``gradual`` schedule does not reach within ``max_epochs`` (none with its default
``unfreeze_by``). Where caching that prefix is equivalent (``rules``) and running the network from its boundary
reproduces it (``boundary``), each split the stage reads is replaced by its cached inputs (``dataset.split_inputs``:
loaded, or computed once and stored), and the module runs from the boundary (``TransferModule.skipping``); when the
stage ends, the datamodule gets its images back and the module runs whole again. Checkpoints hold the whole network.

``train`` attaches it for the strategies in ``rules.SERVED`` from the strategy node's ``cache_*`` keys.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated

import hydra
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch.utils.data import Dataset

from tlexp.acceleration import Acceleration
from tlexp.errors import InvalidValue
from tlexp.feature_cache.boundary import Boundary
from tlexp.feature_cache.dataset import split_inputs
from tlexp.feature_cache.rules import CACHE_FEATURES_RULE, DTYPE_RULE, DTYPES, SIZE_MB, blockers, settings_of
from tlexp.inference import inference_pass
from tlexp.rules import Checked

log = logging.getLogger("tlexp")

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test", "target_test")}
"""The datamodule's ``<split>_set``s each Trainer stage reads: test inputs only when a test runs."""
SAMPLE = 8
"""Training images the pass-through check runs on."""


class FeatureCache(Checked, Callback):
    """See the module docstring; the parameters are the ``strategy.cache_*`` settings (``rules``)."""

    def __init__(self, cache_features: Annotated[bool | str, CACHE_FEATURES_RULE] = "auto", cache_dir: str | None = None,
                 cache_dtype: Annotated[str, DTYPE_RULE] = "float16", cache_memory_mb: Annotated[float, SIZE_MB] = 4096,
                 cache_disk_mb: Annotated[float, SIZE_MB] = 20480):
        self.setting, self.cache_dir = cache_features, Path(cache_dir).expanduser() if cache_dir else None
        self.dtype, self.memory_mb, self.disk_mb = DTYPES[cache_dtype], cache_memory_mb, cache_disk_mb
        self.boundary: Boundary | None = None
        self.enabled: bool | None = None
        """None until the first stage decides; then whether the run trains on cached inputs."""
        self.report: dict = {"splits": {}}
        self._images: dict[str, Dataset] = {}
        self._attached = contextlib.ExitStack()
        self._weights: str | None = None

    # --- deciding, once --------------------------------------------------------------------------
    def _off(self, reason: str, refuse: bool = True) -> None:
        if refuse and self.setting is True:
            raise InvalidValue("cache_features", True, "false or auto with these settings", reason)
        log.info("feature cache off (strategy.cache_features=%s): %s", self.setting, reason)

    def _decide(self, trainer, module) -> Boundary | None:
        datamodule, plan = trainer.datamodule, module.plan
        if self.setting is False:
            return None
        if datamodule is None or not hasattr(datamodule, "normalize"):
            return self._off("caching needs trainer.fit(module, datamodule=...) with a tlexp datamodule")
        augment = bool(getattr(datamodule, "augment", False))
        reasons = blockers(plan.bn_policy, augment)
        if reasons:
            return self._off("cached features would differ from the backbone's: " + "; ".join(reasons))
        if not plan.known_ahead:
            return self._off("the freeze plan is decided during training (unfreeze_on=plateau): no stage is known to stay frozen")
        depth = plan.constant_depth(trainer.max_epochs)
        if depth == 0:
            return self._off("no backbone stage stays frozen for the whole run: nothing to cache", refuse=False)
        if getattr(module.backbone, "_compiled_call_impl", None) is not None or any(
                isinstance(c, Acceleration) and c.compile for c in trainer.callbacks):
            return self._off("trainer.compile=true compiles the backbone's forward as one graph")
        sample = torch.stack([torch.as_tensor(datamodule.train_set[i][0]) for i in range(min(SAMPLE, len(datamodule.train_set)))])
        if sample.dtype != torch.uint8:
            return self._off("the training split holds no images")
        images = datamodule.normalize(sample.to(module.device))
        with inference_pass(module):
            boundary = Boundary.at(module, depth, images, self.dtype)
            reasons = blockers(plan.bn_policy, augment, tuple(boundary.skipped))  # now with the frozen stages' dropout
            if reasons:
                return self._off("cached features would differ from the backbone's: " + "; ".join(reasons))
            mismatch = boundary.mismatch(module, images)
            if mismatch:
                return self._off(f"skipping the first {depth} stages does not reproduce {type(module.backbone).__name__} "
                                 f"(its forward works between its modules; {mismatch})")
            numel = boundary.encode(images[:1]).numel()
        if self.setting == "auto" and boundary.entry is not None and numel > images[0].numel():
            log.info("feature cache (auto): not at frozen depth %d, whose activations (%d values per image) are larger than "
                     "the images (%d): storing them costs more than the little work they save", depth, numel, images[0].numel())
            return None
        return boundary if self._budget(datamodule, numel * boundary.dtype.itemsize) else None

    def _budget(self, datamodule, per_image: int) -> bool:
        """Bytes of every split at the boundary; False (auto) when over ``cache_disk_mb`` (in memory: ``cache_memory_mb``);
        memory-mapped from ``cache_dir`` when over ``cache_memory_mb``."""
        splits = [getattr(datamodule, f"{split}_set", None) for split in ("train", "val", "test", "target_test")]
        total = per_image * sum(len(dataset) for dataset in splits if dataset is not None)
        self.report.update(bytes=total, memory_mapped=self.cache_dir is not None and total > self.memory_mb * 2**20)
        key, limit = ("cache_disk_mb", self.disk_mb) if self.cache_dir else ("cache_memory_mb", self.memory_mb)
        if total <= limit * 2**20:
            return True
        reason = (f"the cached inputs would take {total / 2**20:.0f} MB, over strategy.{key}={limit:g}"
                  + ("" if self.cache_dir else " (no cache_dir: in memory)"))
        if self.setting is True:
            raise InvalidValue(key, limit, f"at least {total / 2**20:.0f} (MB), or cache_features=false", reason)
        log.warning("feature cache off: %s", reason)
        return False

    # --- attaching, per Trainer stage --------------------------------------------------------------
    def _attach(self, trainer, module, stage: str) -> None:
        if self.enabled is None:
            self.boundary = self._decide(trainer, module)
            self.enabled = self.boundary is not None
            self.report.update(depth=self.boundary.depth if self.enabled else 0,
                               boundary=self.boundary.name if self.enabled else None)
        if not self.enabled:
            return
        datamodule = trainer.datamodule
        shared = self.cache_dir is not None and trainer.world_size > 1  # rank zero computes, the others load
        if shared and not trainer.is_global_zero:
            trainer.strategy.barrier("feature_cache")
        self._weights = self.boundary.weights()
        for split in STAGE_SPLITS.get(stage, ()):
            images = getattr(datamodule, f"{split}_set", None)
            if images is None:
                continue
            inputs, self.report["splits"][split] = split_inputs(self.boundary, datamodule, split, self.cache_dir,
                                                                trainer.strategy.root_device, self.report["memory_mapped"],
                                                                self._weights)
            self._images[split] = images
            setattr(datamodule, f"{split}_set", inputs)
        if shared and trainer.is_global_zero:
            trainer.strategy.barrier("feature_cache")
        self.report["seconds"] = sum(split["seconds"] for split in self.report["splits"].values())
        self._attached.enter_context(module.skipping(self.boundary.skipped))

    def _detach(self, trainer) -> None:
        """The datamodule's images back, the module whole again (after the stage: ``module(images)`` works)."""
        for split, images in self._images.items():
            setattr(trainer.datamodule, f"{split}_set", images)
        self._images.clear()
        self._attached.close()

    def setup(self, trainer, pl_module, stage):
        """Before the loaders are built (Lightning builds the training loader while it sets up the optimizer) and before a
        resume restores the weights: ``on_train_start`` and ``on_test_start`` check that the frozen stages are unchanged."""
        self._attach(trainer, pl_module, str(getattr(stage, "value", stage)))

    def _check_weights(self) -> None:
        if self.enabled and self._weights and self.boundary.weights() != self._weights:
            raise RuntimeError("feature cache: the frozen stages' weights changed after their outputs were computed "
                               "(a checkpoint of another model?); run with strategy.cache_features=false")

    def on_train_start(self, trainer, pl_module):
        self._check_weights()

    def on_test_start(self, trainer, pl_module):
        self._check_weights()

    def teardown(self, trainer, pl_module, stage):
        self._detach(trainer)

    def on_exception(self, trainer, pl_module, exception):
        self._detach(trainer)


def callbacks_for(strategy: DictConfig) -> list[FeatureCache]:
    """The cache a strategy config node asks for with its ``cache_*`` keys (a strategy in ``rules.SERVED``); else none."""
    settings = {key: strategy[key] for key in settings_of(hydra.utils.get_class(strategy._target_)) if key in strategy}
    return [FeatureCache(**settings)] if settings else []
