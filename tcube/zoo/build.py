"""Making sure zoo models exist: train what is missing (generalist first), score it, publish it.

Manifest (``manifest.json`` in each model folder): name/kind/dataset, profile, seed and the
per-model training seed, the recipe and its digest, model and preprocess configs, every data file
used with its MD5, the generalist's dataset set (``datasets``, ``datasets_key``: which zoo folder),
what it was trained on (images, classes and their names, file MD5, prompts), its parent generalist's
weights hash (experts), the training summary (steps, epochs-equivalent, loss curve, learned
logit_scale, seconds, threads), validation scores (``val``: per dataset, plus ``<d>:base`` /
``<d>:novel`` class subsets with their own prompts for datasets with ≥ 4 classes), versions, time.
"""
from __future__ import annotations

import datetime as _dt
import functools
import logging
import platform
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .data import (
    Split,
    dataset_file,
    dataset_set,
    describe,
    labelled_share,
    load_split,
    set_key,
    spec_of,
    zoo_datasets,
)
from .recipe import Recipe, get_recipe
from .store import (
    GENERALIST,
    ModelKey,
    has_class_split,
    model_names,
    parse_name,
    publish,
    read_manifest,
    zoo_dir,
    zoo_lock,
)

if TYPE_CHECKING:
    from tcube.data import DatasetSpec

log = logging.getLogger("tcube.zoo")


class Zoo:
    """One zoo: a profile, a seed and the datasets its generalist trains on, which also key its folder.

    `datasets` are the run's configured datasets (names or specs from data configs); the generalist
    trains on them plus every built-in dataset present in `data_root` (`data.dataset_set`). Names are
    checked without touching files; the dataset set (and so the folder) is read on first use.
    """

    def __init__(self, profile: str = "default", seed: int = 0, data_root=None,
                 datasets: Sequence[str | DatasetSpec] | None = ()):
        self.recipe, self.profile, self.seed, self.data_root = get_recipe(profile), profile, int(seed), data_root
        self.configured = tuple(spec_of(d) for d in datasets or ())

    def known(self) -> list[DatasetSpec]:
        """Datasets an expert may be named for: the built-ins and the configured ones."""
        specs = {d: spec_of(d) for d in zoo_datasets()}
        specs.update((s.name, s) for s in self.configured)
        return list(specs.values())

    def parse(self, name: str) -> ModelKey:
        return parse_name(name, self.known())

    @functools.cached_property
    def datasets(self) -> tuple[DatasetSpec, ...]:
        return dataset_set(self.configured, self.data_root)

    @functools.cached_property
    def key(self) -> str | None:
        return set_key(self.datasets, self.data_root)

    @property
    def folder(self) -> Path:
        return zoo_dir(self.profile, self.seed, self.key)

    def check(self, name: str) -> None:
        """What can be known before training: a valid name and a stored generalist that saw this zoo's datasets."""
        self.parse(name)
        self._check_generalist(read_manifest(self.folder / GENERALIST))

    def _check_generalist(self, manifest: dict[str, Any] | None) -> None:
        # only the keyless folder can disagree (a key hashes the names): zoos trained before sets were keyed
        had, want = list((manifest or {}).get("trained_on") or []), [s.name for s in self.datasets]
        if manifest is not None and sorted(had) != sorted(want):
            root = f" --data-root {self.data_root}" if self.data_root else ""
            raise ValueError(f"the zoo generalist in {self.folder / GENERALIST} was trained on {had}, but this run's "
                             f"datasets are {want}; retrain it with `python -m tcube.zoo --profile {self.profile} "
                             f"--seed {self.seed}{root} --only generalist --force` (its experts follow), or move it away")

    def ensure(self, name: str, *, force: bool = False, progress: bool = True) -> Path:
        """Folder of zoo model `name`, training it (and the generalist first, for an expert) if missing.

        An expert whose recorded parent is not the stored generalist is retrained: an expert is only
        meaningful next to the generalist it was fine-tuned from. `force` retrains `name` itself.
        """
        key = self.parse(name)
        with zoo_lock(self.folder):
            parent = None
            if key.kind != GENERALIST:
                parent = read_manifest(self.ensure(GENERALIST, progress=progress))
            final = self.folder / key.name
            manifest = read_manifest(final)
            if manifest is not None and not force:
                if parent is None:
                    self._check_generalist(manifest)
                if parent is None or (manifest.get("parent") or {}).get("weights_sha256") == parent["weights_sha256"]:
                    if manifest.get("recipe_digest") != self.recipe.digest():
                        warnings.warn(f"zoo model {final} was trained with another version of the '{self.profile}' "
                                      f"recipe; `python -m tcube.zoo --profile {self.profile} --force` retrains it",
                                      stacklevel=2)
                    return final
                log.info("%s was fine-tuned from an older generalist; retraining it", key.name)
            _train_and_publish(key, self, final, parent, progress)
            return final

    def resolve(self, spec: str) -> str:
        """`zoo:<name>` → `local-dir:<abs path>` (training it if missing); any other spec unchanged."""
        if not isinstance(spec, str) or not spec.startswith("zoo:"):
            return spec
        return f"local-dir:{self.ensure(spec[len('zoo:'):]).resolve()}"


def ensure_model(name: str, *, profile: str = "default", seed: int = 0, data_root=None,
                 datasets: Sequence[str | DatasetSpec] = (), force: bool = False, progress: bool = True) -> Path:
    """Folder of zoo model `name` (Zoo.ensure); `datasets` are the configured ones beyond the built-ins."""
    return Zoo(profile, seed, data_root, datasets).ensure(name, force=force, progress=progress)


def ensure_zoo(profile: str = "default", seed: int = 0, data_root=None, datasets: Sequence[str | DatasetSpec] = (),
               *, force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Train everything missing (generalist, an expert per dataset of its set, base-class experts); name → folder."""
    zoo = Zoo(profile, seed, data_root, datasets)
    with zoo_lock(zoo.folder):
        return {n: zoo.ensure(n, force=force, progress=progress) for n in model_names(zoo.datasets)}


def resolve_spec(spec: str, *, profile: str = "default", seed: int = 0, data_root=None,
                 datasets: Sequence[str | DatasetSpec] = ()) -> str:
    """`zoo:<name>` → `local-dir:<abs path>` (training it if missing); any other spec unchanged."""
    if not isinstance(spec, str) or not spec.startswith("zoo:"):
        return spec
    return Zoo(profile, seed, data_root, datasets).resolve(spec)


def train_seed(seed: int, name: str) -> int:
    """Per-model seed: the zoo seed for the generalist, a stable derivative of it for each expert."""
    return int(seed) if name == GENERALIST else zlib.crc32(f"{int(seed)}:{name}".encode()) & 0x7FFFFFFF


def training_splits(key: ModelKey, recipe: Recipe, datasets: Sequence[DatasetSpec], data_root,
                    seed: int) -> list[Split]:
    """Train splits: the generalist's share (recipe.generalist_fraction, drawn per zoo seed) of every dataset of
    its set, or one dataset's whole train split (maybe base classes only) for an expert."""
    if key.kind == GENERALIST:
        return [labelled_share(load_split(s, "train", root=data_root, preprocess_cfg=recipe.preprocess_cfg),
                               recipe.generalist_fraction, seed) for s in datasets]
    # a built-in dataset outside the set has no file here: loading it gives the data layer's error
    spec = {s.name: s for s in datasets}.get(key.dataset) or spec_of(key.dataset)
    classes = None
    if key.kind == "base_expert":
        from tcube.data import base_novel_classes

        classes = base_novel_classes(spec.num_classes)[0]
    return [load_split(spec, "train", root=data_root, preprocess_cfg=recipe.preprocess_cfg, classes=classes)]


def validate(model, tokenizer, recipe: Recipe, datasets: Sequence[DatasetSpec], data_root) -> dict[str, dict[str, float]]:
    """Val-split zero-shot scores on every dataset of the zoo's set (+ base/novel class subsets)."""
    from tcube.data import base_novel_classes

    from .train import evaluate

    out = {}
    for spec in datasets:
        d = spec.name
        split = load_split(spec, "val", root=data_root, preprocess_cfg=recipe.preprocess_cfg)
        out[d] = evaluate(model, tokenizer, split, recipe.preprocess_cfg)
        if has_class_split(spec):
            base, novel = base_novel_classes(len(split.descriptions))
            for tag, cls in (("base", base), ("novel", novel)):
                sub = load_split(spec, "val", root=data_root, preprocess_cfg=recipe.preprocess_cfg, classes=cls)
                out[f"{d}:{tag}"] = evaluate(model, tokenizer, sub, recipe.preprocess_cfg)
    return out


def train_model(key: ModelKey, recipe: Recipe, seed: int, data_root, generalist=None, progress: bool = True,
                datasets: Sequence[DatasetSpec] | None = None):
    """(trained model, TrainLog, training splits) for `key`; experts start from `generalist`.
    `datasets`: the generalist's set (None: the built-ins present in `data_root`)."""
    from tcube.models import tokenizer_for

    from .train import new_expert, new_generalist, train_clip, training_device

    datasets = dataset_set((), data_root) if datasets is None else datasets
    splits = training_splits(key, recipe, datasets, data_root, seed)
    if key.kind == GENERALIST:
        model, stage = new_generalist(recipe, seed), recipe.generalist
    else:
        if generalist is None:
            raise ValueError(f"{key.name} needs the generalist it is fine-tuned from")
        model = new_expert(generalist, recipe)
        stage = recipe.base_expert if key.kind == "base_expert" else recipe.expert
    log.info("training %s on %s (%s steps)", key.name, [s.dataset for s in splits],
             stage.num_steps(sum(len(s) for s in splits)))
    device = training_device()
    train_log = train_clip(model.to(device), tokenizer_for(recipe.model_cfg), splits, stage,
                           preprocess_cfg=recipe.preprocess_cfg, seed=train_seed(seed, key.name), desc=key.name,
                           progress=progress)
    return model.cpu(), train_log, splits


def _train_and_publish(key: ModelKey, zoo: Zoo, final: Path, parent: dict[str, Any] | None, progress: bool) -> None:
    import torch

    from tcube.data import file_md5
    from tcube.models import load_model, tokenizer_for

    recipe, seed, data_root = zoo.recipe, zoo.seed, zoo.data_root
    start = time.perf_counter()
    generalist = None if parent is None else load_model(f"local-dir:{final.parent / GENERALIST}").model
    model, train_log, splits = train_model(key, recipe, seed, data_root, generalist, progress, zoo.datasets)
    tokenizer = tokenizer_for(recipe.model_cfg)
    val = validate(model, tokenizer, recipe, zoo.datasets, data_root)
    used = dict.fromkeys([s.dataset for s in splits] + [k for k in val if ":" not in k])
    files = {d: dataset_file(d, data_root) for d in used}
    md5 = {d: file_md5(p) for d, p in files.items()}
    specs = {s.name: s for s in zoo.datasets}
    manifest = {
        "name": key.name, "kind": key.kind, "dataset": key.dataset,
        "profile": recipe.profile, "seed": int(seed), "train_seed": train_seed(seed, key.name),
        "recipe_digest": recipe.digest(), "recipe": recipe.to_dict(),
        "model_cfg": recipe.model_cfg, "preprocess_cfg": recipe.preprocess_cfg,
        "data": {d: {"file": str(p.resolve()), "md5": md5[d]} for d, p in files.items()},
        # the generalist's dataset set, which keys the zoo folder (null: the built-in four)
        "datasets_key": zoo.key, "datasets": [describe(s) for s in zoo.datasets],
        "trained_on": {s.dataset: {"split": "train", "images": len(s),
                                   "fraction": recipe.generalist_fraction if key.kind == GENERALIST else 1.0,
                                   "classes": list(s.classes),
                                   "class_names": [specs[s.dataset].classes[c] for c in s.classes]
                                   if s.dataset in specs else None,
                                   "md5": md5[s.dataset], "descriptions": list(s.descriptions),
                                   "templates": list(s.templates)}
                       for s in splits},
        "parent": {"name": GENERALIST, "weights_sha256": parent["weights_sha256"]} if parent else None,
        "training": {
            "steps": train_log.steps, "batch_size": train_log.batch_size, "samples_seen": train_log.samples,
            "epochs_equivalent": {s.dataset: round(train_log.samples[s.dataset] / len(s), 2) for s in splits},
            "loss": train_log.summary(), "logit_scale": train_log.logit_scale,
            "train_seconds": round(train_log.seconds, 1), "threads": torch.get_num_threads(),
            "device": train_log.device,
        },
        "val": val,
        "versions": _versions(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["wall_seconds"] = round(time.perf_counter() - start, 1)  # load + train + validate
    extra = {"zoo_model": key.name, "profile": recipe.profile, "seed": int(seed), "recipe_digest": recipe.digest()}
    publish(model, final, manifest, recipe, tokenizer, extra)
    log.info("saved %s (%.0f s)", final, manifest["wall_seconds"])


def _versions() -> dict[str, str]:
    import open_clip
    import torch

    import tcube

    return {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "tcube": tcube.__version__}
