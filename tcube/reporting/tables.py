"""The small side tables of a report, gathered from result rows (pure functions: rows in, lists of dicts out).

- calibration: each model's fitted temperature and its ECE before/after scaling, on the validation split
  it was fitted on and on the test cells (the honest number), per clean evaluated view;
- coefficients: what the validation-tuned methods (kind `tuned`, e.g. t3_cal) chose, per clean view;
- diagnostics: per expert modality and protocol, how well JS (and each per-sample method's λ) tracks the
  expert's errors, averaged over the protocol's evaluation sets (each row carries its own set's values).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .results import PER_SAMPLE, TUNED, method_kinds, methods_of_kind


def _clean_views(rows: Sequence[Mapping[str, Any]], keep) -> dict[tuple, Mapping[str, Any]]:
    """First row per (expert, dataset, subset, method) among clean cells that `keep` accepts."""
    out: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        if r.get("corruption") or not keep(r):
            continue
        out.setdefault((r.get("expert_data"), r.get("dataset"), r.get("subset"), r.get("method")), r)
    return out


def calibration_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple] = set()
    out = []
    for (expert, dataset, subset, _), r in _clean_views(rows, lambda r: bool((r.get("calibration") or {})
                                                                                 .get("ece"))).items():
        if (expert, dataset, subset) in seen:
            continue  # every calibrated method of a view shares the same fit
        seen.add((expert, dataset, subset))
        ece = r["calibration"]["ece"]
        for model in ("generalist", "expert"):
            out.append({"expert_data": expert, "dataset": dataset, "subset": subset, "model": model,
                        "temperature": ece.get("val", {}).get(f"temperature_{model}"),
                        **{f"ece_{split}_{when}": ece.get(split, {}).get(f"ece_{model}_{when}")
                           for split in ("val", "test") for when in ("before", "after")}})
    return out


def coefficient_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"expert_data": e, "dataset": d, "subset": s, "method": m, "params": dict(r.get("params") or {})}
            for (e, d, s, m), r in _clean_views(rows, lambda r: TUNED in method_kinds(r)).items()]


def _nanmean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


def diagnostics_table(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Per (expert modality, protocol), and per protocol over all modalities when there are several: the routing
    diagnostics (tcube.reporting.diagnostics, one set per row) averaged over the protocol's evaluation sets.
    The one definition of these numbers: report.md, summary.json and plots.routing_table all read it."""
    per_sample = set(methods_of_kind(rows, PER_SAMPLE))
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    experts = list(dict.fromkeys(r.get("expert_data") for r in rows))
    for r in rows:
        if r.get("diagnostics"):
            groups[(r.get("expert_data"), r["protocol"])].append(r)
            if len(experts) > 1:
                groups[("all modalities", r["protocol"])].append(r)
    out = []
    for (expert, protocol), grows in groups.items():
        # JS does not depend on the method (except with calibrate_temperature): read it off the generalist's rows
        js_rows = [r["diagnostics"] for r in grows if r["method"] == "generalist"]
        entry = {"expert_data": expert, "protocol": protocol, "eval_sets": len(js_rows),
                 **{k: _nanmean(d.get(k) for d in js_rows)
                    for k in ("rescuable_fraction", "spearman_js_expert_error", "auroc_js_gen_right_exp_wrong")},
                 "spearman_lambda_expert_error": {
                     m: _nanmean(r["diagnostics"].get("spearman_lambda_expert_error") for r in grows if r["method"] == m)
                     for m in methods if m in per_sample}}
        out.append(entry)
    return out
