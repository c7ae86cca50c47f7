"""NpzDataset on synthetic and real MedMNIST-layout files, and local Hugging Face folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import REAL

from tcube.data.npz import NpzDataset, load_npz_split


def make_npz(path: Path, *, shape=(5, 13, 17), label_shape="column", n_classes=3, seed=0, **overrides) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        n = shape[0]
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(n) % n_classes
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8) if label_shape == "column" else labels
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return path


# ----------------------------------------------------------------------------- synthetic


def test_gray_odd_size_column_labels(tmp_path):
    path = make_npz(tmp_path / "g.npz", shape=(5, 13, 17), label_shape="column")
    ds = NpzDataset(path, "test")
    assert len(ds) == 5
    img, label = ds[1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (17, 13)
    assert type(label) is int and label == 1
    raw = np.load(path)["test_images"][1]
    assert np.array_equal(np.asarray(img)[..., 0], raw) and np.array_equal(np.asarray(img)[..., 2], raw)


def test_rgb_flat_labels_and_transform(tmp_path):
    path = make_npz(tmp_path / "c.npz", shape=(4, 9, 11, 3), label_shape="flat")
    ds = NpzDataset(path, "val", transform=lambda im: np.asarray(im).sum())
    raw = np.load(path)
    value, label = ds[3]
    assert value == raw["val_images"][3].astype(np.int64).sum()
    assert label == 0  # labels 0,1,2,0
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 2, 0]


def test_class_subsets_and_limit_match_the_harness_view(tmp_path):
    from tcube.data.npz import select_view

    path = make_npz(tmp_path / "s.npz", shape=(9, 8, 8), label_shape="flat", n_classes=3)
    full = NpzDataset(path, "train")
    keep = np.flatnonzero(np.isin(full.labels, [2, 1]))
    sub = NpzDataset(path, "train", classes=[2, 1])  # class 2 -> 0, class 1 -> 1
    assert len(sub) == 6 and sub.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert np.array_equal(np.asarray(sub[0][0]), np.asarray(full[int(keep[0])][0]))
    few = NpzDataset(path, "train", classes=[1, 2], limit=4, seed=3)
    idx, labels = select_view(full.labels, [1, 2], 4, 3)
    assert few.labels.tolist() == labels.tolist() and np.array_equal(few.images, full.images[idx])
    assert len(NpzDataset(path, "train", limit=100)) == 9
    with pytest.raises(ValueError, match="no samples"):
        NpzDataset(path, "train", classes=[7])


def test_arrays_are_loaded_once_and_file_closed(tmp_path):
    path = make_npz(tmp_path / "o.npz")
    ds = NpzDataset(path, "test")
    assert type(ds.images) is np.ndarray and ds.images.flags.owndata
    fd_dir = Path("/proc/self/fd")
    if fd_dir.is_dir():
        open_targets = {os.path.realpath(fd_dir / fd) for fd in os.listdir(fd_dir)}
        assert str(path.resolve()) not in open_targets
    path.unlink()
    assert ds[0][1] == 0  # still served from memory


def test_missing_keys_lists_present_keys(tmp_path):
    path = make_npz(tmp_path / "m.npz", test_labels=None)
    with pytest.raises(ValueError) as e:
        NpzDataset(path, "test")
    assert "test_labels" in str(e.value) and "test_images" in str(e.value) and "train_labels" in str(e.value)


@pytest.mark.parametrize("override,match", [
    (dict(test_images=np.zeros((0, 8, 8), np.uint8), test_labels=np.zeros((0, 1), np.uint8)), "empty"),
    (dict(test_labels=np.zeros((4, 1), np.uint8)), "5 images but test_labels has 4"),
    (dict(test_labels=np.zeros((5, 14), np.uint8)), "multi-label"),
    (dict(test_images=np.zeros((5, 8, 8), np.float32)), "uint8"),
    (dict(test_images=np.zeros((5, 8, 8, 4), np.uint8)), "expected gray"),
    (dict(test_labels=np.full((5, 1), 0.5)), "non-integer"),
    (dict(test_labels=-np.ones((5,), np.int64)), "negative"),
])
def test_invalid_contents(tmp_path, override, match):
    path = make_npz(tmp_path / "bad.npz", shape=(5, 8, 8), **override)
    with pytest.raises(ValueError, match=match):
        NpzDataset(path, "test")


def test_bad_split_and_missing_file(tmp_path):
    path = make_npz(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="split must be one of"):
        NpzDataset(path, "validation")
    with pytest.raises(FileNotFoundError, match="find_npz"):
        load_npz_split(tmp_path / "nope.npz", "test")


def test_from_name_uses_find_npz(tmp_path):
    make_npz(tmp_path / "mydata.npz", shape=(3, 6, 6))
    ds = NpzDataset.from_name("mydata", "val", root=tmp_path)
    assert len(ds) == 3 and ds.split == "val"


# ----------------------------------------------------------------------------- the four datasets (data_root)


@pytest.mark.parametrize("name", sorted(REAL))
def test_files_split_sizes(data_root, name):
    """Sizes, shapes and classes as the root declares them (real: PROVENANCE.md; synthetic: tests/synthetic.py)."""
    path = data_root.file(name)
    for split, n in zip(("train", "val", "test"), data_root.sizes[name]):
        ds = NpzDataset(path, split)
        assert len(ds) == n
        assert ds.images.shape[1:] == data_root.shapes[name]
        assert set(np.unique(ds.labels).tolist()) == set(range(data_root.classes[name]))
        img, label = ds[0]
        assert img.mode == "RGB" and img.size == (28, 28) and 0 <= label < data_root.classes[name]


def test_ph2_has_three_classes_like_the_registry(data_root):
    from tcube.data.registry import get_dataset_spec

    ds = NpzDataset(data_root.file("ph2"), "train")
    assert get_dataset_spec("ph2").num_classes == 3 == len(np.unique(ds.labels))
    if data_root.kind == "real":
        assert np.bincount(ds.labels).tolist() == [56, 56, 28]  # PROVENANCE.md
    assert len(ds) == data_root.sizes["ph2"][0]


# ----------------------------------------------------------------------------- image folders, saved HF datasets


def write_image_folder(root: Path, splits=("train", "val", "test"), classes=("benign", "malignant"), n: int = 3,
                       size=(28, 28), seed: int = 0) -> Path:
    """root/<split>/<class>/<i>.png, grey, the class in the brightness."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(60 + 120 * c + rng.normal(0, 10, size), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_image_folder_loads_like_an_npz_split(tmp_path, hf_cache):
    from tcube.data import file_md5, find_npz

    folder = write_image_folder(tmp_path / "data" / "thyroid", size=(9, 7))
    assert find_npz("thyroid", root=tmp_path / "data") == folder  # no thyroid.npz: the folder of that name
    images, labels = load_npz_split(folder, "val")
    assert images.shape == (6, 9, 7) and images.dtype == np.uint8 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert images[labels == 1].mean() > images[labels == 0].mean() + 60  # labels follow the class folders
    ds = NpzDataset(folder, "test", classes=[1])
    assert len(ds) == 3 and ds[0][0].mode == "RGB" and ds.labels.tolist() == [0, 0, 0]
    before = file_md5(folder)
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(folder / "test" / "benign" / "0.png")
    assert file_md5(folder) != before  # cache keys see a changed image


def test_saved_dataset_and_folder_errors(tmp_path, hf_cache):
    import datasets

    ref = datasets.load_dataset("imagefolder", data_dir=str(write_image_folder(tmp_path / "imgs", n=2)))
    ref.save_to_disk(str(tmp_path / "saved"))
    images, labels = load_npz_split(tmp_path / "saved", "val")  # saved as "validation"
    assert images.shape == (4, 28, 28) and sorted(labels.tolist()) == [0, 0, 1, 1]
    write_image_folder(tmp_path / "no_val", splits=("train", "test"))
    with pytest.raises(ValueError, match="none of them 'val'"):
        load_npz_split(tmp_path / "no_val", "val")
    mixed = write_image_folder(tmp_path / "mixed", n=1)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mixed / "test" / "benign" / "9.png")
    with pytest.raises(ValueError, match="several sizes"):
        load_npz_split(mixed, "test")
