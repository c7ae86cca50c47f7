"""Local Hugging Face ``datasets`` folders as (PIL RGB image, int label) datasets, offline.

Accepted layouts: an imagefolder directory (class subfolders, optionally under split folders),
parquet files (a folder of them, or one file), or a folder written by ``save_to_disk``.
Nothing is fetched from the Hub: only local paths are read.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

__all__ = ["HFImageDataset", "load_hf_imagefolder"]


class HFImageDataset(Dataset):
    """Wraps a ``datasets.Dataset`` with an Image column and a ClassLabel column."""

    def __init__(self, hf_dataset, image_column: str, label_column: str, transform=None) -> None:
        self.ds, self.image_column, self.label_column, self.transform = hf_dataset, image_column, label_column, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        row = self.ds[int(i)]
        img = row[self.image_column].convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(row[self.label_column])


def _load_any(path: Path, cache_dir: str | None):
    import datasets

    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"{path}: a single file must be .parquet; pass a folder for imagefolder data")
        return datasets.load_dataset("parquet", data_files={"train": str(path)}, cache_dir=cache_dir)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    # A local folder: datasets infers imagefolder or parquet from the files and split names.
    return datasets.load_dataset(str(path), cache_dir=cache_dir)


def _columns(ds) -> tuple[str, str]:
    import datasets

    feats = ds.features
    images = [k for k, f in feats.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)]
    if not images:
        raise ValueError(f"no Image column among features {dict(feats)}; store images with datasets.Image()")
    if not labels:
        raise ValueError(
            f"no ClassLabel column among features {dict(feats)}, so class names are unknown; cast the "
            "label column, e.g. ds.cast_column('label', datasets.ClassLabel(names=[...]))"
        )
    return images[0], labels[0]


def load_hf_imagefolder(path: str | os.PathLike, split: str = "test", *, transform=None,
                        cache_dir: str | os.PathLike | None = None) -> tuple[HFImageDataset, tuple[str, ...]]:
    """Load one split of a local HF dataset folder: ``(dataset of (PIL RGB, int), class names)``.

    A single-split imagefolder (class subfolders only) is exposed by ``datasets`` as "train".
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a local imagefolder, parquet or save_to_disk folder")
    loaded = _load_any(path, None if cache_dir is None else str(cache_dir))
    if hasattr(loaded, "keys"):  # DatasetDict
        if split not in loaded:
            raise ValueError(f"{path} has splits {sorted(loaded.keys())}, not {split!r}; pick one of those")
        ds = loaded[split]
    else:
        ds = loaded
    image_col, label_col = _columns(ds)
    names = tuple(ds.features[label_col].names)
    return HFImageDataset(ds, image_col, label_col, transform), names
