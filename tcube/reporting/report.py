"""summary.json and report.md from result rows (pure functions: rows in, dict / markdown out).

Summaries per expert modality (`expert_data`), per method and protocol: mean top-1 (corruption: over
the corrupted cells; clean apart), mCE and relative mCE with the generalist as reference (= 100),
error reduction vs the generalist and vs the expert (on the protocol's mean top-1), and base / novel /
harmonic mean for base_to_novel. Runs with several experts also get a headline: the mean over
modalities of each protocol's score. Every score carries a bootstrap interval and paired differences
against WiSE-FT (α = 0.5), the expert and the generalist (tcube.reporting.uncertainty); the majority-class
baseline, temperature calibration, validation-chosen coefficients and routing diagnostics get small
tables of their own (tcube.reporting.tables). Every formula (and the zero-reference rule for ratios) is
tcube.reporting.scores'; point_summary (the numbers without intervals) is what the plots' tables read.

`python -m tcube.report RUN_DIR [RUN_DIR ...] [--out DIR]` merges runs (or Hydra sweep folders) into one
report: runs differing only by seed become mean ± std over seeds (tcube.reporting.aggregate).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import json_safe, write_text_atomic
from .mixed import is_mixed, render_mixed, summarize_mixed
from .readings import reading_header
from .results import method_order
from .scores import (
    corruption_error,
    defined,
    error,
    error_reduction,
    harmonic_mean,
    mean_defined,
    relative_corruption_error,
)
from .uncertainty import analyze

REFERENCES = ("generalist", "expert")
ZERO_REFERENCE_NOTE = ("undefined (–) where the reference's error, or its growth under a corruption, is below "
                       "1e-9 points (zero-reference rule, tcube.reporting.scores)")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _by(rows: Iterable[dict], *fields: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r.get(f) for f in fields)].append(r)
    return out


def _reductions(top: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
    """Error reduction of each method's top-1 against each reference's (scores.error_reduction)."""
    return {f"error_reduction_vs_{ref}": {m: None if v is None or top.get(ref) is None
                                          else defined(error_reduction(error(v), error(top[ref])))
                                          for m, v in top.items()}
            for ref in REFERENCES}


def _in_domain(rows: list[dict], methods: Sequence[str]) -> dict[str, Any]:
    by_m = _by(rows, "method")
    top = {m: _mean(r["top1"] for r in by_m.get((m,), [])) for m in methods}
    return {"top1": top, "balanced_acc": {m: _mean(r.get("balanced_acc") for r in by_m.get((m,), [])) for m in methods},
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
            part["hm"][m] = defined(harmonic_mean(base, novel)) if base is not None and novel is not None else None
            part["per_" + key][m] = {r[key]: r["top1"] for r in mrows}
        out[split] = part
    top = {m: _mean(r["top1"] for r in rows if r["method"] == m) for m in methods}
    return {"splits": out, "top1": top, **_reductions(top)}


def _corruption(rows: list[dict], methods: Sequence[str]) -> dict[str, Any]:
    clean = {m: _mean(r["top1"] for r in rows if r["method"] == m and not r.get("corruption")) for m in methods}
    corrupted = [r for r in rows if r.get("corruption")]
    errors: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in corrupted:
        errors[r["method"]][r["corruption"]][int(r["severity"])] = error(r["top1"])
    top = {m: _mean(r["top1"] for r in corrupted if r["method"] == m) for m in methods}
    per_corruption = {m: {c: _mean(100.0 - e for e in sev.values()) for c, sev in errors[m].items()}
                      for m in methods}
    ref = errors.get("generalist", {})
    out_mce, out_rel, ces, notes = {}, {}, {}, []
    for m in methods:
        mine = errors.get(m, {})
        common = sorted(c for c in mine if c in ref and set(mine[c]) == set(ref[c]))
        if not common:
            out_mce[m] = out_rel[m] = None
            continue
        em = {c: [mine[c][s] for s in sorted(mine[c])] for c in common}
        er = {c: [ref[c][s] for s in sorted(ref[c])] for c in common}
        ce = {c: corruption_error(em[c], er[c]) for c in common}
        ces[m] = {c: v for c, v in ce.items() if defined(v) is not None}
        if len(ces[m]) < len(common):
            notes.append(f"CE {ZERO_REFERENCE_NOTE}: the generalist makes no error under "
                         f"{sorted(set(common) - set(ces[m]))}")
        out_mce[m] = defined(mean_defined(list(ce.values())))
        out_rel[m] = None
        if clean.get(m) is not None and clean.get("generalist") is not None:
            rel = {c: relative_corruption_error(em[c], er[c], error(clean[m]), error(clean["generalist"]))
                   for c in common}
            out_rel[m] = defined(mean_defined(list(rel.values())))
            if any(defined(v) is None for v in rel.values()):
                notes.append(f"relative CE {ZERO_REFERENCE_NOTE}: the generalist is not degraded by "
                             f"{sorted(c for c, v in rel.items() if defined(v) is None)}")
    if not ref:
        notes.append("the generalist was not evaluated: mCE needs it as the reference (references: [generalist])")
    return {"clean_top1": clean, "top1": top, "top1_per_corruption": per_corruption, "mce": out_mce,
            "relative_mce": out_rel, "ce": ces, "notes": sorted(set(notes)), **_reductions(top)}


SUMMARIZERS = {"in_domain": _in_domain, "base_to_novel": _base_novel, "corruption": _corruption}


def _summarize_protocols(rows: Sequence[dict], methods: Sequence[str]) -> dict[str, Any]:
    return {protocol: SUMMARIZERS[protocol](prows, methods) for (protocol,), prows in _by(rows, "protocol").items()}


_PER_VIEW = {"per_dataset", "per_subset", "ce", "top1_per_corruption"}  # differ by expert: not averaged


def _mean_tree(trees: list[Any]) -> Any:
    """Average the numbers at the same place of several experts' summaries (views that differ are dropped)."""
    trees = [t for t in trees if t is not None]
    if not trees:
        return None
    if all(isinstance(t, dict) for t in trees):
        keys = dict.fromkeys(k for t in trees for k in t)
        return {k: _mean_tree([t.get(k) for t in trees]) for k in keys if k not in _PER_VIEW}
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in trees):
        return _mean(trees)
    if all(isinstance(t, list) for t in trees):
        return sorted({str(x) for t in trees for x in t})
    return trees[0]


def experts_in(rows: Sequence[dict]) -> list[str | None]:
    """The expert modalities (`expert_data`) in first-seen order; [None] for rows of older runs without it."""
    return list(dict.fromkeys(r.get("expert_data") for r in rows))


def point_summary(rows: Sequence[dict], methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The point scores of summary.json (no intervals, no side tables): cheap enough for every plot table.

    Per expert and protocol: the summaries listed in the module docstring; with several experts the top-level
    `protocols` / `top1` / `mce` / `harmonic_mean` are means over the expert modalities."""
    rows = [r for r in rows if not is_mixed(r)]  # the mixed stream has its own section (reporting.mixed)
    methods = list(methods) if methods is not None else method_order(rows)
    experts = experts_in(rows)
    per_expert = {str(e): _summarize_protocols([r for r in rows if r.get("expert_data") == e], methods)
                  for e in experts}
    protocols = (next(iter(per_expert.values())) if len(per_expert) == 1
                 else _mean_tree(list(per_expert.values())) or {})
    return {
        "methods": methods,
        "experts": [str(e) for e in experts],
        "top1": {p: s["top1"] for p, s in protocols.items()},
        "mce": protocols.get("corruption", {}).get("mce"),
        "harmonic_mean": {split: part["hm"] for split, part in
                          protocols.get("base_to_novel", {}).get("splits", {}).items()} or None,
        "protocols": protocols,
        "per_expert": per_expert,
    }


def summarize(rows: Sequence[dict], methods: Sequence[str], *, n_boot: int = 2000, seed: int = 0,
              ceiling: Sequence[dict] = ()) -> dict[str, Any]:
    """summary.json: point_summary, then every score's bootstrap interval and paired differences, and the
    calibration / coefficient / routing-diagnostics tables; the per-sample ceiling's table when `ceiling` holds
    the run's stored λ-grid views (tcube.reporting.ceiling.load_ceiling)."""
    from .ceiling import ceiling_table
    from .tables import calibration_table, coefficient_table, diagnostics_table

    mixed = [r for r in rows if is_mixed(r)]
    rows = [r for r in rows if not is_mixed(r)]
    out = {
        **point_summary(rows, methods),
        "uncertainty": analyze(rows, methods, n_boot=n_boot, seed=seed),
        "calibration": calibration_table(rows),
        "coefficients": coefficient_table(rows),
        "diagnostics": diagnostics_table(rows, methods),
    }
    if ceiling:
        out["ceiling"] = ceiling_table(rows, ceiling)
    if mixed:
        out["mixed"] = summarize_mixed(mixed, n_boot=n_boot, seed=seed)
    return out


# -- markdown --------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _ci(v: Sequence[float] | None) -> str:
    """`52.0 [47.1, 56.9]`; the point alone when no interval exists (rows without per-image bits)."""
    if v is None or v[0] is None or math.isnan(v[0]):
        return "–"
    if v[1] is None or math.isnan(v[1]):
        return f"{v[0]:.1f}"
    return f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]"


def _diff(v: Sequence[Any] | None) -> str:
    """`+2.1 [-0.4, 4.6]`, with `*` when the interval excludes 0."""
    if v is None or v[0] is None or math.isnan(v[0]):
        return "–"
    if v[1] is None or math.isnan(v[1]):
        return f"{v[0]:+.1f}"
    return f"{v[0]:+.1f} [{v[1]:.1f}, {v[2]:.1f}]" + ("*" if v[3] else "")


def _score_table(entries: Sequence[dict], methods: Sequence[str], extra: Sequence[tuple[str, Any]] = ()) -> str:
    """Methods × scores with intervals, then a majority-class row; `extra` = (header, method -> value) columns."""
    body = [[m] + [_ci(e["values"].get(m)) for e in entries] + [_fmt(f(m), 3 if h == "mean λ" else 1) for h, f in extra]
            for m in methods]
    if any(e.get("majority") is not None for e in entries):
        body.append(["*majority class*"] + [_fmt(e.get("majority")) for e in entries] + ["–"] * len(extra))
    return _table(["method"] + [e["name"] for e in entries] + [h for h, _ in extra], body)


def _diff_tables(entries: Sequence[dict], methods: Sequence[str], h: str) -> list[str]:
    entries = [e for e in entries if e["headline"]]
    if not entries:
        return []
    out = [f"{h} Paired differences (points; 95% paired bootstrap; * = interval excludes 0)", ""]
    for label in dict.fromkeys(k for e in entries for k in e["diffs"]):
        body = [[m] + [_diff(e["diffs"].get(label, {}).get(m)) for e in entries]
                for m in methods if any(m in e["diffs"].get(label, {}) for e in entries)]
        if body:
            out += [f"vs {label}:", "", _table(["method"] + [e["name"] for e in entries], body), ""]
    if any(e["lower_is_better"] for e in entries):
        out += ["(mCE: lower is better, so a negative difference is an improvement.)", ""]
    return out


def _side_tables(summary: dict[str, Any], expert: str, h: str) -> list[str]:
    out = []
    cal = [c for c in summary.get("calibration") or [] if str(c["expert_data"]) == expert]
    if cal:
        out += [f"{h} Temperature scaling (fitted on val; ECE in percent, 15 bins)", "",
                _table(["view", "model", "T", "ECE val before", "ECE val after", "ECE test before", "ECE test after"],
                       [[f"{c['dataset']}/{c['subset']}", c["model"], _fmt(c["temperature"], 2), c["ece_val_before"],
                         c["ece_val_after"], c["ece_test_before"], c["ece_test_after"]] for c in cal]), ""]
    coef = [c for c in summary.get("coefficients") or [] if str(c["expert_data"]) == expert]
    if coef:
        keys = list(dict.fromkeys(k for c in coef for k in c["params"]))
        out += [f"{h} Coefficients chosen on validation data", "",
                _table(["view", "method"] + keys,
                       [[f"{c['dataset']}/{c['subset']}", c["method"]] + [_fmt(c["params"].get(k), 3) for k in keys]
                        for c in coef]), ""]
    out += _diagnostics(summary, [expert], h)
    out += _ceiling(summary, expert, h)
    return out


def _ceiling(summary: dict[str, Any], expert: str, h: str) -> list[str]:
    entries = [e for e in summary.get("ceiling") or [] if str(e["expert_data"]) == expert]
    if not entries:
        return []
    methods = list(dict.fromkeys(m for e in entries for m in e["methods"]))
    return [f"{h} Per-sample ceiling ({len(entries[0]['grid'])}-point λ grid; λ = weight on the generalist)", "",
            ("Top-1 of the static merge at each grid λ, on each view's own test images. best static = the best "
             "single λ in hindsight (chosen on test labels); oracle = an image counts if any grid λ classifies it "
             "(the ceiling of every per-sample λ rule); rec. = share of the gap from best static to oracle a method "
             "recovers, in percent (negative: below the best static merge; – where the gap is 0). Views weigh "
             "the same, as in the tables above."), "",
            _table(["protocol", "view", "cells", "expert", "generalist", "best static λ", "best static", "oracle"]
                   + [h2 for m in methods for h2 in (m, f"rec. {m}")],
                   [[e["protocol"], e["view"], e["cells"], e["expert"], e["generalist"], _fmt(e["static_lambda"], 2),
                     e["static"], e["oracle"]]
                    + [v for m in methods for v in (e["methods"].get(m, {}).get("top1"),
                                                    e["methods"].get(m, {}).get("recovered"))]
                    for e in entries]), ""]


def _diagnostics(summary: dict[str, Any], experts: Sequence[str], h: str) -> list[str]:
    diag = [d for d in summary.get("diagnostics") or [] if str(d["expert_data"]) in experts]
    if not diag:
        return []
    lam = list(dict.fromkeys(m for d in diag for m in d["spearman_lambda_expert_error"]))
    return [f"{h} Routing diagnostics (mean over each protocol's evaluation sets)", "",
            ("ρ = Spearman correlation with the expert's 0/1 error; AUROC of JS for finding the samples where the "
             "generalist is right and the expert wrong (0.5 = chance)."), "",
            _table(["protocol", "eval sets", "gen right, exp wrong (%)", "ρ(JS)", "AUROC(JS)"] + [f"ρ(λ {m})" for m in lam],
                   [[d["protocol"], d["eval_sets"], None if d["rescuable_fraction"] is None else 100 * d["rescuable_fraction"],
                     _fmt(d["spearman_js_expert_error"], 2), _fmt(d["auroc_js_gen_right_exp_wrong"], 2)]
                    + [_fmt(d["spearman_lambda_expert_error"].get(m), 2) for m in lam] for d in diag]), ""]


def modality_note(meta: dict[str, Any]) -> str | None:
    """What split=modality measures, from what the run knows: `meta["generalist_datasets"]` (the datasets the
    zoo manifest says the generalist was trained on). Absent -> no claim."""
    seen = meta.get("generalist_datasets")
    if not seen:
        return None
    seen = [seen] if isinstance(seen, str) else list(seen)
    return (f"The generalist was trained on {', '.join(map(str, seen))} (zoo manifest). On those datasets "
            "split=modality measures how much the expert (and each merge) forgot relative to the generalist, not "
            "zero-shot transfer to unseen modalities.")


def _expert_sections(summary: dict[str, Any], rows: Sequence[dict], expert: str, h: str,
                     meta: dict[str, Any]) -> list[str]:
    """The protocol tables of one expert modality; `h` is the heading level of each table."""
    methods = summary["methods"]
    entries = summary["uncertainty"]["experts"].get(expert, [])
    protocols = summary["per_expert"].get(expert, {})
    rows = [r for r in rows if str(r.get("expert_data")) == expert]

    def of(protocol: str, prefix: str = "") -> list[dict]:
        return [e for e in entries if e["protocol"] == protocol and e["name"].startswith(prefix)]

    out = []
    if "in_domain" in protocols:
        s = protocols["in_domain"]
        dataset = next((r["dataset"] for r in rows if r["protocol"] == "in_domain"), "")
        out += [f"{h} in_domain ({dataset}, test)", "",
                _score_table(of("in_domain"), methods,
                             [("balanced acc", s["balanced_acc"].get), ("mean λ", s["lambda_mean"].get),
                              ("ER vs generalist", s["error_reduction_vs_generalist"].get),
                              ("ER vs expert", s["error_reduction_vs_expert"].get)]), ""]
    if of("base_to_novel", "modality"):
        note = modality_note(meta)
        out += [f"{h} base_to_novel, split=modality", "", _score_table(of("base_to_novel", "modality"), methods),
                ""] + ([f"> {note}", ""] if note else [])
    if of("base_to_novel", "class"):
        out += [f"{h} base_to_novel, split=class (generalist + base-class expert)", "",
                _score_table(of("base_to_novel", "class"), methods), ""]
    if "corruption" in protocols:
        s = protocols["corruption"]
        dataset = next((r["dataset"] for r in rows if r["protocol"] == "corruption"), "")
        top = [e for e in of("corruption") if e["name"] != "mCE"]
        out += [f"{h} corruption ({dataset}, top-1, mean over severities)", "",
                f"Corruption {reading_header(r for r in rows if r['protocol'] == 'corruption')}.", "",
                _score_table(top, methods), "",
                f"{h}# mCE (generalist = 100; lower is better)", "",
                _score_table([e for e in of("corruption") if e["name"] == "mCE"], methods,
                             [("relative mCE", s["relative_mce"].get),
                              ("ER vs generalist", s["error_reduction_vs_generalist"].get),
                              ("ER vs expert", s["error_reduction_vs_expert"].get)]), ""]
        out += [f"- note: {n}" for n in s["notes"]] + ([""] if s["notes"] else [])
    out += _diff_tables(entries, methods, h)
    out += _side_tables(summary, expert, h)
    return out


def render_report(summary: dict[str, Any], rows: Sequence[dict], meta: dict[str, Any]) -> str:
    """report.md: a headline over modalities (several experts), then per expert one table per protocol with
    intervals and a majority-class row, paired differences, calibration, coefficients and diagnostics.

    `meta` is listed at the top (key: value). Keys read beyond that:
    - `generalist_datasets` (list of dataset names, from the zoo manifest's training datasets of the
      generalist): the split=modality note says what the generalist saw; absent -> no note (no claim).
    """
    methods = summary["methods"]
    unc = summary["uncertainty"]
    rows = [r for r in rows if not is_mixed(r)]
    out = ["# tcube evaluation report", ""]
    out += [f"- {k}: `{v}`" for k, v in meta.items() if k != "generalist_datasets"]
    out += ["", (f"Top-1 accuracy in percent with its {unc['level']:.0%} bootstrap interval [low, high] over test "
                 f"images ({unc['n_boot']} seeded resamples, the same for every method, so differences are paired); "
                 "error reductions (ER) in percent of the reference's error; – = undefined or not evaluated. "
                 "*majority class* = always predicting the test set's most frequent label."), ""]
    experts = summary.get("experts") or [str(e) for e in unc["experts"]]
    if not rows:
        experts = []
    if len(experts) > 1:
        out += [f"## Headline: mean over {len(experts)} expert modalities ({', '.join(experts)})", "",
                "Each protocol's score averaged over the modalities; intervals resample within each dataset.", "",
                _score_table(unc["headline"], methods), ""]
        out += _diff_tables(unc["headline"], methods, "###")
        out += _diagnostics(summary, ["all modalities"], "###")
        for expert in experts:
            out += [f"## Expert: {expert}", ""] + _expert_sections(summary, rows, expert, "###", meta)
    elif experts:
        out += _expert_sections(summary, rows, experts[0], "##", meta)
    out += render_mixed(summary.get("mixed") or {})
    skipped = summary.get("skipped") or []
    if skipped:
        out += ["", "## Skipped", ""] + [f"- {s['protocol']} {s['what']}: {s['reason']}" for s in skipped]
    return "\n".join(out).rstrip() + "\n"


# -- CLI: python -m tcube.report RUN_DIR [RUN_DIR ...] [--out DIR] ----------------------------------
def _default_out(targets: Sequence[str]) -> Path:
    """One target: itself (a run dir gets its report rewritten, a sweep folder gets the merged one);
    several: their common parent folder."""
    if len(targets) == 1:
        target = Path(targets[0])
        return target.parent if target.is_file() else target  # a results.jsonl given directly: its folder
    return Path(os.path.commonpath([os.path.abspath(t) for t in targets]))


def main(argv: list[str] | None = None) -> int:
    """Merge runs into one report.md + summary.json; returns the exit code (2 = nothing to report)."""
    from .aggregate import aggregate, load_runs, render_aggregate

    parser = argparse.ArgumentParser(prog="python -m tcube.report", description=(
        "Merge tcube.eval runs (run dirs or Hydra multirun folders) into one report.md and summary.json. "
        "One run: its full report. Several: mean ± std over runs that differ only by seed, one column per "
        "other difference."))
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", help="folder for report.md and summary.json (default: the one RUN_DIR, or "
                                      "the common parent of several)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.run_dirs)
    except FileNotFoundError as err:
        print(f"tcube.report: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else _default_out(args.run_dirs)
    if len(runs) == 1:
        from .ceiling import load_ceiling

        rows = runs[0].rows
        summary = summarize(rows, method_order(rows), ceiling=load_ceiling(runs[0].path))
        text = render_report(summary, rows, {"run_dir": str(runs[0].path), "cells": len(rows)})
    else:
        summary = aggregate(runs, method_order([r for run in runs for r in run.rows]))
        text = render_aggregate(summary)
    write_text_atomic(out / "summary.json", json.dumps(json_safe(summary), indent=2, default=str))
    write_text_atomic(out / "report.md", text)
    print(f"tcube.report: {len(runs)} run(s) -> {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
