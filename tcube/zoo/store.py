"""Where zoo models live: names, folders, manifests, a per-zoo lock and atomic publishing.

Layout: ``$TCUBE_HOME/zoo/<profile>/seed<seed>/<name>/`` (TCUBE_HOME defaults to ~/.cache/tcube),
each an open_clip ``local-dir`` folder plus ``manifest.json``. A folder appears in one atomic
rename once complete, so a killed training leaves no half-written model; a file lock per zoo
folder makes concurrent callers (e.g. parallel Hydra jobs) wait instead of training twice.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..io import tcube_home
from .data import canonical_dataset, zoo_datasets
from .recipe import Recipe, get_recipe

log = logging.getLogger("tcube.zoo")

GENERALIST = "generalist"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelKey:
    """A zoo model: the generalist, or an expert on one dataset (all classes, or base classes only)."""

    kind: str                  # "generalist" | "expert" | "base_expert"
    dataset: str | None = None

    @property
    def name(self) -> str:
        if self.kind == GENERALIST:
            return GENERALIST
        return f"expert-{self.dataset}" + ("-base" if self.kind == "base_expert" else "")


def has_class_split(dataset: str) -> bool:
    """Whether a dataset has enough classes for a base-class expert (base_to_novel split=class)."""
    from tcube.data import MIN_CLASSES_FOR_CLASS_SPLIT, get_dataset_spec

    return get_dataset_spec(dataset).num_classes >= MIN_CLASSES_FOR_CLASS_SPLIT


def model_names(datasets: Sequence[str] | None = None) -> list[str]:
    """Valid zoo names: generalist, expert-<dataset>, expert-<dataset>-base (datasets with ≥ 4 classes)."""
    ds = [canonical_dataset(d) for d in datasets] if datasets is not None else list(zoo_datasets())
    return ([GENERALIST] + [f"expert-{d}" for d in ds]
            + [f"expert-{d}-base" for d in ds if has_class_split(d)])


def parse_name(name: str) -> ModelKey:
    """ModelKey of a zoo name (dataset aliases accepted: expert-retina = expert-retinamnist)."""
    def invalid() -> ValueError:
        return ValueError(f"unknown zoo model {name!r}; valid names: {model_names()}")

    if name == GENERALIST:
        return ModelKey(GENERALIST)
    if not isinstance(name, str) or not name.startswith("expert-"):
        raise invalid()
    rest, base = name[len("expert-"):], name.endswith("-base")
    if base:
        rest = rest[:-len("-base")]
    try:
        dataset = canonical_dataset(rest)
    except ValueError:
        raise invalid() from None
    if base and not has_class_split(dataset):
        raise invalid()
    return ModelKey("base_expert" if base else "expert", dataset)




def zoo_dir(profile: str = "default", seed: int = 0) -> Path:
    """Folder holding the zoo of one profile and seed (not created)."""
    get_recipe(profile)  # validates the profile name
    return tcube_home() / "zoo" / profile / f"seed{int(seed)}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None while the model does not exist."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


_HELD: dict[str, int] = {}  # zoo folders whose lock this process holds (re-entrant)


@contextlib.contextmanager
def zoo_lock(folder: Path) -> Iterator[None]:
    """Exclusive, re-entrant lock on one zoo folder, across processes (flock where available)."""
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): single-process use only
        fcntl = None
    with open(folder / ".lock", "a") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process training the zoo in %s", folder)
                fcntl.flock(fh, fcntl.LOCK_EX)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def publish(model, final: Path, manifest: dict[str, Any], recipe: Recipe, tokenizer: Callable,
            extra: dict[str, Any]) -> None:
    """Write the model folder beside its final place, then rename it in: readers see all or nothing.

    Call with the zoo lock held. Adds `weights_sha256` to the manifest (experts record their
    parent's, so a retrained generalist makes its old experts visibly stale).
    """
    from tcube.models import save_local_dir
    from tcube.models.loading import WEIGHTS_NAME

    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*"):  # leftovers of killed runs
        shutil.rmtree(stale, ignore_errors=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    save_local_dir(model, staging, model_cfg=recipe.model_cfg, preprocess_cfg=recipe.preprocess_cfg,
                   tokenizer=tokenizer, extra=extra)
    manifest["weights_sha256"] = sha256(staging / WEIGHTS_NAME)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
