"""summary.json and report.md from result rows (pure functions: rows in, dict / markdown out).

Summaries per method and protocol: mean top-1 (corruption: over the corrupted cells; clean apart),
mCE and relative mCE with the generalist as reference (= 100), error reduction vs the generalist and
vs the expert (on the protocol's mean top-1), and base / novel / harmonic mean for base_to_novel.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from .metrics import error_reduction, harmonic_mean, mce, relative_mce

REFERENCES = ("generalist", "expert")
FORGETTING_NOTE = (
    "With the tcube zoo pair the generalist was trained on every modality, so split=modality measures how "
    "much of the novel modalities the expert (and each merge) forgot relative to the generalist, not "
    "zero-shot transfer to unseen modalities."
)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _by(rows: Iterable[dict], *fields: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r.get(f) for f in fields)].append(r)
    return out


def _reduction(err: float | None, ref: float | None) -> float | None:
    if err is None or ref is None or ref <= 0:
        return None  # undefined when the reference makes no error
    return error_reduction(err, ref)


def _reductions(top: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
    err = {m: None if v is None else 100.0 - v for m, v in top.items()}
    return {f"error_reduction_vs_{ref}": {m: _reduction(e, err.get(ref)) for m, e in err.items()}
            for ref in REFERENCES}


def _in_domain(rows: list[dict], methods: Sequence[str]) -> dict[str, Any]:
    by_m = _by(rows, "method")
    top = {m: _mean(r["top1"] for r in by_m.get((m,), [])) for m in methods}
    return {"top1": top, "balanced_acc": {m: _mean(r["balanced_acc"] for r in by_m.get((m,), [])) for m in methods},
            "lambda_mean": {m: _mean(r.get("lambda_mean") for r in by_m.get((m,), [])) for m in methods},
            **_reductions(top)}


def _base_novel(rows: list[dict], methods: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (split,), srows in sorted(_by(rows, "split").items(), key=lambda kv: str(kv[0])):
        key = "dataset" if split == "modality" else "subset"
        part: dict[str, Any] = {"base": {}, "novel": {}, "hm": {}, "per_" + key: {}}
        for m in methods:
            mrows = [r for r in srows if r["method"] == m]
            base = _mean(r["top1"] for r in mrows if r.get("role") == "base")
            novel = _mean(r["top1"] for r in mrows if r.get("role") == "novel")
            part["base"][m], part["novel"][m] = base, novel
            part["hm"][m] = harmonic_mean(base, novel) if base is not None and novel is not None else None
            part["per_" + key][m] = {r[key]: r["top1"] for r in mrows}
        out[split] = part
    top = {m: _mean(r["top1"] for r in rows if r["method"] == m) for m in methods}
    return {"splits": out, "top1": top, **_reductions(top)}


def _corruption(rows: list[dict], methods: Sequence[str]) -> dict[str, Any]:
    clean = {m: _mean(r["top1"] for r in rows if r["method"] == m and not r.get("corruption")) for m in methods}
    corrupted = [r for r in rows if r.get("corruption")]
    errors: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in corrupted:
        errors[r["method"]][r["corruption"]][int(r["severity"])] = 100.0 - r["top1"]
    top = {m: _mean(r["top1"] for r in corrupted if r["method"] == m) for m in methods}
    per_corruption = {m: {c: _mean(100.0 - e for e in sev.values()) for c, sev in errors[m].items()}
                      for m in methods}
    ref = errors.get("generalist", {})
    out_mce, out_rel, ces, notes = {}, {}, {}, []
    for m in methods:
        mine = errors.get(m, {})
        common = [c for c in mine if c in ref and set(mine[c]) == set(ref[c])]
        if not common:
            out_mce[m] = out_rel[m] = None
            continue
        em = {c: [mine[c][s] for s in sorted(mine[c])] for c in common}
        er = {c: [ref[c][s] for s in sorted(ref[c])] for c in common}
        defined = [c for c in common if sum(er[c]) > 0]
        if len(defined) < len(common):
            notes.append(f"{m}: CE undefined where the generalist makes no error ({sorted(set(common) - set(defined))})")
        out_mce[m] = mce({c: em[c] for c in defined}, {c: er[c] for c in defined}) if defined else None
        ces[m] = {c: sum(em[c]) / sum(er[c]) * 100.0 for c in defined}
        if clean.get(m) is not None and clean.get("generalist") is not None and defined:
            rel = relative_mce({c: em[c] for c in defined}, {c: er[c] for c in defined},
                               100.0 - clean[m], 100.0 - clean["generalist"])
            out_rel[m] = None if math.isnan(rel) else rel
        else:
            out_rel[m] = None
    if not ref:
        notes.append("the generalist was not evaluated: mCE needs it as the reference (references: [generalist])")
    return {"clean_top1": clean, "top1": top, "top1_per_corruption": per_corruption, "mce": out_mce,
            "relative_mce": out_rel, "ce": ces, "notes": sorted(set(notes)), **_reductions(top)}


SUMMARIZERS = {"in_domain": _in_domain, "base_to_novel": _base_novel, "corruption": _corruption}


def summarize(rows: Sequence[dict], methods: Sequence[str]) -> dict[str, Any]:
    """Per protocol present in `rows`: the summaries listed in the module docstring."""
    protocols = {}
    for (protocol,), prows in _by(rows, "protocol").items():
        protocols[protocol] = SUMMARIZERS[protocol](prows, methods)
    return {
        "methods": list(methods),
        "top1": {p: s["top1"] for p, s in protocols.items()},
        "mce": protocols.get("corruption", {}).get("mce"),
        "harmonic_mean": {split: part["hm"] for split, part in
                          protocols.get("base_to_novel", {}).get("splits", {}).items()} or None,
        "protocols": protocols,
    }


# -- markdown --------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_report(summary: dict[str, Any], rows: Sequence[dict], meta: dict[str, Any]) -> str:
    """report.md: one section per protocol (methods × datasets), mCE table, base/novel/HM tables."""
    methods = summary["methods"]
    out = ["# tcube evaluation report", ""]
    out += [f"- {k}: `{v}`" for k, v in meta.items()]
    out += ["", "Top-1 accuracy in percent (balanced accuracy in results.jsonl); error reductions (ER) in percent "
            "of the reference's error; – = undefined or not evaluated.", ""]
    protocols = summary["protocols"]
    if "in_domain" in protocols:
        s = protocols["in_domain"]
        dataset = next((r["dataset"] for r in rows if r["protocol"] == "in_domain"), "")
        out += [f"## in_domain ({dataset}, test)", "",
                _table(["method", f"{dataset} top-1", "balanced acc", "mean λ", "ER vs generalist", "ER vs expert"],
                       [[m, s["top1"][m], s["balanced_acc"][m], s["lambda_mean"][m],
                         s["error_reduction_vs_generalist"][m], s["error_reduction_vs_expert"][m]] for m in methods]),
                ""]
    if "base_to_novel" in protocols:
        splits = protocols["base_to_novel"]["splits"]
        if "modality" in splits:
            part = splits["modality"]
            b2n = [r for r in rows if r["protocol"] == "base_to_novel" and r.get("split") == "modality"]
            base = [r["dataset"] for r in b2n if r.get("role") == "base"][:1]
            novel = sorted({r["dataset"] for r in b2n if r.get("role") == "novel"})
            out += ["## base_to_novel, split=modality", "",
                    _table(["method"] + [f"base: {d}" for d in base] + [f"novel: {d}" for d in novel]
                           + ["novel mean", "HM"],
                           [[m] + [part["per_dataset"][m].get(d) for d in base + novel] + [part["novel"][m], part["hm"][m]]
                            for m in methods]),
                    "", f"> {FORGETTING_NOTE}", ""]
        if "class" in splits:
            part = splits["class"]
            out += ["## base_to_novel, split=class (generalist + base-class expert)", "",
                    _table(["method", "base classes", "novel classes", "HM"],
                           [[m, part["base"][m], part["novel"][m], part["hm"][m]] for m in methods]), ""]
    if "corruption" in protocols:
        s = protocols["corruption"]
        corrs = sorted({r["corruption"] for r in rows if r["protocol"] == "corruption" and r.get("corruption")})
        dataset = next((r["dataset"] for r in rows if r["protocol"] == "corruption"), "")
        out += [f"## corruption ({dataset}, mean over severities)", "",
                _table(["method", "clean"] + corrs + ["mean corrupted"],
                       [[m, s["clean_top1"][m]] + [s["top1_per_corruption"][m].get(c) for c in corrs] + [s["top1"][m]]
                        for m in methods]),
                "", "### mCE (generalist = 100; lower is better)", "",
                _table(["method", "mCE", "relative mCE", "ER vs generalist", "ER vs expert"],
                       [[m, s["mce"][m], s["relative_mce"][m], s["error_reduction_vs_generalist"][m],
                         s["error_reduction_vs_expert"][m]] for m in methods]), ""]
        out += [f"- note: {n}" for n in s["notes"]]
    skipped = summary.get("skipped") or []
    if skipped:
        out += ["", "## Skipped", ""] + [f"- {s['protocol']} {s['what']}: {s['reason']}" for s in skipped]
    return "\n".join(out).rstrip() + "\n"
