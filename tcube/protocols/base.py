"""What a protocol produces: evaluation sets (one data view each) and the method variants to score on them.

An `EvalSet` is one view of one dataset (split, class subset, corruption and severity) scored with
one generalist/expert pair; a *cell* is an EvalSet × one method variant and becomes one row of
results.jsonl. Protocol modules only list EvalSets; runner.py evaluates them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.corruptions import severity_param
from ..data.files import find_npz
from ..data.registry import (  # noqa: F401  (spec_from_config: re-exported, protocols used to define it)
    DatasetSpec,
    prompts_for,
    spec_from_config,
)
from ..methods.registry import TEMPERATURE_SCALING, Kind, effective, get_method

PROTOCOL_NAMES = ("in_domain", "base_to_novel", "corruption")


@dataclass(frozen=True)
class Variant:
    """One registered method with every parameter that affects its results."""

    method: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def kind(self) -> Kind:
        return get_method(self.method).kind

    @property
    def needs_tuning(self) -> bool:
        """Tuned on validation data (its coefficients, or the temperatures of temperature scaling)."""
        return self.kind is Kind.TUNED or bool(self.kwargs.get(TEMPERATURE_SCALING, False))


def make_variant(method: str, params: Mapping[str, Any]) -> Variant:
    """The method's variant for `params` (its own parameters; the rest at their defaults), validated."""
    try:
        m = get_method(method)
    except ValueError as err:
        raise ValueError(f"{err} or `all` (e.g. method=t3 or method.name=t3)") from None
    p = m.make_params(**params)
    return Variant(method, tuple(sorted((k, getattr(p, k)) for k in m.result_keys)))


def check_engine(variants: Sequence[Variant], engine: str) -> None:
    per_sample = [v.method for v in variants if effective(v.method).kind is Kind.PER_SAMPLE]
    if engine == "batch" and per_sample:
        raise ValueError(f"engine 'batch' merges one model per batch, but {per_sample} need one λ per sample; "
                         "use engine=fused (exact) or engine=bucket (approximate), or a method list without them "
                         "(method.methods=[...]; t3_batch runs on engine=batch)")


@dataclass(frozen=True, eq=False)  # identity semantics: specs hold unhashable mappings
class DataRef:
    """A dataset spec and the npz file holding it."""

    spec: DatasetSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def prompts(self, classes: Sequence[int] | None = None) -> tuple[list[str], list[str]]:
        """(class descriptions of the label space, templates)."""
        descriptions, templates = prompts_for(self.spec)
        keep = range(len(descriptions)) if classes is None else classes
        return [descriptions[i] for i in keep], list(templates)


def resolve_data(entry: str | Mapping[str, Any], root: str | Path | None, size: int = 28) -> DataRef:
    """Spec + located (MD5-checked) npz file; raises FileNotFoundError naming the fix when absent."""
    spec = spec_from_config(entry)
    spec.require_single_label()
    return DataRef(spec, find_npz(spec.name, root=root, size=size))


@dataclass(frozen=True, eq=False)
class EvalSet:
    """One data view scored by one pair: `classes` is the label space (original indices; None = all)."""

    protocol: str
    data: DataRef
    subset: str = "all"
    classes: tuple[int, ...] | None = None
    corruption: str | None = None
    severity: int = 0
    split: str | None = None      # base_to_novel: modality | class
    role: str | None = None       # base_to_novel: base | novel
    expert: str = "expert"        # the model.* key naming this set's expert (expert | expert_base)
    limit: int | None = None      # the protocol's own cap on test images (the run-wide `limit` also applies)
    reading: str | None = None    # corruption protocol: the size its images are at ("224" | "native"), clean too

    def describe(self) -> dict[str, Any]:
        """The row fields that say which view this is (the corruption protocol's also name the reading, and
        a corrupted view its parameter)."""
        out = {"protocol": self.protocol, "split": self.split, "role": self.role,
               "modality": self.data.spec.modality.name, "dataset": self.data.name, "subset": self.subset,
               "corruption": self.corruption, "severity": self.severity}
        if self.reading:
            out["corruption_reading"] = self.reading
        if self.corruption:
            out["corruption_param"] = severity_param(self.corruption, self.severity, self.data.spec)
        return out

    def prompt_hash(self) -> str:
        descriptions, templates = self.data.prompts(self.classes)
        return hashlib.sha256(json.dumps([descriptions, templates]).encode()).hexdigest()[:12]


def cap_limit(*limits: int | None) -> int | None:
    """The narrowest of several image caps (None = no cap)."""
    caps = [c for c in limits if c is not None]
    return min(caps) if caps else None


@dataclass(frozen=True)
class Skip:
    """A part of a protocol that could not run here, and why (logged and written to summary.json)."""

    protocol: str
    what: str
    reason: str


@dataclass
class Context:
    """What protocols need to list their evaluation sets."""

    data: DataRef                          # the expert's dataset
    options: Mapping[str, Any]             # the protocol config
    data_root: str | Path | None
    size: int = 28
    has_expert_base: bool = False
