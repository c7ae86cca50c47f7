"""Evaluation metrics: top-1, balanced accuracy, corruption errors (mCE), error reduction.

All accuracies and errors are in percent (0-100).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "top1",
    "balanced_accuracy",
    "error",
    "corruption_errors",
    "mce",
    "relative_corruption_errors",
    "relative_mce",
    "error_reduction",
    "harmonic_mean",
]


def _as_preds_labels(preds, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-index tensors; 2-D ``preds`` (logits or probabilities) are reduced with argmax."""
    p = torch.as_tensor(np.asarray(preds) if not torch.is_tensor(preds) else preds).detach().cpu()
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).detach().cpu()
    if p.ndim == 2:
        p = p.argmax(dim=1)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"preds must be (N,) class indices or (N, C) scores and labels (N,); got "
                         f"{tuple(p.shape)} and {tuple(y.shape)}")
    if p.numel() == 0:
        raise ValueError("cannot score an empty set of predictions")
    if p.numel() != y.numel():
        raise ValueError(f"{p.numel()} predictions for {y.numel()} labels; they must match one to one")
    if p.is_floating_point() or y.is_floating_point():
        if not (torch.equal(p, p.round()) and torch.equal(y, y.round())):
            raise ValueError("preds and labels must be integer class indices")
    return p.long(), y.long()


def top1(preds, labels) -> float:
    """Top-1 accuracy in percent."""
    p, y = _as_preds_labels(preds, labels)
    return float((p == y).double().mean() * 100.0)


def balanced_accuracy(preds, labels, num_classes: int) -> float:
    """Mean per-class recall in percent, over the classes present in ``labels``.

    Classes absent from ``labels`` have no recall and are left out (as in scikit-learn's
    ``balanced_accuracy_score``). torchmetrics' ``MulticlassAccuracy(average="macro")`` only drops
    classes absent from both preds and labels, so a class that is predicted but never true would
    count as recall 0; we take torchmetrics' per-class recall and average it over the supported
    classes ourselves.
    """
    from torchmetrics.functional.classification import multiclass_recall

    p, y = _as_preds_labels(preds, labels)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, t in (("labels", y), ("preds", p)):
        if t.min() < 0 or t.max() >= num_classes:
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}; got range {int(t.min())}..{int(t.max())}")
    recall = multiclass_recall(p, y, num_classes=num_classes, average="none")
    support = torch.bincount(y, minlength=num_classes) > 0
    return float(recall[support].double().mean() * 100.0)


def error(top1_percent: float) -> float:
    """Top-1 error in percent: 100 - top1."""
    if not 0.0 <= top1_percent <= 100.0:
        raise ValueError(f"top-1 must be a percentage in [0, 100], got {top1_percent}")
    return 100.0 - float(top1_percent)


def _validated(errors_method: Mapping[str, Sequence[float]], errors_ref: Mapping[str, Sequence[float]]):
    if not errors_method:
        raise ValueError("errors_method is empty: give {corruption: [error per severity]}")
    if set(errors_method) != set(errors_ref):
        raise ValueError(
            f"method and reference must cover the same corruptions; only in method: "
            f"{sorted(set(errors_method) - set(errors_ref))}, only in reference: "
            f"{sorted(set(errors_ref) - set(errors_method))}"
        )
    out = {}
    for c in sorted(errors_method):
        m = np.asarray(errors_method[c], dtype=np.float64).reshape(-1)
        r = np.asarray(errors_ref[c], dtype=np.float64).reshape(-1)
        if m.size == 0 or m.size != r.size:
            raise ValueError(f"corruption {c!r}: {m.size} method errors vs {r.size} reference errors; "
                             "give one error per severity for both, same severities")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
            raise ValueError(f"corruption {c!r}: errors must be finite")
        out[c] = (m, r)
    return out


def corruption_errors(errors_method, errors_ref) -> dict[str, float]:
    """Per corruption, CE = Σ_s err_method / Σ_s err_ref × 100 (reference = 100)."""
    ces = {}
    for c, (m, r) in _validated(errors_method, errors_ref).items():
        if r.sum() <= 0:
            raise ValueError(f"corruption {c!r}: the reference has zero error at every severity, so its "
                             "CE is undefined; drop this corruption or use another reference")
        ces[c] = float(m.sum() / r.sum() * 100.0)
    return ces


def mce(errors_method: Mapping[str, Sequence[float]], errors_ref: Mapping[str, Sequence[float]]) -> float:
    """Mean corruption error: mean over corruptions of Σ_s err_method / Σ_s err_ref × 100.

    With the generalist as reference, the generalist scores exactly 100; lower is better.
    """
    return float(np.mean(list(corruption_errors(errors_method, errors_ref).values())))


def relative_corruption_errors(errors_method, errors_ref, clean_method: float, clean_ref: float) -> dict[str, float]:
    """Per corruption, relative CE = Σ_s(err_s − err_clean) / Σ_s(ref_s − ref_clean) × 100.

    When the reference is not degraded by a corruption (denominator ≤ 0) its relative CE is
    undefined and is returned as NaN rather than a huge or sign-flipped number.
    """
    for name, v in (("clean_method", clean_method), ("clean_ref", clean_ref)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite error in percent, got {v}")
    out = {}
    for c, (m, r) in _validated(errors_method, errors_ref).items():
        den = float((r - clean_ref).sum())
        out[c] = float((m - clean_method).sum() / den * 100.0) if den > 0 else float("nan")
    return out


def relative_mce(errors_method, errors_ref, clean_method: float, clean_ref: float) -> float:
    """Relative mCE (Hendrycks & Dietterich 2019): mean of the defined relative CEs.

    Corruptions whose reference degradation is ≤ 0 (NaN relative CE) are left out of the mean;
    if none is defined the result is NaN.
    """
    vals = [v for v in relative_corruption_errors(errors_method, errors_ref, clean_method, clean_ref).values()
            if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def error_reduction(err_method: float, err_ref: float) -> float:
    """Relative error reduction in percent: (err_ref − err_method) / err_ref × 100."""
    if err_ref <= 0:
        raise ValueError(f"err_ref must be > 0 to measure a reduction relative to it, got {err_ref}")
    return float((err_ref - err_method) / err_ref * 100.0)


def harmonic_mean(base: float, novel: float) -> float:
    """Harmonic mean of base and novel accuracy (both ≥ 0); 0 when both are 0."""
    if base < 0 or novel < 0 or not (math.isfinite(base) and math.isfinite(novel)):
        raise ValueError(f"base and novel must be finite and non-negative, got {base}, {novel}")
    if base + novel == 0:
        return 0.0
    return float(2.0 * base * novel / (base + novel))
