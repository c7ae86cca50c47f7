"""base_to_novel: generalization beyond what the expert was tuned on.

split=modality: base = the expert's dataset, novel = every other listed dataset whose file is in the
data root (each with its own classes and prompts). split=class: on a dataset with ≥ 4 classes, the
pair (generalist, model.expert_base) — an expert tuned on the base classes only — is scored on the
base-class and the novel-class subsets of the test split, each subset being its own label space.
"""
from __future__ import annotations

import logging

from ..data.splits import MIN_CLASSES_FOR_CLASS_SPLIT, base_novel_classes
from .base import Context, EvalSet, Skip, resolve_data, spec_from_config

NAME = "base_to_novel"
SPLITS = ("modality", "class")
log = logging.getLogger(__name__)


def splits_of(options) -> list[str]:
    split = options.get("split", "modality")
    splits = [split] if isinstance(split, str) else list(split)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"protocol.split must be one of {SPLITS} or a list of them, got {split!r} "
                         "(e.g. protocol.split=modality)")
    return splits


def modality_sets(ctx: Context) -> tuple[list[EvalSet], list[Skip]]:
    sets = [EvalSet(NAME, ctx.data, split="modality", role="base")]
    skips = []
    for entry in ctx.options.get("datasets") or []:
        spec = spec_from_config(entry)
        if spec.name == ctx.data.name:
            continue
        if spec.is_multi_label:
            skips.append(Skip(NAME, f"modality/{spec.name}", f"{spec.task} dataset: no single-label zero-shot score"))
            continue
        try:
            data = resolve_data(entry, ctx.data_root, ctx.size)
        except FileNotFoundError:
            where = ctx.data_root or "$TCUBE_DATA_DIR or ~/.medmnist"
            skips.append(Skip(NAME, f"modality/{spec.name}", f"no {spec.name} npz file in {where}"))
            continue
        sets.append(EvalSet(NAME, data, split="modality", role="novel"))
    if len(sets) == 1:
        skips.append(Skip(NAME, "modality", "no novel dataset found: list some in protocol.datasets and put their "
                                             "npz files in data.root"))
    return sets, skips


def class_sets(ctx: Context) -> tuple[list[EvalSet], list[Skip]]:
    n = ctx.data.spec.num_classes
    if n < MIN_CLASSES_FOR_CLASS_SPLIT:
        return [], [Skip(NAME, f"class/{ctx.data.name}",
                         f"{ctx.data.name} has {n} classes; split=class needs ≥ {MIN_CLASSES_FOR_CLASS_SPLIT}")]
    if not ctx.has_expert_base:
        return [], [Skip(NAME, f"class/{ctx.data.name}",
                         "model.expert_base is not set: split=class needs an expert tuned on the base classes "
                         "only (set model.expert_base=<spec>)")]
    base, novel = base_novel_classes(n)
    return [EvalSet(NAME, ctx.data, subset=name, classes=tuple(classes), split="class", role=name,
                    expert="expert_base") for name, classes in (("base", base), ("novel", novel))], []


def eval_sets(ctx: Context) -> tuple[list[EvalSet], list[Skip]]:
    sets, skips = [], []
    for split in splits_of(ctx.options):
        s, k = (modality_sets if split == "modality" else class_sets)(ctx)
        sets += s
        skips += k
    return sets, skips
