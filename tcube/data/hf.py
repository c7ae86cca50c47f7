"""Datasets stored as a local image folder or a Hugging Face dataset saved on disk, read through ``datasets``.

A data config may name such a folder instead of an npz file (DESIGN §4): ``data.name=thyroid`` with
``data.root=DIR`` finds ``DIR/thyroid.npz`` or else the folder ``DIR/thyroid/`` (see
:func:`tcube.data.files.find_npz`), and :func:`tcube.data.npz.load_npz_split` turns one split of the folder into
the same arrays an npz file gives, so the harness, ``NpzDataset`` and corruptions treat both alike.

Accepted layouts: an image folder with split folders (``train/``, ``val/`` or ``validation/``, ``test/``), each
holding one subfolder per class (class index = position of the subfolder name in sorted order, as ``datasets``
assigns it: list ``data.classes`` in that order); or a ``DatasetDict`` written by ``save_to_disk`` with an Image
column and a ClassLabel column. Nothing is fetched from the Hub: only local paths are read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["is_dataset_folder", "folder_split"]

_SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid", "dev"), "test": ("test",)}


def is_dataset_folder(path: str | os.PathLike) -> bool:
    """True for a folder ``folder_split`` can read (saved dataset, or an image folder with split folders)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "dataset_dict.json").is_file():
        return True
    return any((p / s).is_dir() for names in _SPLIT_NAMES.values() for s in names)


def _load(path: Path):
    import datasets

    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _columns(ds, path: Path) -> tuple[str, str]:
    import datasets

    feats = ds.features
    images = [k for k, f in feats.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)]
    if not images:
        raise ValueError(f"{path}: no Image column among features {dict(feats)}; store images with datasets.Image()")
    if not labels:
        raise ValueError(
            f"{path}: no ClassLabel column among features {dict(feats)}, so class indices are unknown; cast the "
            "label column, e.g. ds.cast_column('label', datasets.ClassLabel(names=[...]))"
        )
    return images[0], labels[0]


def folder_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images uint8 (N,H,W) grey or (N,H,W,3) RGB, labels int64 (N,), class names) of one split of a folder."""
    path = Path(path)
    loaded = _load(path)
    name = next((s for s in _SPLIT_NAMES.get(split, (split,)) if s in loaded), None)
    if name is None:
        raise ValueError(f"{path} has splits {sorted(loaded.keys())}, none of them {split!r}; the harness needs "
                         "train/, val/ (or validation/) and test/")
    ds = loaded[name]
    image_col, label_col = _columns(ds, path)
    pics = [im for im in ds[image_col]]
    grey = all(im.mode in ("L", "1") for im in pics)
    arrays = [np.asarray(im.convert("L" if grey else "RGB")) for im in pics]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(f"{path} split {split!r}: images come in several sizes {shapes[:4]}; resize them to one "
                         "size (MedMNIST uses 28×28) so they stack like an npz split")
    images = np.stack(arrays) if arrays else np.zeros((0, 28, 28), np.uint8)
    labels = np.asarray(ds[label_col], dtype=np.int64)
    return images.astype(np.uint8), labels, tuple(ds.features[label_col].names)
