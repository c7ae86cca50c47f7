"""The numbers a report shows, each written once as a function of per-cell top-1 values.

A *cell* is one evaluated view (protocol, split, role, dataset, subset, corruption, severity) of one
expert; a `Score` turns the cells' top-1 of one method into one number (a mean, a harmonic mean,
an mCE). Because the same function is applied to point values, to bootstrap draws (arrays, one per
resample) and to the majority-class baseline, every table entry gets its interval and its paired
differences from one definition, and no score is computed two ways.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CellId = tuple
Values = Mapping[str, Mapping[CellId, Any]]  # method -> cell -> top-1 (float, or [B] draws)
CELL_FIELDS = ("expert_data", "protocol", "split", "role", "dataset", "subset", "corruption", "severity")


def cell_id(row: Mapping[str, Any]) -> CellId:
    return tuple(row.get(f) for f in CELL_FIELDS)


@dataclass(frozen=True)
class Score:
    protocol: str
    name: str                      # column label in report.md
    fn: Callable[[Values, str], Any]
    headline: bool = False         # averaged over expert modalities and compared against the references
    lower_is_better: bool = False

    @property
    def key(self) -> str:
        return f"{self.protocol}: {self.name}"

    def __call__(self, values: Values, method: str) -> Any:
        """The score of `method`, or None when a cell it needs was not evaluated (or has no draws)."""
        try:
            return self.fn(values, method)
        except KeyError:
            return None


def _mean(values: Values, method: str, cells: Sequence[CellId]) -> Any:
    if not cells:
        raise KeyError("no cells")
    return np.mean(np.stack([np.asarray(values[method][c], dtype=np.float64) for c in cells]), axis=0)


def _hm(a: Any, b: Any) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(a) + np.asarray(b) > 0, 2 * np.asarray(a) * b / (np.asarray(a) + b), np.nan)


def _mce(values: Values, method: str, by_corruption: Mapping[str, Sequence[CellId]], reference: str) -> Any:
    """Mean over corruptions of Σ_s err / Σ_s err_reference × 100; a corruption where the reference makes
    no error is left out (its CE is undefined), as in tcube.reporting.metrics / report.summarize."""
    ces = []
    for cells in by_corruption.values():
        err = sum(100.0 - np.asarray(values[method][c], dtype=np.float64) for c in cells)
        ref = sum(100.0 - np.asarray(values[reference][c], dtype=np.float64) for c in cells)
        with np.errstate(divide="ignore", invalid="ignore"):
            ces.append(np.where(ref > 0, err / np.where(ref > 0, ref, 1.0) * 100.0, np.nan))
    if not ces:
        raise KeyError("no corruptions")
    stacked = np.stack(ces)
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(stacked).sum(axis=0)
        return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def scores_for(cells: Sequence[CellId]) -> list[Score]:
    """The scores of one expert's cells, in report order (headline scores carry stable names across experts)."""
    def where(**match) -> list[CellId]:
        idx = {f: i for i, f in enumerate(CELL_FIELDS)}
        return [c for c in cells if all((c[idx[k]] == v) if not callable(v) else v(c[idx[k]]) for k, v in match.items())]

    out: list[Score] = []
    dom = where(protocol="in_domain")
    if dom:
        out.append(Score("in_domain", "top-1", lambda v, m: _mean(v, m, dom), headline=True))
    for split, label in (("modality", "modality"), ("class", "class")):
        base = where(protocol="base_to_novel", split=split, role="base")
        novel = where(protocol="base_to_novel", split=split, role="novel")
        if not (base or novel):
            continue
        if split == "modality":
            for c in base:
                out.append(Score("base_to_novel", f"modality base: {c[4]}", lambda v, m, c=c: _mean(v, m, [c])))
            for c in sorted(novel, key=lambda c: str(c[4])):
                out.append(Score("base_to_novel", f"modality novel: {c[4]}", lambda v, m, c=c: _mean(v, m, [c])))
            out.append(Score("base_to_novel", "modality novel mean", lambda v, m, n=novel: _mean(v, m, n)))
        else:  # bind the loop's lists now (default arguments), not when the score is evaluated
            out.append(Score("base_to_novel", "class base", lambda v, m, b=base: _mean(v, m, b)))
            out.append(Score("base_to_novel", "class novel", lambda v, m, n=novel: _mean(v, m, n)))
        out.append(Score("base_to_novel", f"{label} HM",
                         lambda v, m, b=base, n=novel: _hm(_mean(v, m, b), _mean(v, m, n)), headline=True))
    clean = where(protocol="corruption", corruption=lambda x: not x)
    corrupted = where(protocol="corruption", corruption=lambda x: bool(x))
    if clean:
        out.append(Score("corruption", "clean", lambda v, m: _mean(v, m, clean)))
    if corrupted:
        by_corruption: dict[str, list[CellId]] = {}
        for c in sorted(corrupted, key=lambda c: (str(c[6]), c[7])):
            by_corruption.setdefault(c[6], []).append(c)
        for name, group in by_corruption.items():
            out.append(Score("corruption", name, lambda v, m, g=group: _mean(v, m, g)))
        out.append(Score("corruption", "mean corrupted", lambda v, m: _mean(v, m, corrupted), headline=True))
        out.append(Score("corruption", "mCE", lambda v, m: _mce(v, m, by_corruption, "generalist"),
                         headline=True, lower_is_better=True))
    return out


def averaged(scores_by_expert: Mapping[Any, Sequence[Score]]) -> list[Score]:
    """Headline scores averaged over the expert modalities that have them (each modality weighs the same)."""
    keys: dict[str, list[Score]] = {}
    for scores in scores_by_expert.values():
        for s in scores:
            if s.headline:
                keys.setdefault(s.key, []).append(s)

    def mean_of(group: list[Score]) -> Callable[[Values, str], Any]:
        def fn(v: Values, m: str) -> Any:
            parts = [s.fn(v, m) for s in group]
            return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in parts]), axis=0)
        return fn

    return [Score(g[0].protocol, g[0].name, mean_of(g), headline=True, lower_is_better=g[0].lower_is_better)
            for g in keys.values()]
