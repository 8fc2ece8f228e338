"""data=torchvision and data=hf, offline: each dataset written in its real on-disk format in a temporary
directory (CIFAR-10's pickled batches, EuroSAT's folder, Fashion-MNIST's IDX files, a ``save_to_disk``
folder, an ``imagefolder``) and loaded with downloads off; the errors name the key and what it accepts."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from conftest import compose_config, read_json
from PIL import Image

from tlexp import config
from tlexp.data import HuggingFace, Torchvision
from tlexp.errors import ConfigError, InvalidValue

try:
    import datasets
except ModuleNotFoundError:  # the [hf] extra: `pip install 'tlexp[hf]'` (make setup installs it)
    datasets = None
needs_datasets = pytest.mark.skipif(datasets is None, reason="data=hf needs the datasets library")

PLAIN = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def pattern(label: int, index: int, size: int = 8) -> np.ndarray:
    """An HxWx3 uint8 image that tells its label and index apart."""
    image = np.full((size, size, 3), 20 * label, dtype=np.uint8)
    image[0, 0] = (index, 255 - index, label)
    return image


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, per_batch: int = 10, test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py as the archive has it: data_batch_1..5 and test_batch (dicts with data: N x 3072
    uint8 rows, CHW, and labels), batches.meta (label_names). Returns the training images (HWC) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []

    def batch(name: str, count: int, offset: int):
        rows, batch_labels = [], []
        for i in range(count):
            label = (offset + i) % 10
            image = pattern(label, offset + i, 32)
            rows.append(image.transpose(2, 0, 1).reshape(-1))
            batch_labels.append(label)
            if name != "test_batch":
                images.append(image)
                labels.append(label)
        (folder / name).write_bytes(pickle.dumps({"data": np.stack(rows), "labels": batch_labels}))

    for n in range(1, 6):
        batch(f"data_batch_{n}", per_batch, (n - 1) * per_batch)
    batch("test_batch", test, 0)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    return np.stack(images), np.array(labels)


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    """A tiny CIFAR-10 under tmp_path; torchvision's checksums are set to those of these files."""
    root = tmp_path / "torchvision"
    images, labels = write_cifar10(root)
    folder = root / "cifar-10-batches-py"
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{n}", md5(folder / f"data_batch_{n}")] for n in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "batches.meta")})
    return root, images, labels


def write_eurosat(root: Path, classes=("Forest", "River", "SeaLake"), per_class: int = 10) -> Path:
    """root/eurosat/2750/<class>/<class>_<n>.jpg, the layout torchvision.datasets.EuroSAT reads."""
    for label, name in enumerate(classes):
        folder = root / "eurosat" / "2750" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pattern(label, i, 16)).save(folder / f"{name}_{i + 1}.jpg")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_cifar10_official_splits_in_memory(cifar10):
    root, images, labels = cifar10
    data = Torchvision(name="CIFAR10", root=str(root), download=False, val_size=10, image_size=32).prepare_for(PLAIN)
    assert data.classes == CIFAR_CLASSES
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (40, 10, 20)
    first = data.indices["train"][0]  # the stored HWC images, unchanged (32 px: no resize)
    assert np.array_equal(data.train_set.images[0].permute(1, 2, 0).numpy(), images[first])
    assert int(data.train_set.labels[0]) == labels[first]


def test_cifar10_fraction_and_test_limit(cifar10):
    root, _, _ = cifar10
    data = Torchvision(name="CIFAR10", root=str(root), download=False, val_size=10, image_size=16, fraction=0.5,
                       test_limit=10).prepare_for(PLAIN)
    assert (len(data.train_set), len(data.test_set)) == (20, 10)
    assert data.train_set.images.shape[1:] == (3, 16, 16)


def test_eurosat_folder_gives_files_and_carves_test(tmp_path):
    root = write_eurosat(tmp_path / "torchvision")
    data = Torchvision(name="EuroSAT", root=str(root), download=False, val_size=6, test_size=0.2,
                       image_size=16).prepare_for(PLAIN)
    assert data.classes == ["Forest", "River", "SeaLake"]
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (18, 6, 6)
    assert all(Path(p).suffix == ".jpg" for p in data.test_set.paths)  # read from its files, not decoded into memory
    train, val, test = (set(s.paths) for s in (data.train_set, data.val_set, data.test_set))
    assert not (train & test or val & test or train & val)
    image, label = data.test_set[0]
    assert image.shape == (3, 16, 16) and int(label) == data.test_set.labels[0]


def test_grayscale_fashion_mnist_format(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 40), ("t10k", 10)):
        labels = np.arange(count) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.stack([pattern(label, i, 28)[..., 0] for i, label in enumerate(labels)]))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = Torchvision(name="FashionMNIST", root=str(tmp_path), download=False, val_size=10, image_size=28).prepare_for(PLAIN)
    assert data.train_set.images.shape[1:] == (1, 28, 28)  # one channel, expanded to 3 per batch
    assert data.normalize(data.train_set.images[:2]).shape == (2, 3, 28, 28)
    assert data.classes[0] == "T-shirt/top" and len(data.test_set) == 10


def test_gtsrb_split_argument_and_decoded_items(tmp_path):
    """GTSRB (split=train|test, no val; items only: decoded into memory, no class names) in its layout:
    gtsrb/GTSRB/Training/<class>/*.ppm, gtsrb/GTSRB/Final_Test/Images/*.ppm with gtsrb/GT-final_test.csv."""
    base = tmp_path / "gtsrb"
    for label in range(3):
        (base / "GTSRB" / "Training" / f"{label:05d}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(pattern(label, i, 12)[:, :9]).save(base / "GTSRB" / "Training" / f"{label:05d}" / f"{i}.ppm")
    (base / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(6):
        Image.fromarray(pattern(i % 3, i, 10)).save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;10;10;0;0;9;9;{i % 3}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    data = Torchvision(name="GTSRB", root=str(tmp_path), download=False, val_size=3, image_size=8).prepare_for(PLAIN)
    assert data.classes == ["0", "1", "2"]
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (9, 3, 6)
    assert data.test_set.images.shape == (6, 3, 8, 8)
    assert data.test_set.labels.tolist() == [0, 1, 2, 0, 1, 2]


class Items:
    """A dataset that only yields (PIL image, label) items; labels 3 and 7, no class names."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return Image.fromarray(pattern(index % 2, index, 12)[:, :10]), 3 + 4 * (index % 2)


def test_items_decoded_to_squares_and_labels_renumbered(tmp_path):
    data = Torchvision(name="EuroSAT", image_size=8)
    split = data.read(Items(), "train")
    assert split.images.shape == (6, 8, 8, 3) and split.images.dtype == np.uint8
    classes, splits = data.class_names(Items(), {"train": split})
    assert classes == ["3", "7"] and splits["train"].labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_unknown_torchvision_name_lists_close_matches(tmp_path):
    cfg = compose_config("data=torchvision", "data.name=CIFAR11", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError) as error:
        config.instantiate("data", cfg.data)
    assert error.value.key == "data.name" and "CIFAR10" in str(error.value) and "CIFAR100" in str(error.value)


@pytest.mark.parametrize("overrides", [("data=torchvision",), ("data=hf", "data.path=some/dataset")])
def test_config_keys_match_the_sources(tmp_path, overrides):
    config.check(compose_config(*overrides, f"paths.output_dir={tmp_path}"))


def test_hf_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        config.check(compose_config("data=hf", f"paths.output_dir={tmp_path}"))


def test_missing_files_without_download_names_root(tmp_path):
    with pytest.raises(InvalidValue) as error:
        Torchvision(name="CIFAR10", root=str(tmp_path), download=False).prepare_for(PLAIN)
    assert error.value.name == "root" and "download=true" in str(error.value)


# --- data=hf ---------------------------------------------------------------------------------------------

def hf_split(count: int, classes=("cat", "dog"), labeled: bool = True):
    features = {"image": datasets.Image()}
    columns = {"image": [Image.fromarray(pattern(i % len(classes), i, 10)) for i in range(count)]}
    if labeled:
        features["label"] = datasets.ClassLabel(names=list(classes))
        columns["label"] = [i % len(classes) for i in range(count)]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@needs_datasets
def test_hf_save_to_disk(tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict(train=hf_split(20), validation=hf_split(6), test=hf_split(8)).save_to_disk(str(folder))
    data = HuggingFace(path=str(folder), image_size=10).prepare_for(PLAIN)
    assert data.classes == ["cat", "dog"]
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (20, 6, 8)
    image, label = data.train_set[3]
    assert int(label) == 1 and image[:, 5, 5].tolist() == [20, 20, 20] and image[:, 0, 0].tolist() == [3, 252, 1]


@needs_datasets
def test_hf_split_map_and_carved_val(tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict(train=hf_split(20), validation=hf_split(6)).save_to_disk(str(folder))
    data = HuggingFace(path=str(folder), split_map={"val": None, "test": "validation"}, val_size=4,
                       image_size=8).prepare_for(PLAIN)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (16, 4, 6)


@needs_datasets
def test_hf_imagefolder(tmp_path):
    for split, count in (("train", 6), ("test", 2)):
        for name in ("ants", "bees"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(pattern(name == "bees", i, 12)).save(tmp_path / "images" / split / name / f"{i}.png")
    builder = HuggingFace(path="imagefolder", data_dir=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"),
                          val_size=2, image_size=12).prepare_for(PLAIN)
    folder = HuggingFace(path=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"),  # the same, inferred
                         val_size=2, image_size=12).prepare_for(PLAIN)
    for data in (builder, folder):
        assert data.classes == ["ants", "bees"]
        assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (10, 2, 4)
        assert sorted(int(label) for _, label in data.test_set) == [0, 0, 1, 1]


@needs_datasets
def test_hf_errors_name_key_and_columns(tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict(train=hf_split(8)).save_to_disk(str(folder))
    with pytest.raises(InvalidValue, match="columns: image, label") as error:
        HuggingFace(path=str(folder), image_column="img").prepare_for(PLAIN)
    assert error.value.name == "image_column"
    with pytest.raises(InvalidValue, match="train, val, test") as error:
        HuggingFace(path=str(folder), split_map={"validation": "test"})
    with pytest.raises(InvalidValue, match="split names of .*: train") as error:
        HuggingFace(path=str(folder), split_map={"test": "test"}).prepare_for(PLAIN)
    assert error.value.name == "split_map"
    unlabeled = tmp_path / "unlabeled"
    hf_split(8, labeled=False).save_to_disk(str(unlabeled))
    with pytest.raises(InvalidValue, match="without labels") as error:
        HuggingFace(path=str(unlabeled)).prepare_for(PLAIN)
    assert error.value.name == "label_column"
    with pytest.raises(InvalidValue) as error:
        HuggingFace(path=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache")).prepare_for(PLAIN)
    assert error.value.name == "path"


# --- train.py ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_on_torchvision_eurosat(tmp_path, main_inprocess):
    """train.py's entry point (argv through Hydra, in this process) on a torchvision dataset folder."""
    root = write_eurosat(tmp_path / "torchvision")
    run_dir = tmp_path / "run"
    code, output = main_inprocess(run_dir, "data=torchvision", "data.name=EuroSAT", f"data.root={root}", "data.download=false",
              "data.val_size=6", "data.image_size=32", "data.batch_size=8", "trainer.max_epochs=1")
    assert code == 0, output[-4000:]
    result = read_json(run_dir / "result.json")
    assert result["status"] == "completed"
