"""The mixed protocol's scores: stream top-1, per-dataset top-1 and their macro mean, with paired intervals.

Rows in, plain dicts / markdown out. Resampling is stratified: each bootstrap resample draws every dataset's
images within that dataset (seeded by the images' identity), and every method of a view is scored on the same
resamples, so differences between methods are paired. References: the best static multi-expert merge (the
static method with the highest clean-stream macro top-1, chosen in hindsight on the test stream: an upper
reference for "one merge for everything") and the `oracle_route` ceiling (WiSE-FT of each image's own expert).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .stats import bootstrap_means, excludes_zero, percentile_interval, pool_seed, resample_weights

NAME = "mixed"
STATIC_KIND = "multi_static"
ORACLE = "oracle_route"


def is_mixed(row: dict) -> bool:
    return row.get("protocol") == NAME


def label(row: dict) -> str:
    """The method's name in tables; each expert alone is named by its dataset."""
    if row["method"] == "multi_expert":
        k = int((row.get("config_params") or {}).get("index", 0))
        return f"expert: {row['stream'][k]}"
    return row["method"]


def _kinds(row: dict) -> set[str]:
    kind = row.get("method_kind")
    return set(kind) if isinstance(kind, list) else {kind}


def _domain(row: dict) -> np.ndarray:
    d = row["domain"]
    return np.array([int(c) for c in d] if isinstance(d, str) else d, dtype=np.int64)


def _view_name(row: dict) -> str:
    return "clean" if not row.get("corruption") else f"{row['corruption']} (severity {row['severity']})"


def _draws(rows: list[dict], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream top-1 and macro top-1 of each row under shared stratified resamples: ([B, R], [B, R]), and the
    bootstrap weights' dataset index."""
    domain = _domain(rows[0])
    correct = np.array([[c == "1" for c in r["correct"]] for r in rows], dtype=np.float64)  # [R, N]
    weights = np.zeros((n_boot, domain.size))
    per_dataset = []
    for k in np.unique(domain):
        where = np.flatnonzero(domain == k)
        w = resample_weights(where.size, n_boot, pool_seed(seed, ("mixed", rows[0]["key_view"], int(k))))
        weights[:, where] = w
        per_dataset.append(bootstrap_means(correct[:, where], w))  # [B, R]
    return bootstrap_means(correct, weights), np.mean(per_dataset, axis=0), domain


def summarize_mixed(rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Per stream view: each method's scores with intervals, and paired Δ macro top-1 against the references."""
    rows = [r for r in rows if is_mixed(r)]
    views: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        views[_view_name(r)].append(r)
    clean = views.get("clean", [])
    static = [r for r in clean if STATIC_KIND in _kinds(r)]
    best_static = max(static, key=lambda r: r["macro_top1"])["method"] if static else None
    out: dict[str, Any] = {"views": {}, "best_static": best_static, "n_boot": n_boot, "level": level}
    for name, vrows in views.items():
        vrows = [dict(r, key_view=name) for r in vrows]
        stream, macro, _ = _draws(vrows, n_boot, seed)
        table = {}
        for i, r in enumerate(vrows):
            table[label(r)] = {
                "top1": percentile_interval(r["top1"], stream[:, i], level),
                "macro_top1": percentile_interval(r["macro_top1"], macro[:, i], level),
                "per_dataset_top1": r["per_dataset_top1"], "route_accuracy": r.get("route_accuracy"),
                "weights_mean": r.get("weights_mean"), "seconds": r.get("seconds"), "n": r["n"]}
        for ref_label, ref in (("best static", best_static), ("oracle", ORACLE)):
            j = next((i for i, r in enumerate(vrows) if r["method"] == ref), None)
            if j is None:
                continue
            for i, r in enumerate(vrows):
                point = r["macro_top1"] - vrows[j]["macro_top1"]
                p, low, high = percentile_interval(point, macro[:, i] - macro[:, j], level)
                table[label(r)][f"delta_macro_vs_{ref_label}"] = (p, low, high, excludes_zero(low, high))
        out["views"][name] = table
    corrupted = [v for v in out["views"] if v != "clean"]
    if corrupted:
        methods = dict.fromkeys(m for v in corrupted for m in out["views"][v])
        out["corrupted_mean_macro"] = {m: float(np.mean([out["views"][v][m]["macro_top1"][0] for v in corrupted
                                                         if m in out["views"][v]])) for m in methods}
    return out


def _fmt(score) -> str:
    return "–" if score is None else f"{score[0]:.1f} [{score[1]:.1f}, {score[2]:.1f}]"


def _delta(d) -> str:
    if d is None:
        return "–"
    return f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]" + (" *" if d[3] else "")


def render_mixed(summary: dict[str, Any], heading: str = "##") -> list[str]:
    """Markdown lines of the mixed-stream section."""
    if not summary or not summary.get("views"):
        return []
    out = [f"{heading} Mixed stream: one generalist, {{K}} experts, every test split interleaved", "",
           "Top-1 over the stream and macro top-1 (mean over datasets), with 95% intervals from resamples drawn "
           "within each dataset; Δ = paired difference in macro top-1 (* = interval excludes 0). Best static: "
           f"`{summary['best_static']}` (highest clean macro top-1 among the static merges, in hindsight); oracle: "
           "`oracle_route` (each image with its own dataset's expert: reads the dataset, a ceiling). route = share "
           "of images whose largest expert weight is their own dataset's expert.", ""]
    for view, table in summary["views"].items():
        datasets = list(next(iter(table.values()))["per_dataset_top1"])
        k = len(datasets)
        out[0] = out[0].replace("{K}", str(k))
        out += [f"{heading}# {view}", "",
                "| method | top-1 | macro top-1 | " + " | ".join(datasets) + " | Δ vs best static | Δ vs oracle | route |",
                "|---|---:|---:|" + "---:|" * k + "---:|---:|---:|"]
        for m, s in table.items():
            per = " | ".join(f"{s['per_dataset_top1'].get(d, float('nan')):.1f}" for d in datasets)
            route = "–" if s.get("route_accuracy") is None else f"{s['route_accuracy']:.0f}%"
            out.append(f"| {m} | {_fmt(s['top1'])} | {_fmt(s['macro_top1'])} | {per} | "
                       f"{_delta(s.get('delta_macro_vs_best static'))} | {_delta(s.get('delta_macro_vs_oracle'))} | "
                       f"{route} |")
        out.append("")
    if summary.get("corrupted_mean_macro"):
        out += [f"{heading}# Corrupted streams: mean macro top-1 over views", "", "| method | macro top-1 |",
                "|---|---:|"]
        out += [f"| {m} | {v:.1f} |" for m, v in summary["corrupted_mean_macro"].items()] + [""]
    return out


# -- several seeds ------------------------------------------------------------------------------------
def seeds_table(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method over runs (one summarize_mixed each): mean ± std of clean top-1 / macro top-1 and of the corrupted
    streams' mean macro top-1, mean Δ macro vs best static / oracle with how many runs' intervals exclude 0."""
    methods = list(dict.fromkeys(m for s in summaries for m in s["views"].get("clean", {})))
    out = {}
    for m in methods:
        clean = [s["views"]["clean"][m] for s in summaries if m in s["views"].get("clean", {})]
        row: dict[str, Any] = {"runs": len(clean)}
        for key in ("top1", "macro_top1"):
            values = [c[key][0] for c in clean]
            row[key] = (float(np.mean(values)), float(np.std(values)))
        corrupted = [s["corrupted_mean_macro"][m] for s in summaries if m in (s.get("corrupted_mean_macro") or {})]
        row["corrupted_macro"] = (float(np.mean(corrupted)), float(np.std(corrupted))) if corrupted else None
        for ref in ("best static", "oracle"):
            deltas = [c.get(f"delta_macro_vs_{ref}") for c in clean]
            deltas = [d for d in deltas if d is not None]
            # significant seeds counted by sign: a +5 and a −5 seed are not "significant in 2 of 2"
            row[f"delta_vs_{ref}"] = ((float(np.mean([d[0] for d in deltas])), float(np.std([d[0] for d in deltas])),
                                       sum(bool(d[3]) and d[0] > 0 for d in deltas),
                                       sum(bool(d[3]) and d[0] < 0 for d in deltas), len(deltas)) if deltas else None)
        routes = [c["route_accuracy"] for c in clean if c.get("route_accuracy") is not None]
        row["route_accuracy"] = float(np.mean(routes)) if routes else None
        out[m] = row
    return out


def render_seeds_table(table: dict[str, dict[str, Any]], best_static: Sequence[str | None]) -> str:
    def pm(v):
        return "–" if v is None else f"{v[0]:.1f} ± {v[1]:.1f}"

    def delta(v):
        return "–" if v is None else f"{v[0]:+.1f} ± {v[1]:.1f} [{v[2]}↑ {v[3]}↓ /{v[4]}]"

    lines = ["| method | clean top-1 | clean macro top-1 | corrupted macro top-1 | Δ macro vs best static | "
             "Δ macro vs oracle | route |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in table.items():
        route = "–" if r["route_accuracy"] is None else f"{r['route_accuracy']:.0f}%"
        lines.append(f"| {m} | {pm(r['top1'])} | {pm(r['macro_top1'])} | {pm(r['corrupted_macro'])} | "
                     f"{delta(r['delta_vs_best static'])} | {delta(r['delta_vs_oracle'])} | {route} |")
    return "\n".join(lines) + f"\n\nBest static merge per run (clean macro top-1, in hindsight): {list(best_static)}.\n"
