"""Every score a report shows, defined once: the formulas, and the cells each score is taken over.

Consumers: summary.json / report.md (tcube.reporting.report), the bootstrap intervals
(tcube.reporting.uncertainty), the multi-run report (tcube.reporting.aggregate), the plots' tables and the
notebook (tcube.reporting.plots). All accuracies and errors are in percent (0-100).

The formulas are pure numpy functions: a point value (float) gives a float, an array of bootstrap draws gives an
array, element by element, so an interval and its point come from the same definition.

Zero-reference rule. mCE, relative mCE and error reduction divide by a reference's error (or by its growth under
a corruption). A denominator below ZERO_REFERENCE_TOL = 1e-9 percentage points (zero, negative, or round-off
such as 1e-14) makes the ratio *undefined*: NaN here, None in summary.json, "–" in report.md with a note,
never a huge or sign-flipped number. The smallest non-zero error any evaluation (or bootstrap resample) of
n images can produce is 100/n points (>= 1e-4 for n <= 1e6), far above the tolerance; round-off on sums of a
few hundred percentages stays below 1e-11. An mCE (relative mCE) is the mean over the corruptions whose CE is
defined; with none defined it is undefined. The harmonic mean of base and novel accuracy is 0 when both are 0.

A *cell* is one evaluated view (protocol, split, role, dataset, subset, corruption, severity) of one expert; a
`Score` turns the cells' top-1 of one method into one number (a mean, a harmonic mean, an mCE).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ZERO_REFERENCE_TOL = 1e-9  # percentage points; see the module docstring


# -- per-image metrics (predictions in, percent out) --------------------------------------------------------
def _indices(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_preds_labels(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    """Class-index arrays; 2-D ``preds`` (logits or probabilities) are reduced with argmax."""
    p, y = _indices(preds), _indices(labels)
    if p.ndim == 2:
        p = p.argmax(axis=1)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"preds must be (N,) class indices or (N, C) scores and labels (N,); got "
                         f"{tuple(p.shape)} and {tuple(y.shape)}")
    if p.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    if p.size != y.size:
        raise ValueError(f"{p.size} predictions for {y.size} labels; they must match one to one")
    for a in (p, y):
        if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
            raise ValueError("preds and labels must be integer class indices")
    return p.astype(np.int64), y.astype(np.int64)


def top1(preds, labels) -> float:
    """Top-1 accuracy in percent (array-likes or tensors; 2-D preds are argmax-ed)."""
    p, y = _as_preds_labels(preds, labels)
    return float((p == y).mean() * 100.0)


def balanced_accuracy(preds, labels, num_classes: int) -> float:
    """Mean per-class recall in percent, over the classes present in ``labels``.

    Classes absent from ``labels`` have no recall and are left out (as in scikit-learn's
    ``balanced_accuracy_score``); a class that is predicted but never true does not count as recall 0.
    Per-class recall is rounded to float32 before the mean, as the torchmetrics implementation this replaces
    did, so stored numbers stay bit-identical.
    """
    p, y = _as_preds_labels(preds, labels)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, t in (("labels", y), ("preds", p)):
        if t.min() < 0 or t.max() >= num_classes:
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}; got range {int(t.min())}..{int(t.max())}")
    support = np.bincount(y, minlength=num_classes)
    hits = np.bincount(y[p == y], minlength=num_classes)
    present = support > 0
    recall = hits[present].astype(np.float32) / support[present].astype(np.float32)
    return float(recall.astype(np.float64).mean() * 100.0)


# -- the formulas (floats or arrays of draws, element-wise) ------------------------------------------------
def _out(x: Any) -> Any:
    return float(x) if np.ndim(x) == 0 else x


def error(top1_percent: Any) -> Any:
    """Top-1 error in percent: 100 - top1."""
    return _out(100.0 - np.asarray(top1_percent, dtype=np.float64))


def ratio(num: Any, den: Any) -> Any:
    """num / den × 100, undefined (NaN) where den < ZERO_REFERENCE_TOL (the zero-reference rule)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = den >= ZERO_REFERENCE_TOL
    with np.errstate(divide="ignore", invalid="ignore"):
        return _out(np.where(ok, num / np.where(ok, den, 1.0) * 100.0, np.nan))


def corruption_error(err_method: Sequence[Any], err_ref: Sequence[Any]) -> Any:
    """CE of one corruption: Σ_s err_method / Σ_s err_ref × 100 over its severities (reference = 100)."""
    if len(err_method) != len(err_ref) or not len(err_method):
        raise ValueError(f"{len(err_method)} method errors vs {len(err_ref)} reference errors; give one error per "
                         "severity for both, same severities")
    return ratio(sum(np.asarray(e, dtype=np.float64) for e in err_method),
                 sum(np.asarray(e, dtype=np.float64) for e in err_ref))


def relative_corruption_error(err_method: Sequence[Any], err_ref: Sequence[Any], clean_method: Any,
                              clean_ref: Any) -> Any:
    """Relative CE (Hendrycks & Dietterich 2019): Σ_s(err_s − err_clean) / Σ_s(ref_s − ref_clean) × 100;
    undefined when the reference is not degraded by the corruption."""
    if len(err_method) != len(err_ref) or not len(err_method):
        raise ValueError(f"{len(err_method)} method errors vs {len(err_ref)} reference errors")
    return ratio(sum(np.asarray(e, dtype=np.float64) - clean_method for e in err_method),
                 sum(np.asarray(e, dtype=np.float64) - clean_ref for e in err_ref))


def mean_defined(values: Sequence[Any]) -> Any:
    """Mean of the defined (finite) values, element-wise; NaN where none is defined (mCE over corruptions)."""
    if not len(values):
        return float("nan")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    finite = np.isfinite(stacked)
    counts = finite.sum(axis=0)
    total = np.where(finite, stacked, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _out(np.where(counts > 0, total / np.maximum(counts, 1), np.nan))


def error_reduction(err_method: Any, err_ref: Any) -> Any:
    """Relative error reduction in percent: (err_ref − err_method) / err_ref × 100; undefined for err_ref ≈ 0."""
    err_method, err_ref = np.asarray(err_method, dtype=np.float64), np.asarray(err_ref, dtype=np.float64)
    return ratio(err_ref - err_method, err_ref)


def harmonic_mean(base: Any, novel: Any) -> Any:
    """Harmonic mean of base and novel accuracy; 0 when both are 0 (one of them 0 already gives 0)."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(novel, dtype=np.float64)
    zero = a + b == 0  # NaN (an undefined draw) stays NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        return _out(np.where(zero, 0.0, 2 * a * b / np.where(zero, 1.0, a + b)))


def defined(value: Any) -> float | None:
    """A point score for JSON: None when undefined (None or NaN)."""
    if value is None:
        return None
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


# -- scores over cells -----------------------------------------------------------------------------------
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


def _mce(values: Values, method: str, by_corruption: Mapping[str, Sequence[CellId]], reference: str) -> Any:
    """mCE: mean over the corruptions with a defined CE (zero-reference rule) of corruption_error."""
    if not by_corruption:
        raise KeyError("no corruptions")
    return mean_defined([corruption_error([error(values[method][c]) for c in cells],
                                          [error(values[reference][c]) for c in cells])
                         for cells in by_corruption.values()])


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
                         lambda v, m, b=base, n=novel: harmonic_mean(_mean(v, m, b), _mean(v, m, n)), headline=True))
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
