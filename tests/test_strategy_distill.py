"""Distillation, measured: the soft term is zero when student and teacher agree; alpha=0 is plain
training bit for bit; the teacher, a finished tlexp run, gives the soft targets and never moves."""

from __future__ import annotations

import pytest
import torch
from conftest import read_json, read_metrics
from test_finetuning import build, trainer

from tlexp.errors import InvalidValue
from tlexp.strategies import Distill, Full
from tlexp.strategies.distill import load_teacher
from tlexp.strategies.soft_targets import FrozenModel, soft_target_kl


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_kl_is_zero_for_equal_logits_and_scales_with_t_squared():
    logits = torch.randn(8, 5) * 3
    assert soft_target_kl(logits, logits.clone(), 4.0).item() == 0.0
    other = torch.randn(8, 5)
    plain = torch.nn.functional.kl_div(other.log_softmax(1), logits.log_softmax(1), reduction="batchmean", log_target=True)
    assert torch.allclose(soft_target_kl(other, logits, 1.0), plain)
    assert soft_target_kl(other, logits, 4.0) > 0


def test_frozen_model_renormalizes_to_its_own_preprocessing():
    """A teacher with other mean/std gets the images as its own data module would have given them."""
    raw = torch.rand(2, 3, 4, 4)
    student = (torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5))
    own = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    frozen = FrozenModel(torch.nn.Identity(), renormalize=(student, own))
    assert torch.allclose(frozen((raw - student[0]) / student[1]), (raw - own[0]) / own[1], atol=1e-6)


def test_alpha_zero_trains_bit_for_bit_like_full(tmp_path, teacher_run):
    datamodule, plain = build(Full)
    trainer(2, tmp_path / "full").fit(plain, datamodule=datamodule)
    datamodule, student = build(Distill, teacher=str(teacher_run), alpha=0.0)
    trainer(2, tmp_path / "distill").fit(student, datamodule=datamodule)
    expected, got = state(plain), state(student)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_teacher_gives_the_soft_targets_and_never_moves(tmp_path, teacher_run):
    datamodule, student = build(Distill, teacher=str(teacher_run), alpha=0.9, temperature=4.0)
    teacher = student.teacher.model
    before = state(teacher)
    record = read_json(teacher_run / "result.json")
    saved = torch.load(record["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], saved[k]) for k in saved) and before.keys() == saved.keys()
    assert not any(p is q for p in student.parameters() for q in teacher.parameters())
    assert sum(p.numel() for p in student.parameters()) == sum(s.numel for s in student.stages)

    images, labels = next(iter(datamodule.train_dataloader()))
    images = datamodule.normalize(images)
    reference = load_teacher(str(teacher_run), datamodule.num_classes)
    with torch.no_grad():
        assert torch.equal(student.teacher(images), reference(images))
        logits = student(images)
        loss = student.training_loss(images, logits, labels)
        expected = 0.9 * soft_target_kl(logits, reference(images), 4.0) + 0.1 * student.criterion(logits, labels)
    assert torch.allclose(loss, expected)

    trainer(2, tmp_path).fit(student, datamodule=datamodule)
    after = state(teacher)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(key.startswith("teacher") for key in student.state_dict())


def test_bad_teachers_are_refused(tmp_path, teacher_run):
    with pytest.raises(InvalidValue) as error:
        build(Distill)
    assert error.value.name == "teacher"
    with pytest.raises(InvalidValue) as error:
        build(Distill, teacher=str(tmp_path))  # no run here
    assert error.value.name == "teacher"
    with pytest.raises(InvalidValue) as error:
        load_teacher(str(teacher_run), num_classes=7)  # the run has 4 classes
    assert error.value.name == "teacher" and "same 7 classes" in str(error.value)
    with pytest.raises(InvalidValue) as error:
        build(Distill, teacher=str(teacher_run), alpha=1.5)
    assert error.value.name == "alpha"


def test_distill_end_to_end_and_resume(tmp_path, teacher_run, main_direct):
    """The job strategy=distill with a run directory as teacher; then 1 more epoch resumed from last.ckpt. In this
    process (``main_direct``: the job train.py runs, result.json and metrics.csv included, without Hydra's runtime,
    which neither run uses); train.py itself runs distill in the shared sweep (test_strategies_e2e.py)."""
    first = tmp_path / "first"
    code, output = main_direct(first, "strategy=distill", f"strategy.teacher={teacher_run}", "trainer.max_epochs=1")
    assert code == 0, output[-6000:]
    record = read_json(first / "result.json")
    assert record["status"] == "completed" and 0 <= record["test_acc"] <= 1
    assert any("train/loss_kl" in row for row in read_metrics(first))
    resumed = tmp_path / "resumed"
    code, output = main_direct(resumed, "strategy=distill", f"strategy.teacher={teacher_run}", "trainer.max_epochs=2",
                               f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    assert code == 0, output[-6000:]
    record = read_json(resumed / "result.json")
    assert record["status"] == "completed" and record["resumed_from"]
    history = read_metrics(resumed)  # the first run's epoch (continued history), then the resumed run's
    assert {int(row["epoch"]) for row in history if "train/loss_kl" in row} == {0, 1}
    assert [row for row in history if row["epoch"] == 0] == [row for row in read_metrics(first) if row["epoch"] == 0]
