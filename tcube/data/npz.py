"""``NpzDataset``: a MedMNIST-layout npz split as a torch Dataset of (PIL RGB image, int label).

Unlike ``medmnist``'s classes it accepts any image size and any number of samples (small test
fixtures, custom datasets such as PH2), supports sample subsets and label remapping (class
subsets for base-to-novel), and loads the arrays once so no zip file stays open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["NpzDataset", "load_npz_split", "SPLITS"]

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
    """(images uint8 (N,H,W) or (N,H,W,3), labels int64 (N,)) of one split, validated and in memory."""
    path = Path(path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; use tcube.data.find_npz(name) to locate dataset files")
    ik, lk = f"{split}_images", f"{split}_labels"
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
    images = _check_images(images, ik, path)
    labels = _check_labels(labels, lk, path)
    if len(images) == 0:
        raise ValueError(f"{path}: split {split!r} is empty ({ik} has 0 images)")
    if len(images) != len(labels):
        raise ValueError(f"{path}: {ik} has {len(images)} images but {lk} has {len(labels)} labels")
    return images, labels


class NpzDataset(Dataset):
    """One split of a MedMNIST-layout npz file, yielding ``(PIL RGB image, int)``.

    Args:
        path: the npz file (see :func:`tcube.data.find_npz`).
        split: "train", "val" or "test".
        transform: applied to the PIL image (e.g. a CLIP preprocess); None returns the PIL image.
        indices: optional subset of sample indices (in the split's order) to keep.
        label_map: optional mapping old label -> new label (e.g. class subsets for base-to-novel);
            every kept sample's label must be in it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "test",
        transform: Callable | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        images, labels = load_npz_split(path, split)
        self.path, self.split, self.transform = Path(path), split, transform
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size == 0:
                raise ValueError(f"{path}: indices select no samples of split {split!r}")
            bad = idx[(idx < 0) | (idx >= len(images))]
            if bad.size:
                raise IndexError(f"{path}: indices {bad[:5].tolist()} out of range for split {split!r} "
                                 f"with {len(images)} samples")
            images, labels = images[idx], labels[idx]
        if label_map is not None:
            lut = {int(k): int(v) for k, v in dict(label_map).items()}
            unmapped = sorted(set(np.unique(labels).tolist()) - set(lut))
            if unmapped:
                raise ValueError(f"{path}: labels {unmapped} are not in label_map {lut}; select those "
                                 "samples out with `indices` or add them to the map")
            labels = np.array([lut[int(y)] for y in labels], dtype=np.int64)
        self.images: np.ndarray = images
        self.labels: np.ndarray = labels

    @classmethod
    def from_name(cls, name: str, split: str = "test", *, root: str | os.PathLike | None = None,
                  size: int = 28, check_md5: bool = True, **kwargs) -> "NpzDataset":
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
