"""Making sure zoo models exist: train what is missing (generalist first), score it, publish it.

Manifest (``manifest.json`` in each model folder): name/kind/dataset, profile, seed and the
per-model training seed, the recipe and its digest, model and preprocess configs, every data file
used with its MD5, what it was trained on (images, classes, prompts), its parent generalist's
weights hash (experts), the training summary (steps, epochs-equivalent, loss curve, learned
logit_scale, seconds, threads), validation scores (``val``: per dataset, plus ``<d>:base`` /
``<d>:novel`` class subsets with their own prompts for datasets with ≥ 4 classes), versions, time.
"""
from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Sequence

from .data import Split, available_datasets, dataset_file, load_split, zoo_datasets
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

log = logging.getLogger("tcube.zoo")


def ensure_model(name: str, *, profile: str = "default", seed: int = 0, data_root=None,
                 force: bool = False, progress: bool = True) -> Path:
    """Folder of zoo model `name`, training it (and the generalist first, for an expert) if missing.

    An expert whose recorded parent is not the stored generalist is retrained: an expert is only
    meaningful next to the generalist it was fine-tuned from. `force` retrains `name` itself.
    """
    key = parse_name(name)
    recipe = get_recipe(profile)
    root = zoo_dir(profile, seed)
    with zoo_lock(root):
        parent = None
        if key.kind != GENERALIST:
            parent = read_manifest(ensure_model(GENERALIST, profile=profile, seed=seed, data_root=data_root,
                                                progress=progress))
        final = root / key.name
        manifest = read_manifest(final)
        if manifest is not None and not force:
            if parent is None or (manifest.get("parent") or {}).get("weights_sha256") == parent["weights_sha256"]:
                if manifest.get("recipe_digest") != recipe.digest():
                    warnings.warn(f"zoo model {final} was trained with another version of the '{profile}' recipe; "
                                  f"`python -m tcube.zoo --profile {profile} --force` retrains it", stacklevel=2)
                return final
            log.info("%s was fine-tuned from an older generalist; retraining it", key.name)
        _train_and_publish(key, recipe, seed, data_root, final, parent, progress)
        return final


def ensure_zoo(profile: str = "default", seed: int = 0, data_root=None, datasets: Sequence[str] | None = None,
               *, force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Train everything missing (generalist, every modality expert, base-class experts); name → folder.

    `datasets=None` means every zoo dataset whose file is in the data root.
    """
    if datasets is None:
        datasets = available_datasets(data_root) or zoo_datasets()  # none present: the data layer explains
    with zoo_lock(zoo_dir(profile, seed)):
        return {n: ensure_model(n, profile=profile, seed=seed, data_root=data_root, force=force, progress=progress)
                for n in model_names(datasets)}


def resolve_spec(spec: str, *, profile: str = "default", seed: int = 0, data_root=None) -> str:
    """`zoo:<name>` → `local-dir:<abs path>` (training it if missing); any other spec unchanged."""
    if not isinstance(spec, str) or not spec.startswith("zoo:"):
        return spec
    folder = ensure_model(spec[len("zoo:"):], profile=profile, seed=seed, data_root=data_root)
    return f"local-dir:{folder.resolve()}"


def train_seed(seed: int, name: str) -> int:
    """Per-model seed: the zoo seed for the generalist, a stable derivative of it for each expert."""
    return int(seed) if name == GENERALIST else zlib.crc32(f"{int(seed)}:{name}".encode()) & 0x7FFFFFFF


def training_splits(key: ModelKey, recipe: Recipe, data_root) -> list[Split]:
    """Train splits: every available dataset for the generalist, one (maybe base classes) for an expert."""
    if key.kind == GENERALIST:
        present = available_datasets(data_root)
        if not present:  # the data layer says what is missing and how to fix it (or downloads, online)
            errors = []
            for d in zoo_datasets():
                try:
                    dataset_file(d, data_root)
                except FileNotFoundError as err:
                    errors.append(err)
            present = available_datasets(data_root)
            if not present:
                raise errors[0]
        return [load_split(d, "train", root=data_root, preprocess_cfg=recipe.preprocess_cfg) for d in present]
    classes = None
    if key.kind == "base_expert":
        from tcube.data import base_novel_classes, get_dataset_spec

        classes = base_novel_classes(get_dataset_spec(key.dataset).num_classes)[0]
    return [load_split(key.dataset, "train", root=data_root, preprocess_cfg=recipe.preprocess_cfg, classes=classes)]


def validate(model, tokenizer, recipe: Recipe, data_root) -> dict[str, dict[str, float]]:
    """Val-split zero-shot scores on every available zoo dataset (+ base/novel class subsets)."""
    from tcube.data import base_novel_classes

    from .train import evaluate

    out = {}
    for d in available_datasets(data_root):
        split = load_split(d, "val", root=data_root, preprocess_cfg=recipe.preprocess_cfg)
        out[d] = evaluate(model, tokenizer, split, recipe.preprocess_cfg)
        if has_class_split(d):
            base, novel = base_novel_classes(len(split.descriptions))
            for tag, cls in (("base", base), ("novel", novel)):
                sub = load_split(d, "val", root=data_root, preprocess_cfg=recipe.preprocess_cfg, classes=cls)
                out[f"{d}:{tag}"] = evaluate(model, tokenizer, sub, recipe.preprocess_cfg)
    return out


def train_model(key: ModelKey, recipe: Recipe, seed: int, data_root, generalist=None, progress: bool = True):
    """(trained model, TrainLog, training splits) for `key`; experts start from `generalist`."""
    from tcube.models import tokenizer_for

    from .train import new_expert, new_generalist, train_clip, training_device

    splits = training_splits(key, recipe, data_root)
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


def _train_and_publish(key: ModelKey, recipe: Recipe, seed: int, data_root, final: Path,
                       parent: dict[str, Any] | None, progress: bool) -> None:
    import torch

    from tcube.data import file_md5
    from tcube.models import load_model, tokenizer_for

    start = time.perf_counter()
    generalist = None if parent is None else load_model(f"local-dir:{final.parent / GENERALIST}").model
    model, train_log, splits = train_model(key, recipe, seed, data_root, generalist, progress)
    tokenizer = tokenizer_for(recipe.model_cfg)
    val = validate(model, tokenizer, recipe, data_root)
    used = dict.fromkeys([s.dataset for s in splits] + [k for k in val if ":" not in k])
    files = {d: dataset_file(d, data_root) for d in used}
    manifest = {
        "name": key.name, "kind": key.kind, "dataset": key.dataset,
        "profile": recipe.profile, "seed": int(seed), "train_seed": train_seed(seed, key.name),
        "recipe_digest": recipe.digest(), "recipe": recipe.to_dict(),
        "model_cfg": recipe.model_cfg, "preprocess_cfg": recipe.preprocess_cfg,
        "data": {d: {"file": str(p.resolve()), "md5": file_md5(p)} for d, p in files.items()},
        "trained_on": {s.dataset: {"split": "train", "images": len(s), "classes": list(s.classes),
                                   "descriptions": list(s.descriptions), "templates": list(s.templates)}
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
