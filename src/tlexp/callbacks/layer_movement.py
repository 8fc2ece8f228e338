"""Which layers moved (Yosinski et al.'s question, answered per run): after every validation, per backbone
stage, the relative distance of its weights from the ones the run started from, and the linear CKA
(Kornblith et al., 2019) between the stage's outputs then and now on a fixed batch of validation images.

Logged as ``movement/<stage>/weight_distance`` and ``movement/<stage>/cka`` (metrics.csv, W&B, and the
final values in ``result.json``'s ``metrics``). A stage that never trains stays at 0 and 1; a run on
cached features (``frozen``'s feature cache) has no images to compare and logs nothing. The stages are the backbone's,
whatever the strategy: parameters a strategy trains apart (BitFit's biases, SSF's scales, LoRA's adapters: ``<stage>.biases``
and the like, ``stages.split_off``) count with the stage they belong to, so every strategy's movement reads on one axis.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from tlexp.inference import inference_pass
from tlexp.stages import HEAD, Stage, stage_outputs_modules


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two (examples x features) matrices, from their centred Gram matrices (cheap for wide features)."""
    def centred_gram(m: torch.Tensor) -> torch.Tensor:
        m = m.flatten(1).double()
        gram = m @ m.T
        mean_rows = gram.mean(0, keepdim=True)
        return gram - mean_rows - mean_rows.T + gram.mean()

    gram_x, gram_y = centred_gram(x), centred_gram(y)
    return float((gram_x * gram_y).sum() / (gram_x.norm() * gram_y.norm()).clamp_min(1e-12))


def by_backbone_stage(stages: list[Stage]) -> dict[str, tuple[list, list[str]]]:
    """Backbone stage name -> (its parameters, their names), with the stages split off it folded back in, in order."""
    merged: dict[str, tuple[list, list[str]]] = {}
    for stage in stages:
        if stage.name != HEAD:
            params, names = merged.setdefault(stage.split_from or stage.name, ([], []))
            params.extend(stage.params)
            names.extend(stage.param_names)
    return merged


def relative_distance(now: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """||w - w_start|| / ||w_start|| over all of a stage's parameters."""
    moved = sum(float((a.detach().cpu().double() - b.double()).pow(2).sum()) for a, b in zip(now, start))
    size = sum(float(b.double().pow(2).sum()) for b in start)
    return (moved / max(size, 1e-24)) ** 0.5


class LayerMovement(Callback):
    """See the module docstring. ``batch_size``: validation images in the fixed batch."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.start: dict[str, list[torch.Tensor]] = {}
        self.features: dict[str, torch.Tensor] = {}
        self.images: torch.Tensor | None = None

    def setup(self, trainer, pl_module, stage):
        """Before a resume restores the weights: the start is the built model (the pretrained weights)."""
        if stage != "fit" or self.start:
            return
        datamodule = trainer.datamodule
        val_set = getattr(datamodule, "val_set", None)
        if val_set is None or not hasattr(datamodule, "normalize"):
            return
        count = min(self.batch_size, len(val_set))
        images = torch.stack([torch.as_tensor(val_set[i][0]) for i in range(count)])
        if images.dtype != torch.uint8:  # cached features, not images: nothing to compare
            return
        self.images = images
        self.start = {name: [p.detach().cpu().clone() for p in params] for name, (params, _) in by_backbone_stage(pl_module.stages).items()}
        self.features = self._stage_features(pl_module, datamodule.normalize)

    def _stage_features(self, pl_module, normalize) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        hooks = []
        for stage, (_, param_names) in by_backbone_stage(pl_module.stages).items():
            try:
                modules = stage_outputs_modules(pl_module.backbone, param_names)
            except AttributeError:  # parameters that are not the backbone's own (none in timm models)
                continue
            for module in modules:
                def keep(_, __, output, name=stage):
                    outputs[name] = (output[0] if isinstance(output, (tuple, list)) else output).detach().float().cpu()
                hooks.append(module.register_forward_hook(keep))
        try:
            with inference_pass(pl_module):
                pl_module.backbone(normalize(self.images.to(pl_module.device)))
        finally:
            for hook in hooks:
                hook.remove()
        return outputs

    def on_validation_epoch_end(self, trainer, pl_module):
        if not self.start or trainer.sanity_checking:
            return
        now = self._stage_features(pl_module, trainer.datamodule.normalize)
        values = {}
        for stage, (params, _) in by_backbone_stage(pl_module.stages).items():
            if stage in self.start:
                values[f"movement/{stage}/weight_distance"] = relative_distance(params, self.start[stage])
                if stage in now and stage in self.features:
                    values[f"movement/{stage}/cka"] = linear_cka(self.features[stage], now[stage])
        pl_module.log_dict(values, on_step=False, on_epoch=True)
