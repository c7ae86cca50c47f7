"""The data view of a cell: which images (class subset, seeded `limit` subset), corrupted in the view's reading,
preprocessed with the pair's transform, with labels in the view's own label space."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.corruptions import DEFAULT_READING, corrupt, to_224
from ..data.npz import load_npz_split, select_view
from ..protocols.base import DataRef, cap_limit


class DataViews:
    """Loads views of the run's data files; keeps each split's arrays after their first use."""

    def __init__(self, *, limit: int | None, seed: int):
        self.limit, self.seed = limit, int(seed)
        self._arrays: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def _split_arrays(self, data: DataRef, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = (str(data.path), split)
        if key not in self._arrays:
            self._arrays[key] = load_npz_split(data.path, split)
        return self._arrays[key]

    def cap(self, limit: int | None) -> int | None:
        """The run-wide `limit` combined with a narrower one (a protocol's, or tuning's)."""
        return cap_limit(self.limit, limit)

    def load_view(self, data: DataRef, split: str, classes: Sequence[int] | None, preprocess: Callable,
                  corruption: str | None = None, severity: int = 0, limit: int | None = None,
                  positions: slice | None = None, reading: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images [N, 3, H, W] and labels in the label space of `classes` (at most cap(limit)).

        `positions` keeps only that block of the selected images (a data-parallel rank's share).
        """
        images, labels = self._split_arrays(data, split)
        n_classes = data.spec.num_classes
        if labels.max(initial=0) >= n_classes:
            raise ValueError(f"{data.path} has label {labels.max()} but {data.name} lists {n_classes} classes "
                             "(data.classes); give one class name per label")
        idx, y = select_view(labels, classes, self.cap(limit), self.seed)
        if len(idx) == 0:
            raise ValueError(f"{data.name} {split}: no images of classes {classes}")
        if positions is not None:
            idx, y = idx[positions], y[positions]
        out = []
        for i in idx:
            img = images[i]
            if corruption is not None:  # before preprocessing (which resizes to the model's input); seeded per image
                img = corrupt(img, corruption, severity, seed=self.seed, index=int(i), dataset=data.spec,
                              reading=reading or DEFAULT_READING)
            elif reading == "224":  # the clean set of that reading: the same 224-px images, uncorrupted
                img = to_224(img)
            out.append(preprocess(Image.fromarray(img).convert("RGB")))
        return (torch.stack(out) if out else torch.empty(0)), torch.as_tensor(y.reshape(-1), dtype=torch.long)

    def view_size(self, data: DataRef, split: str, classes: Sequence[int] | None, limit: int | None = None) -> int:
        """How many images load_view selects (without loading them)."""
        return len(select_view(self._split_arrays(data, split)[1], classes, self.cap(limit), self.seed)[0])
