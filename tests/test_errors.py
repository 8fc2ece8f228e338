"""Bad input: one clear message naming the key and what is accepted, a non-zero exit, and a run
directory that does not look finished. All of these fail before training starts.

Every case runs train.py's entry point in this process on a config composed with its overrides (``main_direct``:
the same job and exit code, monkeypatches apply); a few also run as real ``python train.py`` subprocesses to prove
Hydra's parsing of the command line, the process exit status and output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import tlexp.data.fashion_mnist as fashion_mnist
from conftest import run_train

STAGES = "['stem', 'blocks.0', 'blocks.1', 'blocks.2', 'blocks.3', 'blocks.4']"  # model=tiny's backbone stages


def write_png(path, value: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(path)


def image_root(tmp_path, kind: str) -> str:
    root = tmp_path / f"images_{kind}"
    if kind == "missing":
        return str(root)
    root.mkdir()
    if kind == "one_class":
        for i in range(4):
            write_png(root / "cats" / f"{i}.png", 40 * i)
        (root / "dogs").mkdir()  # a class folder without images does not count
    if kind in ("two_classes", "a_lone_dog"):  # 2 x 12 images, or 12 cats and 1 dog
        for name in ("cats", "dogs"):
            for i in range(12 if kind == "two_classes" or name == "cats" else 1):
                write_png(root / name / f"{i}.png", 10 * i)
    return str(root)


def foreign_weights(tmp_path) -> str:
    """A real timm state dict, of a different architecture than model=tiny."""
    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    return str(path)


# id -> (overrides, or a callable tmp_path -> overrides; fragments the error line must contain)
CASES = {
    "fraction_zero": (["data.fraction=0"], ["data.fraction=0 ", "accepted: a number in (0, 1]"]),
    "fraction_above_one": (["data.fraction=1.5"], ["data.fraction=1.5 ", "(0, 1]"]),
    "frozen_depth_negative": (["strategy=partial", "strategy.frozen_depth=-1"], ["strategy.frozen_depth=-1 ", "[0, 6]", STAGES]),
    "frozen_depth_too_deep": (["strategy=partial", "strategy.frozen_depth=99"], ["strategy.frozen_depth=99 ", "[0, 6]"]),
    "lr_head_zero": (["strategy.lr_head=0"], ["strategy.lr_head=0 ", "a learning rate > 0"]),
    "lr_backbone_negative": (["strategy.lr_backbone=-1"], ["strategy.lr_backbone=-1 ", "a learning rate > 0"]),
    "max_epochs_zero": (["trainer.max_epochs=0"], ["trainer.max_epochs=0 ", "an integer >= 1"]),
    "milestone_unknown_stage": (["strategy=gradual", "strategy.milestones={blocks.99:1}"],
                                ["strategy.milestones='blocks.99'", STAGES]),
    "milestone_negative_epoch": (["strategy=gradual", "strategy.milestones={blocks.4:-1}"],
                                 ["strategy.milestones.blocks.4=-1 ", "an epoch number >= 0"]),
    "lr_ratio_zero": (["strategy=discriminative", "strategy.lr_ratio=0"], ["strategy.lr_ratio=0 ", "a ratio in (0, 1]"]),
    "unfreeze_by_above_one": (["strategy=gradual", "strategy.unfreeze_by=2"],
                              ["strategy.unfreeze_by=2 ", "a share of trainer.max_epochs in (0, 1]"]),
    "unfreeze_by_without_run_length": (["strategy=gradual", "strategy.max_epochs=null"],
                                       ["strategy.max_epochs=None ", "trainer.max_epochs", "unfreeze_by is a share of it"]),
    "image_folder_no_root": (["data=image_folder"], ["data.root='???'", "required"]),
    "image_folder_missing_root": (lambda tmp: ["data=image_folder", f"data.root={image_root(tmp, 'missing')}"],
                                  ["data.root=", "images_missing", "accepted: a folder with <class>/ subfolders", "does not exist"]),
    "image_folder_empty_root": (lambda tmp: ["data=image_folder", f"data.root={image_root(tmp, 'empty')}"],
                                ["data.root=", "images_empty", "accepted: a folder with <class>/ subfolders", "no image files"]),
    # an explicit size the data cannot give: the carve's own range (the synthetic set: 4 classes x 64 images)
    "val_size_too_large": (["data.val_size=500"], ["data.val_size=500 ", "between 4 (one per class) and 255 examples"]),
    "val_size_zero": (["data.val_size=0"], ["data.val_size=0 ", "auto, a number of examples >= 1 or a share in (0, 1)"]),
    "val_split_too_large": (lambda tmp: ["data=image_folder", f"data.root={image_root(tmp, 'two_classes')}", "data.val_split=24"],
                            ["data.val_split=24 ", "between 2 (one per class) and 23 examples"]),
    "val_split_auto_class_of_one": (lambda tmp: ["data=image_folder", f"data.root={image_root(tmp, 'a_lone_dog')}"],
                                    ["data.val_split='auto' ", "at least 2 images", "class 1 has 1"]),
    "batch_size_word": (["data.batch_size=big"], ["data.batch_size='big'", "auto or an integer >= 1"]),
    "test_limit_zero": (["data.test_limit=0"], ["data.test_limit=0 ", "auto (the whole test split up to 10,000 images)"]),
    "image_folder_one_class": (lambda tmp: ["data=image_folder", f"data.root={image_root(tmp, 'one_class')}"],
                               ["data.root=", "images_one_class", "at least 2 classes"]),
    "image_size_the_model_cannot_take": (["model=timm", "model.name=test_vit", "data.image_size=30"],
                                         ["data.image_size=30 ", "accepted: 160", "divisible by patch size"]),
    "unknown_key_in_a_node": (["strategy=partial", "+strategy.frozn_depth=3"],
                              ["strategy.frozn_depth=3 ", "did you mean strategy.frozen_depth?"]),
    "weights_missing_file": (["model.weights=/nonexistent.pth"],
                             ["model.weights='/nonexistent.pth'", "an existing weights file", "not found"]),
    "weights_other_architecture": (lambda tmp: [f"model.weights={foreign_weights(tmp)}"],
                                   ["model.weights=", "test_resnet.pth", "a weights file that fits model.name=test_efficientnet"]),
}


def assert_failed_cleanly(code: int, output: str, run_dir, fragments: list[str]):
    assert code != 0, output
    errors = [line for line in output.splitlines() if line.startswith("tlexp: error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "is not accepted; accepted:" in errors[0]
    assert "Traceback" not in output, output
    assert not (run_dir / "checkpoints").exists()
    result = run_dir / "result.json"
    if result.exists():
        record = json.loads(result.read_text())
        assert record["status"] == "failed" and record["error"].startswith("config error: ")
        assert "completed" not in result.read_text()
    assert not (run_dir / "metrics.csv").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_in_process(case, tmp_path, main_direct):
    overrides, fragments = CASES[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    run_dir = tmp_path / "run"
    code, output = main_direct(run_dir, *overrides)
    assert_failed_cleanly(code, output, run_dir, fragments)


def test_fashion_mnist_unreachable(tmp_path, monkeypatch, main_direct):
    """No files under data.root, no Debian package, download=false: a config error naming data.root."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no_debian_dir")
    (tmp_path / "empty").mkdir()
    run_dir = tmp_path / "run"
    code, output = main_direct(run_dir, "data=fashion_mnist", f"data.root={tmp_path / 'empty'}", "data.download=false")
    assert_failed_cleanly(code, output, run_dir, ["data.root=", "Fashion-MNIST IDX files", "no_debian_dir",
                                                  "dataset-fashion-mnist"])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["weights_other_architecture"])
def test_bad_input_subprocess(case, tmp_path):
    """The same failures from a real ``python train.py``: exit status 1, one error line on stderr (one case: a
    failure while building, after the config check; the config check's failures reach the same exit path)."""
    overrides, fragments = CASES[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    run_dir = tmp_path / "run"
    result = run_train(run_dir, *overrides, check=False, timeout=300)
    assert result.returncode == 1, result.stdout[-4000:]
    assert_failed_cleanly(result.returncode, result.stdout, run_dir, fragments)
