"""The zoo's training data: which datasets exist, and their splits as preprocessed uint8 tensors.

Images go through the model's own evaluation preprocess (PIL resize 28 → 32 px, bicubic) once and
are kept as uint8 [N, 3, 32, 32]: training then adds augmentation and normalization on whole
batches in torch, and what the zoo trains on is exactly what `load_pair(...).preprocess` serves.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from tcube.data import DatasetSpec

DEFAULT_MEDMNIST_ROOT = Path("~/.medmnist")


def zoo_datasets() -> tuple[str, ...]:
    """The built-in zoo datasets: the four modalities with data here (the registry's short names)."""
    from tcube.data import ALIASES

    return tuple(dict.fromkeys(ALIASES.values()))


def spec_of(dataset: str | DatasetSpec) -> DatasetSpec:
    """A registered dataset by name (aliases accepted), or a spec described by a data config as is."""
    from tcube.data import get_dataset_spec

    return dataset if not isinstance(dataset, str) else get_dataset_spec(dataset)


def canonical_dataset(name: str, known: Sequence[str] | None = None) -> str:
    """Name of a zoo dataset among `known` (default: the built-ins; aliases accepted); ValueError otherwise."""
    from tcube.data import get_dataset_spec

    known = tuple(known) if known is not None else zoo_datasets()
    try:
        canon = get_dataset_spec(name).name
    except ValueError:
        canon = str(name)
    if canon not in known:
        raise ValueError(f"{name!r} is not a zoo dataset here; the zoo trains on {list(known)}")
    return canon


def available_datasets(root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Built-in zoo datasets whose npz file is present (nothing is downloaded to answer this)."""
    from tcube.data import npz_filename, resolve_data_root

    dirs = [resolve_data_root(root)]
    if root is None or str(root) == "":
        dirs.append(DEFAULT_MEDMNIST_ROOT.expanduser())  # find_npz's own fallback folder
    return tuple(d for d in zoo_datasets() if any((p / npz_filename(d)).is_file() for p in dirs))


def dataset_file(name: str, root: str | os.PathLike | None = None) -> Path:
    """MD5-checked npz path; the data layer's FileNotFoundError (naming the fix) when missing."""
    from tcube.data import find_npz

    return find_npz(name, root=root)


def dataset_set(configured: Sequence[str | DatasetSpec] = (), root: str | os.PathLike | None = None
                ) -> tuple[DatasetSpec, ...]:
    """What a generalist trains on: the built-in datasets present in `root`, then every configured one.

    Configured datasets come after the built-ins, sorted by name, so the same datasets give the same
    order (and weights) whichever of them a run names first; a configured spec replaces a built-in of
    the same name (e.g. other prompts).
    """
    present = available_datasets(root)
    if not present and not configured:  # the data layer says what is missing and how to fix it (or downloads)
        for d in zoo_datasets():
            dataset_file(d, root)  # raises on the first missing file; downloads when online
        present = available_datasets(root)
    specs = {d: spec_of(d) for d in present}
    for spec in sorted((spec_of(c) for c in configured), key=lambda s: s.name):
        specs[spec.name] = spec
    return tuple(specs.values())


def describe(spec: DatasetSpec) -> dict[str, Any]:
    """What of a dataset shapes a zoo model besides its pixels: name, modality, classes and prompts."""
    from tcube.data import prompts_for

    descriptions, templates = prompts_for(spec)
    return {"name": spec.name, "modality": spec.modality.name, "classes": list(spec.classes),
            "descriptions": list(descriptions), "templates": list(templates)}


def set_key(specs: Sequence[DatasetSpec], root: str | os.PathLike | None = None) -> str | None:
    """The zoo folder's key for a generalist's dataset set: None for the four built-ins with their registry
    prompts (the folder zoos had before sets were keyed, so those stay valid), else a hash of every
    dataset's description and file MD5 (another file, other classes or prompts: another generalist)."""
    from tcube.data import file_md5

    described = [describe(s) for s in specs]
    if described == [describe(spec_of(d)) for d in zoo_datasets()]:
        return None
    payload = [{**d, "md5": file_md5(dataset_file(d["name"], root))} for d in described]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Split:
    """One split of one dataset, restricted to some classes, ready for training or scoring."""

    dataset: str
    split: str
    images: torch.Tensor            # uint8 [N, 3, H, W], preprocessed except for normalization
    labels: torch.Tensor            # int64 [N], indices into `descriptions`
    classes: tuple[int, ...]        # original label of each kept class (index = new label)
    descriptions: tuple[str, ...]   # class descriptions for the prompts, one per kept class
    templates: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def captions(self) -> list[str]:
        """Class-major captions: captions[c * T + t] = templates[t].format(descriptions[c])."""
        return [t.format(d) for d in self.descriptions for t in self.templates]


def labelled_share(split: Split, fraction: float, seed: int) -> Split:
    """A seeded, class-stratified share of `split`: ceil(fraction · n_c) images of each class c (at least one),
    in file order. fraction 1 returns `split` itself."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a labelled share must be in (0, 1], got {fraction}")
    if fraction == 1:
        return split
    g = torch.Generator().manual_seed(zlib.crc32(f"{int(seed)}:{split.dataset}".encode()))
    keep = []
    for c in range(len(split.descriptions)):
        idx = torch.nonzero(split.labels == c).flatten()
        if len(idx):
            keep.append(idx[torch.randperm(len(idx), generator=g)[:max(1, math.ceil(fraction * len(idx)))]])
    idx = torch.cat(keep).sort().values
    return dataclasses.replace(split, images=split.images[idx], labels=split.labels[idx])


def load_split(dataset: str | DatasetSpec, split: str, *, root: str | os.PathLike | None = None,
               preprocess_cfg: dict[str, Any], classes: Sequence[int] | None = None) -> Split:
    """`split` of `dataset` (a name or a spec), keeping only `classes` (original labels; None = all)."""
    from tcube.data import prompts_for, select_view

    spec = spec_of(dataset)
    path = dataset_file(spec.name, root)
    images, labels = _preprocessed(str(path), split, json.dumps(preprocess_cfg, sort_keys=True))
    descriptions, templates = prompts_for(spec)
    keep = tuple(range(spec.num_classes)) if classes is None else tuple(int(c) for c in classes)
    if classes is not None:
        idx, relabelled = select_view(labels.numpy(), keep)  # the harness's own view selection
        images, labels = images[torch.from_numpy(idx)], torch.from_numpy(relabelled)
    return Split(spec.name, split, images, labels, keep, tuple(descriptions[c] for c in keep), tuple(templates))


@lru_cache(maxsize=32)
def _preprocessed(path: str, split: str, preprocess_json: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N,3,H,W], labels [N]) through the eval preprocess, minus its normalization."""
    from PIL import Image

    from tcube.data import load_npz_split
    from tcube.models import preprocess_from_cfg

    cfg = json.loads(preprocess_json)
    preprocess = preprocess_from_cfg(cfg)
    raw, labels = load_npz_split(path, split)
    x = torch.stack([preprocess(Image.fromarray(a).convert("RGB")) for a in raw])
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    pixels = (x * std + mean) * 255.0  # undo Normalize: back to the 0..255 grid ToTensor divided
    rounded = pixels.round()
    if (pixels - rounded).abs().max() > 0.05:
        raise ValueError(f"preprocess {cfg} does not end in ToTensor + Normalize; the zoo cannot cache it as uint8")
    return rounded.clamp(0, 255).to(torch.uint8), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def normalize(pixels: torch.Tensor, preprocess_cfg: dict[str, Any]) -> torch.Tensor:
    """Float pixels in [0, 1] → the model's normalized input."""
    mean = torch.tensor(preprocess_cfg["mean"], dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std
