"""Class splits for base-to-novel evaluation: one convention shared by the zoo and the protocols."""
from __future__ import annotations

import math

MIN_CLASSES_FOR_CLASS_SPLIT = 4


def base_novel_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """Base = the first ⌈C/2⌉ class indices, novel = the rest (fixed, so every run agrees)."""
    if num_classes < MIN_CLASSES_FOR_CLASS_SPLIT:
        raise ValueError(f"base-to-novel class split needs ≥ {MIN_CLASSES_FOR_CLASS_SPLIT} classes, "
                         f"got {num_classes}; use split=modality for this dataset")
    cut = math.ceil(num_classes / 2)
    return list(range(cut)), list(range(cut, num_classes))
