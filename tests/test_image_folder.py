"""data=image_folder with real-world folders: every file checked once at setup, unreadable and non-image
files left out (or refused with data.on_bad_image=error), the check cached, and every image mode decoded
to the RGB it is meant to look like."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlexp.data.file_check as file_check
from conftest import compose_config, read_json
from tlexp import config
from tlexp.data import ImageFolder
from tlexp.data.file_check import CACHE_NAME
from tlexp.data.images import load_rgb
from tlexp.errors import ConfigError, InvalidValue

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}
WHITE, RED = (255, 255, 255), (255, 0, 0)


def left_half(mode: str, size: tuple[int, int], left, right) -> Image.Image:
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def palette_with_transparency() -> Image.Image:
    image = left_half("P", (8, 8), 0, 1)  # index 0 red, index 1 transparent
    image.putpalette([*RED, 0, 0, 0])
    image.info["transparency"] = 1
    return image


def exif_rotated() -> tuple[Image.Image, dict]:
    """40x20, left half white; EXIF orientation 6 says: show it turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return left_half("L", (40, 20), 255, 0).convert("RGB"), {"exif": exif}


def gradient_16bit(dtype) -> Image.Image:
    """0..255 spread over the 16-bit range (v * 257), one value per column."""
    return Image.fromarray(np.tile(np.arange(256) * 257, (4, 1)).astype(dtype))


# file name -> (image, save options, {pixel: expected RGB}, tolerance: JPEG is lossy)
MODES = {
    "rgb.jpg": (Image.new("RGB", (8, 8), (200, 30, 30)), {}, {(4, 4): (200, 30, 30)}, 4),
    "gray.jpg": (Image.new("L", (8, 8), 90), {}, {(4, 4): (90, 90, 90)}, 2),
    "cmyk.jpg": (Image.new("CMYK", (8, 8), (255, 0, 0, 0)), {}, {(4, 4): (0, 255, 255)}, 4),
    "palette.png": (palette_with_transparency(), {"transparency": 1}, {(1, 1): RED, (6, 1): WHITE}, 0),
    "rgba.png": (left_half("RGBA", (8, 8), (*RED, 255), (0, 0, 0, 0)), {}, {(1, 1): RED, (6, 1): WHITE}, 0),
    "la.png": (left_half("LA", (8, 8), (100, 255), (0, 0)), {}, {(1, 1): (100, 100, 100), (6, 1): WHITE}, 0),
    "bilevel.png": (left_half("1", (8, 8), 1, 0), {}, {(1, 1): WHITE, (6, 1): (0, 0, 0)}, 0),
    "gray16.png": (gradient_16bit(np.uint16), {}, {(0, 0): (0, 0, 0), (128, 0): (128, 128, 128)}, 0),
    "gray32.tif": (gradient_16bit(np.int32), {}, {(255, 0): WHITE, (17, 2): (17, 17, 17)}, 0),
    "rotated.jpg": (*exif_rotated(), {(10, 5): WHITE, (10, 35): (0, 0, 0)}, 8),
}
OPENS_AS = {"gray16.png": "I;16", "gray32.tif": "I", "palette.png": "P", "la.png": "LA", "bilevel.png": "1",
            "cmyk.jpg": "CMYK", "gray.jpg": "L"}
UNDECODABLE = ["empty.jpg", "text.jpg", "truncated.jpg"]  # skipped for failing to decode
NOT_IMAGES = {"a": [".DS_Store"], "b": ["Thumbs.db", "notes.txt"]}  # skipped by name, never decoded


def write_mode(path: Path, name: str) -> Path:
    image, options, _, _ = MODES[name]
    image.save(path, **options)
    return path


def write_undecodable(folder: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is a text file renamed to .jpg")
    (folder / "empty.jpg").write_bytes(b"")


def write_pngs(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (10, 14), (20 * i, 100, 50)).save(folder / f"{i}.png")


def make_folder(root: Path, broken: bool = True) -> Path:
    """root/a: one file of every image mode; root/b: 6 PNGs; with ``broken`` also 3 files that do not
    decode (in a) and 3 that are not images at all (in a and b)."""
    write_pngs(root / "b", 6)
    (root / "a").mkdir()
    for name in MODES:
        write_mode(root / "a" / name, name)
    if broken:
        write_undecodable(root / "a")
        for cls, names in NOT_IMAGES.items():
            for name in names:
                (root / cls / name).write_bytes(b"\x00\x01 junk")
    return root


def expected_skipped(root: Path) -> list[str]:
    undecodable = [str(root / "a" / name) for name in UNDECODABLE]
    return sorted(undecodable + [str(root / cls / name) for cls, names in NOT_IMAGES.items() for name in names])


def setup_folder(root: Path, run_dir: Path | None = None, **kwargs) -> ImageFolder:
    datamodule = ImageFolder(root=str(root), val_split=0.2, image_size=16,
                             output_dir=str(run_dir) if run_dir else None, **kwargs)
    return datamodule.prepare_for(IMAGENET)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Names of the files the check decodes (not answered from its cache)."""
    names = []

    def counting(path):
        names.append(Path(path).name)
        return load_rgb(path)

    monkeypatch.setattr(file_check, "load_rgb", counting)
    return names


# --- decoding ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_decodes_to_rgb(name, tmp_path):
    path = write_mode(tmp_path / name, name)
    if name in OPENS_AS:  # the file really has the mode it is meant to test
        assert Image.open(path).mode == OPENS_AS[name]
    image = load_rgb(path)
    assert image.mode == "RGB"
    _, _, pixels, tolerance = MODES[name]
    for pixel, rgb in pixels.items():
        assert np.abs(np.subtract(image.getpixel(pixel), rgb)).max() <= tolerance, (pixel, image.getpixel(pixel), rgb)


@pytest.mark.parametrize("name", ["gray16.png", "gray32.tif"])
def test_16_bit_gradient_stays_a_gradient(name, tmp_path):
    """16-bit values scale by 1/257 (PIL's own convert clips everything above 255 to white)."""
    image = np.asarray(load_rgb(write_mode(tmp_path / name, name)))
    assert np.array_equal(image, np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (4, 256, 3)))


def test_exif_orientation_is_applied(tmp_path):
    path = write_mode(tmp_path / "rotated.jpg", "rotated.jpg")
    assert Image.open(path).size == (40, 20)
    image = np.asarray(load_rgb(path).convert("L"), dtype=float)
    assert image.shape == (40, 20)  # turned upright: 20 wide, 40 high
    assert image[:20].mean() > 240 and image[20:].mean() < 15  # the white left half is now on top


# --- the check at setup ------------------------------------------------------------------------------

def test_bad_files_are_skipped_with_one_warning(tmp_path, caplog):
    root = make_folder(tmp_path / "images")
    with caplog.at_level(logging.WARNING, logger="tlexp"):
        datamodule = setup_folder(root, tmp_path / "run")
    assert [path for path, _ in datamodule.skipped_files] == expected_skipped(root)
    reasons = dict(datamodule.skipped_files)
    assert reasons[str(root / "a" / ".DS_Store")] == "hidden file"
    assert reasons[str(root / "b" / "notes.txt")] == "not an image file (.txt)"
    assert "UnidentifiedImageError" in reasons[str(root / "a" / "text.jpg")]
    assert "UnidentifiedImageError" in reasons[str(root / "a" / "empty.jpg")]
    assert "truncated" in reasons[str(root / "a" / "truncated.jpg")]

    lines = (tmp_path / "run" / "skipped_files.txt").read_text().splitlines()
    assert [tuple(line.split("\t")) for line in lines] == datamodule.skipped_files

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert len(warnings) == 1
    total = len(MODES) + 6 + len(expected_skipped(root))
    assert f"skipped 6 of {total} files" in warnings[0] and "and 3 more" in warnings[0]
    assert all(path in warnings[0] for path in expected_skipped(root)[:3])
    assert str(tmp_path / "run" / "skipped_files.txt") in warnings[0]

    assert len(datamodule.train_set) + len(datamodule.val_set) == len(MODES) + 6
    for index in range(len(datamodule.train_set)):  # every image left in decodes in the dataset too
        image, _ = datamodule.train_set[index]
        assert image.shape == (3, 16, 16)


def test_val_and_test_folders_are_checked_too(tmp_path):
    root = tmp_path / "images"
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for cls in ("a", "b"):
            write_pngs(root / split / cls, count)
    write_undecodable(root / "val" / "a")
    (root / "test" / "b" / "Thumbs.db").write_bytes(b"\x00")
    datamodule = setup_folder(root)
    assert [path for path, _ in datamodule.skipped_files] == sorted(
        [str(root / "test" / "b" / "Thumbs.db")] + [str(root / "val" / "a" / name) for name in UNDECODABLE])
    assert len(datamodule.train_set) == 8 and len(datamodule.val_set) == 4 and len(datamodule.test_set) == 4


def test_clean_folder_skips_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tlexp"):
        datamodule = setup_folder(make_folder(tmp_path / "images", broken=False), tmp_path / "run")
    assert datamodule.skipped_files == [] and "skipped" not in caplog.text
    assert not (tmp_path / "run" / "skipped_files.txt").exists()


def test_on_bad_image_error_stops_before_training(tmp_path):
    root = make_folder(tmp_path / "images")
    with pytest.raises(InvalidValue) as error:
        setup_folder(root, tmp_path / "run", on_bad_image="error")
    message = str(error.value)
    assert error.value.name == "on_bad_image"
    assert "accepted: skip, error" in message and "the 3 files under data.root=" in message
    assert str(root / "a" / "empty.jpg") in message and "\n" not in message
    assert len((tmp_path / "run" / "skipped_files.txt").read_text().splitlines()) == 6


def test_on_bad_image_error_still_leaves_out_non_images(tmp_path):
    """.DS_Store and friends are not bad images: error mode does not stop for them."""
    root = make_folder(tmp_path / "images", broken=False)
    (root / "b" / ".DS_Store").write_bytes(b"\x00")
    datamodule = setup_folder(root, on_bad_image="error")
    assert datamodule.skipped_files == [(str(root / "b" / ".DS_Store"), "hidden file")]


def test_bad_on_bad_image_value(tmp_path):
    """Checked where the config comes in, before any file is read."""
    cfg = compose_config("data=image_folder", f"data.root={tmp_path}", "data.on_bad_image=ignore")
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        config.check(cfg)
    assert str(error.value).startswith("data.on_bad_image='ignore' ") and "accepted: skip, error" in str(error.value)


def test_class_left_without_images(tmp_path):
    root = tmp_path / "images"
    write_pngs(root / "a", 3)
    write_pngs(root / "b", 3)
    (root / "c").mkdir()
    write_undecodable(root / "c")
    with pytest.raises(InvalidValue) as error:
        setup_folder(root)
    message = str(error.value)
    assert error.value.name == "root" and message.startswith(f"root='{root}'")
    assert "class 'c' has none" in message and str(root / "c" / "empty.jpg") in message


# --- the cache -------------------------------------------------------------------------------------------

def test_check_is_cached_in_the_root(tmp_path, decodes):
    root = make_folder(tmp_path / "images")
    setup_folder(root)
    assert sorted(decodes) == sorted([*MODES, *UNDECODABLE, *(f"{i}.png" for i in range(6))])
    cached = read_json(root / CACHE_NAME)["files"]
    assert sorted(cached) == sorted([f"a/{n}" for n in MODES] + [f"b/{i}.png" for i in range(6)])

    decodes.clear()
    again = setup_folder(root)
    assert sorted(decodes) == UNDECODABLE  # failures are not remembered: only they decode again
    assert [path for path, _ in again.skipped_files] == expected_skipped(root)

    decodes.clear()
    changed = root / "a" / "rgb.jpg"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    setup_folder(root)
    assert sorted(decodes) == sorted([*UNDECODABLE, "rgb.jpg"])


def test_cache_of_a_read_only_root_goes_to_the_user_cache(tmp_path, decodes, monkeypatch):
    root = make_folder(tmp_path / "images", broken=False)
    access = os.access
    monkeypatch.setattr(file_check.os, "access", lambda path, mode: Path(path) != root and access(path, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    setup_folder(root)
    assert not (root / CACHE_NAME).exists()
    [cache] = (tmp_path / "xdg" / "tlexp" / "file_check").glob("images-*.json")
    assert read_json(cache)["root"] == str(root)
    decodes.clear()
    setup_folder(root)
    assert decodes == []


def test_unusable_cache_file_is_ignored(tmp_path, decodes):
    root = make_folder(tmp_path / "images", broken=False)
    (root / CACHE_NAME).write_text("{not json")
    setup_folder(root)
    assert len(decodes) == len(MODES) + 6
    assert len(json.loads((root / CACHE_NAME).read_text())["files"]) == len(MODES) + 6


# --- the training task --------------------------------------------------------------------------------------

def test_training_finishes_despite_broken_files(tmp_path, run_task, caplog):
    root = make_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        record = run_task(run_dir, "data=image_folder", f"data.root={root}", "model=tiny", "logger=csv",
                          "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path / 'logs'}")
    output = caplog.text
    assert record["skipped_files"] == 6 and 0 <= record["test_acc"] <= 1
    skipped = (run_dir / "skipped_files.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == expected_skipped(root)
    assert output.count("skipped 6 of") == 1
    assert (root / CACHE_NAME).is_file()


def test_auto_workers_decode_files_in_workers_and_keep_tensors_in_process(tmp_path, monkeypatch):
    """data.num_workers=auto: a folder's images decode in one worker per core but one; in-memory data gets none."""
    from tlexp.benchmarks.pipeline import STATISTICS, write_folder
    from tlexp.data import Synthetic

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    folder = ImageFolder(root=str(write_folder(tmp_path / "f", 40, 16)), val_split=10, image_size=16, batch_size=8).prepare_for(STATISTICS)
    loader = folder.train_dataloader()
    assert folder.num_workers == "auto" and loader.num_workers == 3 and loader.persistent_workers
    assert len(next(iter(loader))[0]) == 8
    memory = Synthetic(image_size=16, val_size=8, batch_size=8).prepare_for(STATISTICS)
    assert memory.train_dataloader().num_workers == 0
    assert ImageFolder(root=str(tmp_path / "f"), val_split=10, image_size=16,
                       num_workers=0).prepare_for(STATISTICS).train_dataloader().num_workers == 0
