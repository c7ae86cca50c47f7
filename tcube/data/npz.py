"""``NpzDataset``: a MedMNIST-layout npz split as a torch Dataset of (PIL RGB image, int label).

Unlike ``medmnist``'s classes it accepts any image size and any number of samples (small test
fixtures, custom datasets such as PH2), serves class subsets relabelled to 0..k-1 (base-to-novel)
and seeded subsets of at most ``limit`` images, and loads the arrays once so no zip file stays open.

:func:`select_view` is the one place where a view (class subset, seeded limit, relabelling) is chosen:
the harness (``harness.views.DataViews.load_view``), the zoo (``tcube.zoo.data.load_split``) and ``NpzDataset`` use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["NpzDataset", "load_npz_split", "select_view", "SPLITS"]

SPLITS = ("train", "val", "test")


def _check_images(images: np.ndarray, key: str, path: Path) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise ValueError(
            f"{path}: {key} has shape {images.shape}; expected gray (N, H, W) or RGB (N, H, W, 3)"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"{path}: {key} has dtype {images.dtype}; expected uint8 in 0..255 "
            "(convert with (x * 255).round().astype(np.uint8) for images in [0, 1])"
        )
    return images


def _check_labels(labels: np.ndarray, key: str, path: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"{path}: {key} has shape {labels.shape}: multi-label targets. NpzDataset serves "
            "single-label classification only (labels (N,) or (N, 1)); chestmnist-style multi-label "
            "data needs a multi-label protocol."
        )
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(f"{path}: {key} holds non-integer values; class labels must be integers")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: {key} has dtype {labels.dtype}; class labels must be integers")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: {key} has negative labels (min {labels.min()}); labels must be 0..C-1")
    return labels


def load_npz_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,H,W) or (N,H,W,3), labels int64 (N,)) of one split, validated and in memory.

    ``path`` is an npz file, or a folder (image folder / saved Hugging Face dataset, read by tcube.data.hf).
    """
    path = Path(path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ik, lk = f"{split}_images", f"{split}_labels"
    if path.is_dir():  # an image folder or a saved Hugging Face dataset (tcube.data.hf)
        from .hf import folder_split

        images, labels, _ = folder_split(path, split)
        return _checked(images, labels, ik, lk, path, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; use tcube.data.find_npz(name) to locate dataset files")
    # Copy the arrays out and close the zip at once: no open file handle per dataset/worker.
    with np.load(path, allow_pickle=False) as z:
        keys = sorted(z.files)
        missing = [k for k in (ik, lk) if k not in keys]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}; keys present: {keys}. A MedMNIST-layout npz needs "
                "{train,val,test}_images and {train,val,test}_labels."
            )
        images = np.array(z[ik])
        labels = np.array(z[lk])
    return _checked(images, labels, ik, lk, path, split)


def _checked(images: np.ndarray, labels: np.ndarray, ik: str, lk: str, path: Path,
             split: str) -> tuple[np.ndarray, np.ndarray]:
    images = _check_images(images, ik, path)
    labels = _check_labels(labels, lk, path)
    if len(images) == 0:
        raise ValueError(f"{path}: split {split!r} is empty ({ik} has 0 images)")
    if len(images) != len(labels):
        raise ValueError(f"{path}: {ik} has {len(images)} images but {lk} has {len(labels)} labels")
    return images, labels


def select_view(labels: np.ndarray, classes: Sequence[int] | None = None, limit: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices, labels) of one view of a split: the samples whose label is in ``classes`` (None = all), at
    most ``limit`` of them chosen with ``seed``, indices sorted; labels relabelled to positions in ``classes``
    (class ``classes[i]`` becomes ``i``), or unchanged when ``classes`` is None."""
    labels = np.asarray(labels).reshape(-1)
    idx = np.arange(len(labels)) if classes is None else np.flatnonzero(np.isin(labels, list(classes)))
    if limit is not None and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(limit), replace=False))
    if classes is None:
        return idx, labels[idx].astype(np.int64)
    position = {int(c): i for i, c in enumerate(classes)}
    return idx, np.array([position[int(v)] for v in labels[idx]], dtype=np.int64)


class NpzDataset(Dataset):
    """One split of a MedMNIST-layout npz file, yielding ``(PIL RGB image, int)``.

    Args:
        path: the npz file (see :func:`tcube.data.find_npz`).
        split: "train", "val" or "test".
        transform: applied to the PIL image (e.g. a CLIP preprocess); None returns the PIL image.
        classes: optional class subset (original labels); kept samples are relabelled to their class's
            position in it (base-to-novel label spaces).
        limit: optional cap on the number of samples, a subset chosen with ``seed`` (as the harness's
            ``limit`` does: the same images for the same seed).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "test",
        transform: Callable | None = None,
        classes: Sequence[int] | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        images, labels = load_npz_split(path, split)
        self.path, self.split, self.transform = Path(path), split, transform
        if classes is not None or limit is not None:
            idx, labels = select_view(labels, classes, limit, seed)
            if idx.size == 0:
                raise ValueError(f"{path}: no samples of classes {list(classes or [])} in split {split!r}")
            images = images[idx]
        self.images: np.ndarray = images
        self.labels: np.ndarray = labels

    @classmethod
    def from_name(cls, name: str, split: str = "test", *, root: str | os.PathLike | None = None,
                  size: int = 28, check_md5: bool | None = None, **kwargs) -> "NpzDataset":
        """Locate ``name`` with :func:`tcube.data.find_npz` and open one split."""
        from .files import find_npz

        return cls(find_npz(name, root=root, size=size, check_md5=check_md5), split, **kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Sample ``i`` as a PIL RGB image (gray images are replicated to three channels)."""
        return Image.fromarray(self.images[i]).convert("RGB")

    def __getitem__(self, i: int):
        img = self.image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])

    def __repr__(self) -> str:
        return (f"NpzDataset({self.path.name}, split={self.split!r}, n={len(self)}, "
                f"image_shape={tuple(self.images.shape[1:])})")
