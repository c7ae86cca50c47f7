"""Where zoo models live: names, folders, manifests, a per-zoo lock and atomic publishing.

Layout: ``$TCUBE_HOME/zoo/<profile>/seed<seed>[-<key>]/<name>/`` (TCUBE_HOME defaults to ~/.cache/tcube;
``<key>`` names the generalist's dataset set, absent for the four built-in datasets), each an open_clip ``local-dir`` folder plus ``manifest.json``. A folder appears in one atomic
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
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..io import tcube_home
from .data import canonical_dataset, spec_of, zoo_datasets
from .recipe import Recipe, get_recipe

if TYPE_CHECKING:
    from tcube.data import DatasetSpec

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


def has_class_split(dataset: str | DatasetSpec) -> bool:
    """Whether a dataset has enough classes for a base-class expert (base_to_novel split=class)."""
    from tcube.data import MIN_CLASSES_FOR_CLASS_SPLIT

    return spec_of(dataset).num_classes >= MIN_CLASSES_FOR_CLASS_SPLIT


def model_names(datasets: Sequence[str | DatasetSpec] | None = None) -> list[str]:
    """Valid zoo names: generalist, expert-<dataset>, expert-<dataset>-base (datasets with ≥ 4 classes)."""
    specs = [spec_of(d) for d in (zoo_datasets() if datasets is None else datasets)]
    return ([GENERALIST] + [f"expert-{s.name}" for s in specs]
            + [f"expert-{s.name}-base" for s in specs if has_class_split(s)])


# How to give the zoo a dataset it does not know: the same data config the evaluation reads.
HOW_TO_ADD = ("the zoo trains an expert for every dataset the run configures: describe a new one in a data config "
              "(conf/data/NAME.yaml, or DIR/data/NAME.yaml with --config-dir DIR: name = npz file stem, modality, "
              "classes) and select it with data=NAME, or list it in protocol.datasets")


def parse_name(name: str, datasets: Sequence[str | DatasetSpec] | None = None) -> ModelKey:
    """ModelKey of a zoo name among `datasets` (default: the built-ins; aliases accepted: expert-retina =
    expert-retinamnist); the ValueError says which names are valid and how to add a dataset."""
    specs = {s.name: s for s in (spec_of(d) for d in (zoo_datasets() if datasets is None else datasets))}

    def invalid(why: str = "") -> ValueError:
        return ValueError(f"unknown zoo model {name!r}{why}; valid names: {model_names(list(specs.values()))}. "
                          f"{HOW_TO_ADD}")

    if name == GENERALIST:
        return ModelKey(GENERALIST)
    if not isinstance(name, str) or not name.startswith("expert-"):
        raise invalid()
    rest, base = name[len("expert-"):], name.endswith("-base")
    if base:
        rest = rest[:-len("-base")]
    try:
        dataset = canonical_dataset(rest, list(specs))
    except ValueError:
        raise invalid(f" (no configured dataset {rest!r})") from None
    if base and not has_class_split(specs[dataset]):
        raise invalid(f" ({dataset} has {specs[dataset].num_classes} classes; base-class experts need ≥ 4)")
    return ModelKey("base_expert" if base else "expert", dataset)


def zoo_dir(profile: str = "default", seed: int = 0, key: str | None = None) -> Path:
    """Folder holding the zoo of one profile, seed and generalist dataset set (`key`, None for the
    built-in four: tcube.zoo.data.set_key); not created."""
    get_recipe(profile)  # validates the profile name
    return tcube_home() / "zoo" / profile / (f"seed{int(seed)}" + (f"-{key}" if key else ""))


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
