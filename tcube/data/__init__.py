"""Data: dataset registry, file lookup, npz/HF datasets and MedMNIST-C corruptions.

Names are imported lazily on first use, so ``import tcube.data`` stays cheap (no medmnist,
datasets or scipy import) and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # registry
    "Modality": "registry", "DatasetSpec": "registry", "MODALITIES": "registry", "ALIASES": "registry",
    "MEDMNIST_2D": "registry", "known_datasets": "registry", "get_modality": "registry",
    "get_dataset_spec": "registry", "dataset_spec_from_config": "registry", "spec_from_config": "registry", "entry_from_config": "registry",
    "prompts_for": "registry",
    # files
    "resolve_data_root": "files", "find_npz": "files", "npz_filename": "files", "file_md5": "files",
    "is_offline": "files",
    # datasets
    "NpzDataset": "npz", "load_npz_split": "npz", "select_view": "npz", "SPLITS": "npz",
    "folder_split": "hf", "is_dataset_folder": "hf",
    # class splits
    "base_novel_classes": "splits", "MIN_CLASSES_FOR_CLASS_SPLIT": "splits",
    # corruptions
    "Corruption": "corruptions", "CORRUPTIONS": "corruptions", "FAMILIES": "corruptions",
    "MEDMNISTC_PARAMS": "corruptions", "corruptions_for": "corruptions", "medmnistc_reference": "corruptions",
    "severity_param": "corruptions", "corrupt": "corruptions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tcube.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
