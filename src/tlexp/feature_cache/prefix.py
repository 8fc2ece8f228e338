"""The frozen prefix cached: ``partial`` and ``gradual`` train on the activations where their frozen stages end.

While the first ``d`` backbone stages are frozen (BatchNorm in eval mode, no augmentation, no dropout or
drop path among them), their output is a fixed function of the image. It is computed once per image, at
the *boundary*, the input of stage ``d``, and the remaining stages and the head train on it; the prefix
modules are passed through (each returns its input) while the module runs on cached activations. An
epoch in which every backbone stage is frozen (``gradual``'s head-only start) uses the pooled features,
with the same key as ``frozen``'s feature cache, so the jobs of a sweep share them.

``gradual`` moves its boundary down at each milestone; one pass over the images at setup captures every
boundary its schedule reaches (forward pre-hooks on the boundary modules, so the pass costs one frozen
forward), and at each epoch's start the splits switch to that epoch's activations (``EpochInputs``). The
activations are computed at the first switch, after a resume has restored the weights. The test split is
cached at the stages that never train. Whether passing the prefix through reproduces the network is
*checked* at setup on a batch of training images, for every boundary: a model whose forward does work
between its modules (ViT's position embedding, say) fails the check and runs uncached (``auto``) or is
refused (``true``).

Files: ``<cache_dir>/<key>.pt`` per split and boundary (``key``: the feature cache's fields, the boundary
stage, the storage dtype, and a hash of the prefix's weights instead of the whole backbone's), loaded
memory-mapped when all of them together exceed ``cache_memory_mb``; refused (``true``) or skipped with a
warning (``auto``) when they would exceed ``cache_disk_mb``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from functools import partial
from itertools import count
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import Dataset

from tlexp.errors import InvalidValue
from tlexp.feature_cache import store
from tlexp.feature_cache.dataset import FeatureDataset, encode_in_batches
from tlexp.feature_cache.key import _digest, cache_key, key_fields, weights_hash
from tlexp.feature_cache.rules import check_setting, resolve, stochastic_layers

log = logging.getLogger("tlexp")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAMPLE = 8
"""Training images the pass-through check runs on."""


class CachesPrefix:
    """Mixin for strategies whose first stages stay frozen (``Partial``, ``Gradual``): their cache settings
    and the ``PrefixCache`` callback. See the module docstring."""

    def __init__(self, *args, cache_features: bool | str = "auto", cache_dir: str | None = None,
                 cache_dtype: str = "float16", cache_memory_mb: float = 4096, cache_disk_mb: float = 20480, **kwargs):
        super().__init__(*args, **kwargs)
        check_setting(cache_features)
        if cache_dtype not in DTYPES:
            raise InvalidValue("cache_dtype", cache_dtype, ", ".join(DTYPES))
        for name, value in (("cache_memory_mb", cache_memory_mb), ("cache_disk_mb", cache_disk_mb)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise InvalidValue(name, value, "a size in MB >= 0")
        self.hparams.update(cache_features=cache_features, cache_dir=cache_dir, cache_dtype=cache_dtype,
                            cache_memory_mb=cache_memory_mb, cache_disk_mb=cache_disk_mb)

    def configure_callbacks(self):
        return [*super().configure_callbacks(), PrefixCache(**{k: self.hparams[k] for k in (
            "cache_features", "cache_dir", "cache_dtype", "cache_memory_mb", "cache_disk_mb")})]


def _pass_through(inputs, *args, **kwargs):
    return inputs


@contextlib.contextmanager
def passed_through(modules: list[nn.Module]):
    """Each of ``modules`` returns its input (an instance ``forward`` shadowing the class's) inside the block."""
    for module in modules:
        module.forward = _pass_through
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def boundary_module(backbone: nn.Module, stage, starts: dict[str, list[int]]) -> nn.Module:
    """The first module to run (``starts``, from ``trace``) that holds parameters of ``stage`` only: the
    stage's input is its input (``blocks.6`` for a stage of ``blocks.6``, ``conv_head`` and ``bn2``)."""
    mine, first = set(stage.param_names), None
    for name, module in backbone.named_modules():
        owned = {f"{name}.{param}" for param, _ in module.named_parameters()}
        if name in starts and owned and owned <= mine and (first is None or starts[name][0] < starts[first[0]][0]):
            first = (name, module)
    if first is None:
        raise ValueError(f"no module of stage {stage.name} runs in the backbone's forward")
    return first[1]


def trace(backbone: nn.Module, images: torch.Tensor) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """When each named module of ``backbone`` starts and ends (call order) in one forward of ``images``."""
    clock = count()
    starts, ends = defaultdict(list), defaultdict(list)
    hooks = []
    for name, module in backbone.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(lambda *_, n=name: starts[n].append(next(clock))))
            hooks.append(module.register_forward_hook(lambda *_, n=name: ends[n].append(next(clock))))
    try:
        with torch.no_grad():
            backbone(images)
    finally:
        for hook in hooks:
            hook.remove()
    return starts, ends


def prefix_modules(backbone: nn.Module, boundary: nn.Module, starts, ends) -> list[nn.Module]:
    """The largest modules whose every call ended before ``boundary`` started: the work the cache replaces."""
    names = {module: name for name, module in backbone.named_modules()}
    begin = starts[names[boundary]][0]
    done = [name for name, calls in ends.items() if max(calls) < begin and min(starts[name]) < begin]
    done = [name for name in done if not any(name.startswith(other + ".") for other in done)]
    modules = dict(backbone.named_modules())
    return [modules[name] for name in done]


class Capture(Exception):
    """Raised by the last boundary's hook: the rest of the forward is not needed."""


@torch.no_grad()
def capture(backbone: nn.Module, boundaries: dict[int, nn.Module], images: torch.Tensor, full: bool) -> dict[int, torch.Tensor]:
    """Inputs of the ``boundaries`` modules (depth -> tensor) in one forward of ``images``; with ``full`` also
    the backbone's output (depth ``None``); else the forward stops once every boundary has been seen."""
    found: dict = {}

    def keep(depth):
        def hook(_, args):
            found.setdefault(depth, args[0].detach())
            if len(found) == len(boundaries) and not full:  # every boundary seen, whichever ran last
                raise Capture
        return hook

    hooks = [module.register_forward_pre_hook(keep(depth)) for depth, module in boundaries.items()]
    try:
        output = backbone(images)
        found[None] = output.detach()
    except Capture:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return found


def prefix_hash(prefix: list[nn.Module]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for index, module in enumerate(prefix):
        for name, tensor in sorted(module.state_dict().items()):
            hasher.update(f"{index}.{name}".encode())
            _digest(hasher, tensor)
    return hasher.hexdigest()


class EpochInputs(Dataset):
    """A split whose inputs change with the epoch: images, or the cached activations at the epoch's boundary.

    ``select(depth)`` switches them (the callback, at each epoch's start, before the loaders iterate), so the
    loaders need not be rebuilt; its loaders run without worker processes, which would keep a stale copy
    (``switches_inputs``). The activations are computed or loaded by ``build`` at the first ``select``: after
    Lightning has restored a checkpoint's weights, and without drawing from the RNG (``encode_in_batches``), so an
    epoch resumed mid-way continues with the checkpoint's streams."""

    switches_inputs = True

    def __init__(self, build, images: Dataset):
        self.build, self.images, self.active = build, images, images
        self.by_depth: dict[int, Dataset] | None = None

    def select(self, depth: int) -> None:
        if self.by_depth is None:
            self.by_depth = self.build()
        self.active = self.by_depth.get(depth, self.images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.active[index]


def images_of(dataset: Dataset | None) -> Dataset | None:
    return dataset.images if isinstance(dataset, EpochInputs) else dataset


class PrefixCache(Callback):
    """Caches the frozen prefix of a ``CachesPrefix`` strategy at setup and tells the module, per epoch and split,
    which boundary its inputs come from (``pl_module.cached_depth``). See the module docstring."""

    def __init__(self, cache_features="auto", cache_dir: str | None = None, cache_dtype: str = "float16",
                 cache_memory_mb: float = 4096, cache_disk_mb: float = 20480):
        check_setting(cache_features)
        self.setting, self.cache_dir = cache_features, Path(cache_dir).expanduser() if cache_dir else None
        self.dtype, self.memory_mb, self.disk_mb = DTYPES[cache_dtype], cache_memory_mb, cache_disk_mb
        self.enabled: bool | None = None
        self.depths: list[int] = []
        """Frozen depth per epoch (0: images)."""
        self.test_depth = 0
        self.prefixes: dict[int, list[nn.Module]] = {}
        self.boundaries: dict[int, nn.Module] = {}
        self.hashes: dict[int, str] = {}
        self.numel: dict[int, int] = {}
        self.report: dict = {}

    # --- deciding --------------------------------------------------------------------------
    def _refuse(self, reason: str) -> bool:
        if self.setting is True:
            raise InvalidValue("cache_features", True, "false or auto with these settings", reason)
        log.info("prefix cache off (strategy.cache_features=auto): %s", reason)
        return False

    @torch.no_grad()
    def _decide(self, trainer, pl_module) -> bool:
        datamodule, plan = trainer.datamodule, pl_module.plan
        if self.setting is False:
            return False
        if datamodule is None or not hasattr(datamodule, "normalize"):
            return self._refuse("the prefix cache needs a tlexp datamodule")
        if not resolve(self.setting, plan.bn_policy, getattr(datamodule, "augment", False)):
            return False
        if getattr(pl_module.hparams, "unfreeze_on", "schedule") != "schedule":
            return self._refuse("unfreeze_on=plateau decides the boundary during training")
        if getattr(pl_module.backbone, "_compiled_call_impl", None) is not None:
            return self._refuse("trainer.compile=true compiles the backbone's forward as one graph")
        stages = pl_module.backbone_stages
        self.depths = [plan.fixed_depth(epoch) for epoch in range(trainer.max_epochs)]
        self.test_depth = min(self.depths, default=0)
        needed = sorted(set(self.depths) - {0})
        if not needed:
            return False  # nothing frozen: nothing to cache
        train = images_of(datamodule.train_set)
        sample = torch.stack([torch.as_tensor(train[i][0]) for i in range(min(SAMPLE, len(train)))])
        if sample.dtype != torch.uint8:
            return self._refuse("the training split holds no images")
        images = datamodule.normalize(sample)
        backbone = pl_module.backbone
        was_training = pl_module.training
        pl_module.eval()
        try:
            starts, ends = trace(backbone, images)
            for depth in needed:
                if depth < len(stages):
                    stochastic = [name for module in self.prefix_of(pl_module, depth, starts, ends)
                                  for name in stochastic_layers(module)]
                    if stochastic:
                        return self._refuse(f"dropout/drop path in the frozen stages ({stochastic[0]}; see model.kwargs)")
            activations = capture(backbone, self.boundaries, images, full=True)
            reference = pl_module.head(activations[None])
            for depth in self.boundaries:
                try:
                    with passed_through(self.prefixes[depth]):
                        logits = pl_module.head(backbone(activations[depth]))
                    difference = f"max |difference| {float((logits - reference).abs().max()):.2g}"
                    same = torch.allclose(logits, reference, rtol=1e-4, atol=1e-5)
                except Exception as error:  # the forward's own code between modules cannot take the activations
                    same, difference = False, f"{type(error).__name__}: {error}"
                if not same:
                    return self._refuse(f"passing the first {depth} stages through does not reproduce "
                                        f"{type(backbone).__name__} (its forward works between its modules; {difference})")
        finally:
            pl_module.train(was_training)
        # values per image at each boundary (the pooled features at the top): the budget's sizes
        self.numel = {d: activations[d][0].numel() for d in self.boundaries} | {len(stages): activations[None][0].numel()}
        return self._skip_large(images[0].numel())

    def _skip_large(self, image_numel: int) -> bool:
        """``auto`` leaves out boundaries whose activations are larger than the images (a stem's output): storing
        them costs more memory than the little work it saves (section 6 of docs/BENCHMARKS.md); those epochs train on images."""
        large = {d for d in self.boundaries if self.setting == "auto" and self.numel[d] > image_numel}
        if large:
            log.info("prefix cache (auto): not at frozen depth %s, whose activations (%s values per image) are larger than "
                     "the images (%d)", sorted(large), [self.numel[d] for d in sorted(large)], image_numel)
        self.depths = [0 if d in large else d for d in self.depths]
        self.test_depth = 0 if self.test_depth in large else self.test_depth
        return bool(set(self.depths) - {0})

    def prefix_of(self, pl_module, depth: int, starts, ends) -> list[nn.Module]:
        """The modules that run before stage ``depth`` (and its boundary module, kept in ``boundaries``)."""
        if depth not in self.prefixes:
            backbone = pl_module.backbone
            self.boundaries[depth] = boundary_module(backbone, pl_module.backbone_stages[depth], starts)
            self.prefixes[depth] = prefix_modules(backbone, self.boundaries[depth], starts, ends)
        return self.prefixes[depth]

    # --- caching ---------------------------------------------------------------------------
    def _key(self, pl_module, datamodule, split: str, depth: int, dataset, whole: str) -> str:
        if depth == len(pl_module.backbone_stages):  # the pooled features: frozen's key, shared with its jobs
            return cache_key(key_fields(pl_module.backbone, datamodule, split, whole, dataset))
        fields = key_fields(pl_module.backbone, datamodule, split, self.hashes[depth], dataset)
        return cache_key({**fields, "boundary": pl_module.backbone_stages[depth].name, "dtype": str(self.dtype)})

    def _cache_split(self, trainer, pl_module, split: str, depths: list[int]) -> dict[int, FeatureDataset]:
        datamodule = trainer.datamodule
        dataset = images_of(getattr(datamodule, f"{split}_set", None))
        if dataset is None or not depths:
            return {}
        whole = weights_hash(pl_module.backbone)
        self.hashes = {depth: prefix_hash(prefix) for depth, prefix in self.prefixes.items()}
        keys = {d: self._key(pl_module, datamodule, split, d, dataset, whole) for d in depths}
        paths = {d: self.cache_dir / f"{keys[d]}.pt" if self.cache_dir else None for d in depths}
        mmap = self.report["memory_mapped"] = self.cache_dir is not None and self.report["bytes"] > self.memory_mb * 2**20
        loaded = {d: store.load(paths[d], keys[d], mmap=mmap) if paths[d] else None for d in depths}
        missing = [d for d in depths if loaded[d] is None]
        started = time.perf_counter()
        if missing:
            with contextlib.ExitStack() as locks:
                for d in missing:
                    locks.enter_context(store.computing(paths[d]))
                loaded.update({d: store.load(paths[d], keys[d], mmap=mmap) if paths[d] else None for d in missing})
                missing = [d for d in missing if loaded[d] is None]
                if missing:
                    computed = self._compute(pl_module, datamodule, dataset, missing, trainer.strategy.root_device)
                    for d in missing:
                        if paths[d]:
                            store.save(paths[d], {"key": keys[d], "features": computed[d], "labels": computed["labels"]})
                            loaded[d] = store.load(paths[d], keys[d], mmap=mmap)
                        else:
                            loaded[d] = computed[d], computed["labels"]
        seconds = time.perf_counter() - started
        for d in depths:
            self.report.setdefault("splits", {})[f"{split}@{d}"] = {"key": keys[d], "hit": d not in missing,
                                                                   "shape": list(loaded[d][0].shape)}
        log.info("prefix cache %s: depths %s (%s computed, %.2f s)", split, depths, missing or "none", seconds)
        self.report["seconds"] = self.report.get("seconds", 0.0) + seconds
        return {d: FeatureDataset(*loaded[d], key=keys[d], source=dataset, weights=self.hashes.get(d, whole)) for d in depths}

    def _compute(self, pl_module, datamodule, dataset, depths: list[int], device) -> dict:
        """Every missing boundary of ``depths`` in one pass over the split's images."""
        backbone, top = pl_module.backbone, len(pl_module.backbone_stages)
        boundaries = {d: self.boundaries[d] for d in depths if d < top}

        def encode(images):
            found = capture(backbone, boundaries, images, top in depths)
            return {d: (found[d].to(self.dtype) if d in boundaries else found[None].float()).cpu() for d in depths}

        outputs, labels = encode_in_batches(backbone, dataset, datamodule.normalize, encode,
                                            datamodule.batch_size, device)
        return {"labels": labels, **{d: torch.cat([batch[d] for batch in outputs]) for d in depths}}

    def _budget(self, trainer, pl_module, depths_by_split: dict[str, list[int]]) -> bool:
        """Bytes of every split and boundary, from the per-image sizes ``_decide`` measured; False (auto) when over ``cache_disk_mb``."""
        datamodule = trainer.datamodule
        top = len(pl_module.backbone_stages)
        per_image = {d: numel * (4 if d == top else self.dtype.itemsize) for d, numel in self.numel.items()}
        total = 0
        for split, depths in depths_by_split.items():
            dataset = getattr(datamodule, f"{split}_set", None)
            total += len(dataset) * sum(per_image[d] for d in depths) if dataset is not None else 0
        self.report["bytes"] = total
        limit = self.disk_mb if self.cache_dir else self.memory_mb
        if total > limit * 2**20:
            where = "cache_disk_mb" if self.cache_dir else "cache_memory_mb (no cache_dir: in memory)"
            reason = f"the cached activations would take {total / 2**20:.0f} MB, over strategy.{where.split()[0]}={limit:g}"
            if self.setting is True:
                raise InvalidValue(where.split()[0], limit, f"at least {total / 2**20:.0f} (MB), or cache_features=false", reason)
            log.warning("prefix cache off: %s", reason)
            return False
        return True

    # --- Lightning -------------------------------------------------------------------------
    def depth_at(self, epoch: int) -> int:
        return self.depths[min(epoch, len(self.depths) - 1)] if self.depths else 0

    def setup(self, trainer, pl_module, stage):
        """Decides (once) and gives the stage's splits inputs that switch to cached activations (``EpochInputs``)."""
        self._use(trainer, pl_module, 0)
        if self.enabled is None:
            self.enabled = self._decide(trainer, pl_module)
        if not self.enabled:
            return
        stage = str(getattr(stage, "value", stage))
        needed = sorted(set(self.depths) - {0})
        test = [self.test_depth] if self.test_depth else []
        splits = {"fit": {"train": needed, "val": needed}, "validate": {"val": needed}}.get(
            stage, {"test": test, "target_test": test})
        if "bytes" not in self.report and not self._budget(trainer, pl_module, splits | {"test": test}):
            self.enabled = False
            return
        for split, depths in splits.items():
            current = getattr(trainer.datamodule, f"{split}_set", None)
            if current is not None and depths:
                build = partial(self._cache_split, trainer, pl_module, split, depths)
                setattr(trainer.datamodule, f"{split}_set", EpochInputs(build, images_of(current)))

    def _use(self, trainer, pl_module, depth: int, splits=()) -> None:
        """The module told, and the splits switched to, the inputs at ``depth`` (0: images)."""
        for split in splits:
            dataset = getattr(trainer.datamodule, f"{split}_set", None)
            if isinstance(dataset, EpochInputs):
                dataset.select(depth)
        pl_module.cached_depth = depth or None
        pl_module.skipped_modules = self.prefixes.get(depth, [])

    def on_train_start(self, trainer, pl_module):
        """A mid-epoch resume skips ``on_train_epoch_start``."""
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.enabled:
            self._use(trainer, pl_module, self.depth_at(trainer.current_epoch), ("train", "val"))

    def on_validation_epoch_start(self, trainer, pl_module):
        if self.enabled:
            self._use(trainer, pl_module, self.depth_at(trainer.current_epoch), ("val",))

    def on_test_epoch_start(self, trainer, pl_module):
        if self.enabled:
            self._use(trainer, pl_module, self.test_depth, ("test", "target_test"))

    def teardown(self, trainer, pl_module, stage):
        """After the stage the module takes images again (e.g. ``module(images)`` for inference)."""
        self._use(trainer, pl_module, 0)
