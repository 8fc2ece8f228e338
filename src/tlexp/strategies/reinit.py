"""Re-initialise the top backbone stages, keep the early ones: for moderate domain shift or negative
transfer, where the most task-specific pretrained features hurt more than random ones."""

from typing import Annotated

import timm
import torch
from torch import nn

from tlexp.errors import InvalidValue
from tlexp.module import TransferModule
from tlexp.rules import integer, is_integer
from tlexp.stages import Stage


def fresh_twin(backbone: nn.Module) -> nn.Module:
    """A randomly initialised model of the backbone's timm architecture, initialised by timm itself
    (each family has its own scheme: ``efficientnet_init_weights``, ResNet's, ViT's ``init_weights``...).

    Drawn from the current random state in a fork of it, so the run's later draws (data order, dropout)
    are the same as for any other strategy and only the re-initialised weights differ."""
    architecture = backbone.pretrained_cfg["architecture"]
    with torch.random.fork_rng(devices=[]):
        return timm.create_model(architecture, pretrained=False, num_classes=0)


def reinitialise(backbone: nn.Module, stages: list[Stage]) -> None:
    """Copy a fresh twin's parameters and BatchNorm buffers (running statistics) into ``stages``, in place."""
    twin = fresh_twin(backbone)
    twin_params = dict(twin.named_parameters())
    twin_modules = dict(twin.named_modules())
    module_names = {id(module): name for name, module in backbone.named_modules()}
    pairs = [(param, twin_params.get(name), name) for stage in stages for name, param in zip(stage.param_names, stage.params)]
    for stage in stages:
        for bn in stage.batchnorms:
            name = module_names[id(bn)]
            fresh = dict(twin_modules[name].named_buffers()) if name in twin_modules else {}
            pairs += [(buffer, fresh.get(key), f"{name}.{key}") for key, buffer in bn.named_buffers()]
    for target, source, name in pairs:  # all checked before anything is copied
        if source is None or source.shape != target.shape:
            found = "missing" if source is None else tuple(source.shape)
            raise InvalidValue("reinit_stages", len(stages), "fewer stages, whose weights timm's default build of "
                               f"{backbone.pretrained_cfg['architecture']} reproduces",
                               f"{name}: {tuple(target.shape)} in the backbone, {found} in a fresh model (size arguments)")
    with torch.no_grad():
        for target, source, _ in pairs:
            target.copy_(source)


class Reinit(TransferModule):
    """The top ``reinit_stages`` backbone stages start from timm's random initialisation, the rest
    from the pretrained weights; everything trains from the start at discriminative rates
    (``lr_decay`` per stage downwards)."""

    def __init__(self, *args, reinit_stages: Annotated[int, integer(1, refined=True)] = 1, **kwargs):
        super().__init__(*args, **kwargs)
        names = [stage.name for stage in self.backbone_stages]
        if not (is_integer(reinit_stages, 1) and reinit_stages <= len(names)):  # the declared rule, bounded by the model
            raise InvalidValue("reinit_stages", reinit_stages, f"an integer in [1, {len(names)}] (backbone stages: {names})")
        self.hparams.reinit_stages = reinit_stages
        reinitialise(self.backbone, self.backbone_stages[-reinit_stages:])

