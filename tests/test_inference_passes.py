"""Every pass over a data set keeps no autograd graph and no inference tensors, whether it runs in plain mode or
inside Lightning's inference mode (validation, checkpoint hooks), and gives every module its own mode back.

The class of bug: ``torch.inference_mode(False)`` inside ``torch.no_grad()`` turns gradient tracking back on, so
a pass over 59,000 unlabeled images kept every batch's graph (23 GB, then the OOM killer). ``scripts/benchmark.py
--sections memory`` measures the peak memory of these passes against the data set's size."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_strategy_pseudo_label import NAME, build, data

from tlexp.advice.evidence import domain_distance
from tlexp.backbone import create_backbone
from tlexp.callbacks.layer_movement import LayerMovement
from tlexp.feature_cache.dataset import compute_features, encode_in_batches
from tlexp.inference import inference_pass

MODES = {"plain": contextlib.nullcontext, "grad": torch.enable_grad, "inference_mode": torch.inference_mode}
"""The contexts a pass is called from: a script, a training hook (gradients on), validation (inference mode)."""


def plain(tensor: torch.Tensor) -> bool:
    """Kept from a pass, ``tensor`` must be usable later as training data and hold nothing else alive."""
    return not tensor.requires_grad and tensor.grad_fn is None and not tensor.is_inference()


def mixed_modes(module: torch.nn.Module) -> dict:
    """Put ``module`` in train mode with every BatchNorm in eval (as the freeze plan does); its modes by name."""
    module.train()
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.eval()
    return {name: layer.training for name, layer in module.named_modules()}


@pytest.mark.parametrize("mode", MODES)
def test_inference_pass_turns_gradients_off_and_restores_each_modules_mode(mode):
    backbone = create_backbone(NAME)
    modes = mixed_modes(backbone)
    with MODES[mode](), inference_pass(backbone):
        assert not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert not any(layer.training for layer in backbone.modules())
        out = backbone(torch.randn(2, 3, 32, 32))
    assert plain(out)
    assert {name: layer.training for name, layer in backbone.named_modules()} == modes


@pytest.mark.parametrize("mode", MODES)
def test_pseudo_label_prediction_keeps_two_plain_numbers_per_image(mode):
    datamodule, module = build(rounds=2)
    modes = mixed_modes(module)
    with MODES[mode]():
        confidence, predicted = module.predict_unlabeled(datamodule)
    assert confidence.shape == predicted.shape == (len(module.unlabeled(datamodule)),)
    assert plain(confidence) and plain(predicted) and predicted.dtype == torch.long
    assert {name: layer.training for name, layer in module.named_modules()} == modes
    module.relabel(datamodule, 1)  # the labels join the training set: a training step may use them as targets
    assert all(plain(t) for t in module.pseudo.values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("mode", MODES)
def test_feature_encoding_and_prefix_activations_are_plain(mode):
    datamodule = data().prepare_for(backbone := create_backbone(NAME))
    modes = mixed_modes(backbone)
    with MODES[mode]():
        features, labels = compute_features(backbone, datamodule.train_set, datamodule.normalize, batch_size=8)
        blocks = backbone.blocks[:2]  # a frozen prefix's activations, as the prefix cache encodes them
        activations, _ = encode_in_batches(backbone, datamodule.train_set, datamodule.normalize,
                                           lambda images: blocks(backbone.bn1(backbone.conv_stem(images))), 8, "cpu")
    assert plain(features) and all(plain(a) for a in activations) and len(labels) == len(datamodule.train_set)
    assert {name: layer.training for name, layer in backbone.named_modules()} == modes


def test_advise_and_layer_movement_passes_are_plain():
    datamodule, module = build(rounds=2)
    modes = mixed_modes(module)
    with torch.inference_mode():
        distance = domain_distance(module.backbone, torch.randn(8, 3, 32, 32))
    assert distance and {name: layer.training for name, layer in module.named_modules()} == modes
    movement = LayerMovement()
    movement.images = datamodule.val_set.images[:8]
    with torch.inference_mode():
        features = movement._stage_features(module, datamodule.normalize)
    assert features and all(plain(f) for f in features.values())
    assert {name: layer.training for name, layer in module.named_modules()} == modes
