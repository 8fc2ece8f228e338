"""Any timm backbone: built at the data's image size, split into stages that cover every parameter
once, headed by a classifier as wide as its pre-logits features, and trained one step with the
first half of its stages frozen bit-identically. Random init, each family's smallest model, tiny images."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from test_finetuning import changed, snapshot
from tlexp.backbone import create_backbone, feature_width
from tlexp.errors import InvalidValue
from tlexp.stages import HEAD, split_stages
from tlexp.strategies import Partial

ARCHITECTURES = [  # (timm name, image size, constructor kwargs)
    ("resnet18", 32, {}),
    ("resnetv2_18", 32, {}),  # pre-activation
    ("resnext26ts", 32, {}),
    ("regnetx_002", 32, {}),
    ("efficientnet_b0", 32, {}),
    ("mobilenetv3_small_050", 32, {}),
    ("mobilenetv4_conv_small_035", 32, {}),
    ("ghostnet_050", 32, {}),
    ("hgnetv2_b0", 32, {}),
    ("repvgg_a0", 32, {}),
    ("densenet121", 32, {}),
    ("inception_v3", 75, {}),  # callable group matcher; 75 px is its minimum
    ("vgg11_bn", 32, {"mlp_ratio": 1 / 16}),  # pre_logits ConvMlp 512 -> 256 -> 4096 instead of 512 -> 4096 -> 4096
    ("convnext_atto", 32, {}),
    ("convnextv2_atto", 32, {}),
    ("vit_tiny_patch16_224", 32, {}),
    ("deit_tiny_distilled_patch16_224", 32, {}),
    ("eva02_tiny_patch14_224", 28, {}),
    ("cait_xxs24_224", 32, {"depth": 4}),  # callable group matcher
    ("mixer_s16_224", 32, {}),
    ("xcit_nano_12_p16_224", 32, {"depth": 4}),
    ("swin_tiny_patch4_window7_224", 32, {"depths": (1, 1, 1, 1)}),
    ("maxvit_rmlp_pico_rw_256", 32, {}),
    ("coatnet_nano_rw_224", 32, {}),
    ("efficientvit_b0", 32, {}),
    ("efficientvit_m0", 32, {}),
    ("fastvit_t8", 32, {}),
    ("levit_128s", 32, {}),
    ("efficientformerv2_s0", 32, {}),
    ("mobilevit_xxs", 32, {}),
    ("tiny_vit_5m_224", 32, {}),
    ("pvt_v2_b0", 32, {}),
    ("poolformerv2_s12", 32, {}),  # no group_matcher: the children fallback
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny images: intra-op threads cost more than they give, many times more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pre_logits(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled pre-logits features as timm defines them."""
    return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def one_step(module, images, labels, root) -> None:
    """One optimizer step through Lightning with the module's own FineTuning callback."""
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=root)
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(images, labels), batch_size=len(labels)))


def check_partial_step(backbone, img_size, root):
    """Partial with half the backbone stages frozen, one step: returns the module after it."""
    images, labels = torch.randn(4, 3, img_size, img_size), torch.tensor([0, 1, 2, 0])
    depth = (len(split_stages(backbone, nn.Identity())) - 1) // 2
    module = Partial(backbone, 3, frozen_depth=depth, bn_trainable="batch_stats")
    stages = module.backbone_stages
    assert len(stages) >= 2 and depth >= 1
    names = [n for stage in module.stages for n in stage.param_names]
    assert sorted(names) == sorted([n for n, _ in backbone.named_parameters()] + [f"head.{n}" for n, _ in module.head.named_parameters()])
    params = [id(p) for stage in module.stages for p in stage.params]
    assert sorted(params) == sorted(id(p) for p in module.parameters())  # each exactly once
    batchnorms = [id(bn) for stage in module.stages for bn in stage.batchnorms]
    assert sorted(batchnorms) == sorted(id(m) for m in module.modules() if isinstance(m, _BatchNorm))

    frozen = [s.name for s in stages[:depth]]
    trainable = [s.name for s in module.stages[depth:]]
    before_frozen, before_trainable = snapshot(module, frozen), snapshot(module, trainable)
    one_step(module, images, labels, root)
    assert changed(before_frozen, snapshot(module, frozen)) == set()
    assert all(not p.requires_grad and p.grad is None for s in stages[:depth] for p in s.params)
    moved = changed(before_trainable, snapshot(module, trainable))
    assert all(set(stage.param_names) & moved for stage in module.stages[depth:]), "a trainable stage did not move"
    if any(s.batchnorms for s in module.stages[depth:]):  # bn_trainable=batch_stats: their statistics follow the batch
        assert any(k.endswith("running_mean") for k in moved)
    return module


@pytest.mark.parametrize("name,img_size,kwargs", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_backbone_trains_by_stage(tmp_path, name, img_size, kwargs):
    torch.manual_seed(0)
    backbone = create_backbone(name, img_size=img_size, kwargs=kwargs)
    backbone.eval()
    with torch.no_grad():
        features = pre_logits(backbone, torch.randn(2, 3, img_size, img_size))
    assert features.shape == (2, feature_width(backbone))
    module = check_partial_step(backbone, img_size, tmp_path)
    assert module.head[-1].in_features == feature_width(backbone)
    assert module(torch.randn(2, 3, img_size, img_size)).shape == (2, 3)


@pytest.mark.parametrize("name,listed", [
    ("vit_tiny_patch16_224", {"pos_embed", "cls_token"}),
    ("xcit_nano_12_p16_224", {"cls_token", "pos_embed.token_projection.weight"}),  # listed as the pattern 'pos_embed.*'
])
def test_no_weight_decay_parameters_land_in_no_decay_groups(name, listed):
    backbone = create_backbone(name, img_size=32, kwargs={"depth": 2})
    module = Partial(backbone, 3, frozen_depth=0)
    group_of = {id(p): group["name"] for group in module.param_groups() for p in group["params"]}
    named = dict(backbone.named_parameters())
    for param_name in listed:
        assert group_of[id(named[param_name])].endswith("/no_decay"), param_name
    decayed = [n for n, p in named.items() if not group_of[id(p)].endswith("/no_decay")]
    assert decayed and all(named[n].ndim > 1 for n in decayed)
    assert "blocks.0.attn.qkv.weight" in decayed


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width, affine=False)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class Plain(nn.Module):
    """No group matcher: a token on the model itself, a stem, a Sequential of blocks whose BN has
    no affine parameters, a parameter-free activation, a final affine BN."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 8, 1, 1))
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.final_norm = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.blocks(self.act(self.stem(x) + self.token))
        return self.final_norm(x).mean((2, 3))


class OneGroup(Plain):
    def group_matcher(self, coarse=False):
        return {"everything": r".*"}


@pytest.mark.parametrize("model_cls", [Plain, OneGroup])
def test_fallback_stages_are_the_top_level_children(tmp_path, model_cls):
    module = check_partial_step(model_cls(), 16, tmp_path)
    assert [s.name for s in module.stages] == ["stem", "blocks.0", "blocks.1", "final_norm", HEAD]
    stem, block0, block1, final_norm, _ = module.stages
    assert stem.param_names == ["token", "stem.weight", "stem.bias"]
    assert [len(s.batchnorms) for s in module.stages] == [0, 1, 1, 1, 0]
    assert block0.batchnorms[0] is module.backbone.blocks[0].norm


def test_timm_model_without_matcher_falls_back(tmp_path, monkeypatch):
    backbone = create_backbone("resnet18", img_size=32)
    monkeypatch.delattr(type(backbone), "group_matcher")
    module = check_partial_step(backbone, 32, tmp_path)
    assert [s.name for s in module.stages] == ["conv1", "bn1", *(f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)), HEAD]


def test_a_size_the_model_cannot_take_is_refused():
    """By its parameter name here; ``train.build`` reports it as ``data.image_size`` (tests/test_errors.py)."""
    with pytest.raises(InvalidValue, match=r"img_size=32 .*accepted: 224"):
        create_backbone("efficientformer_l1", img_size=32)
