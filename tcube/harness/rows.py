"""The row builder: one results.jsonl row's metrics from a cell's predictions, λ, JS and endpoints."""
from __future__ import annotations

from typing import Any

import torch

from ..core.temperature import temperature_report
from ..io import json_safe
from ..methods.merger import Merger
from ..methods.registry import Kind, effective
from ..protocols.base import Variant
from ..reporting.diagnostics import routing_diagnostics
from ..reporting.scores import balanced_accuracy, top1


def cell_metrics(variant: Variant, *, preds: torch.Tensor, lam: torch.Tensor, js: torch.Tensor,
                 labels: torch.Tensor, gen: torch.Tensor, exp: torch.Tensor, majority: float, used: dict,
                 seconds: float, endpoint_seconds: float, shared_with: str | None, cache_hit: bool,
                 tuning: dict | None, merger: Merger, fingerprints: tuple[str, str]) -> dict[str, Any]:
    """Scores, per-image fields and provenance of one cell (`tuning`: the tuning view's fields, or None)."""
    n_classes = gen.shape[1]
    gen_ok, exp_ok = (gen.argmax(-1) == labels).numpy(), (exp.argmax(-1) == labels).numpy()
    finite = lam[torch.isfinite(lam)]
    adaptive = effective(variant.method).kind in (Kind.PER_SAMPLE, Kind.PER_BATCH)
    return {
        "n": int(labels.numel()), "num_classes": int(n_classes),
        "top1": top1(preds, labels), "balanced_acc": balanced_accuracy(preds, labels, n_classes),
        "lambda_mean": float(finite.mean()) if finite.numel() else None,
        "lambda_std": float(finite.std(unbiased=False)) if finite.numel() else None,
        "js_mean": float(js.mean()),
        "majority_top1": majority,
        "diagnostics": routing_diagnostics(js.numpy(), lam.numpy(), gen_ok, exp_ok),
        "seconds": seconds, "endpoint_seconds": endpoint_seconds,
        "same_weights_as": shared_with,  # a method merging to bit-identical weights ran the pass
        "cached_endpoints": cache_hit,
        "params": json_safe(used),
        "calibration": ({"dataset": tuning["dataset"], "split": "val", "classes": tuning["classes"],
                         **{k: json_safe(getattr(merger, k)) for k in ("temperatures",)
                            if getattr(merger, k, None) is not None},
                         "ece": _ece(merger, gen, exp, labels)}
                        if variant.needs_tuning else None),
        "fingerprints": list(fingerprints),
        "correct": "".join("1" if c else "0" for c in (preds == labels).tolist()),
        # per image, so reports can bootstrap and diagnose after the fact (reporting.stats, reporting.diagnostics)
        "labels": _compact_labels(labels, n_classes),
        "js_per_image": [round(v, 6) for v in js.tolist()],
        "lambda_per_image": [round(v, 6) for v in lam.tolist()] if adaptive else None,
        # so readers of results need no tcube.methods; a tuned method also names how it predicts
        "method_kind": ([variant.kind.value, effective(variant.method).kind.value]
                        if variant.kind is Kind.TUNED else variant.kind.value),
    }


def _compact_labels(labels: torch.Tensor, n_classes: int) -> str | list[int]:
    """One digit per image when the classes fit in digits (as compact as `correct`), else a list."""
    values = labels.tolist()
    return "".join(map(str, values)) if n_classes <= 10 else values


def _ece(merger: Merger, gen: torch.Tensor, exp: torch.Tensor, labels: torch.Tensor) -> dict[str, Any] | None:
    """ECE before/after temperature scaling: on val (where T was fitted) and on this eval set's test images."""
    if merger.temperatures is None:
        return None
    temps = dict(zip(("generalist", "expert"), merger.temperatures))
    return {"val": json_safe(merger.temperature_report),
            "test": temperature_report({"generalist": gen, "expert": exp}, labels, temps)}
