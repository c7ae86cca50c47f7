"""Several runs in one report: runs that differ only by seed become mean ± std; other differences become columns.

A run is one results.jsonl (a run dir, or each job below a Hydra sweep folder). Its *settings* are read
off its rows' cell identities (what the cell keys hash: seed, limit, engine, model specs, expert
datasets, protocols, calibration source and each method's configured parameters), so a run needs no
other file and two runs compare on what actually determined their numbers.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .results import read_rows
from .scores import averaged, cell_id, scores_for

# calibration_source / calibration_limit: the names of tuning_data / tuning_limit in rows written before them
SETTING_FIELDS = ("seed", "limit", "engine", "engine_options", "generalist", "expert", "expert_data", "protocol",
                  "tuning_data", "tuning_limit", "calibration_source", "calibration_limit", "zoo_profile")
# Per expert modality, the scores that say whether the premise holds (expert wins in-domain, generalist
# wins on novel modalities / classes and under corruption) and where the merges land.
PER_EXPERT = ("in_domain: top-1", "base_to_novel: modality novel mean", "base_to_novel: class HM",
              "corruption: mean corrupted", "corruption: mCE")


@dataclass
class Run:
    path: Path                     # the run's folder
    rows: list[dict]
    settings: dict[str, str] = field(default_factory=dict)


def run_settings(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Setting name -> its values in this run (sorted JSON), e.g. {"seed": "[0]", "t3.gamma": "[0.5]"}."""
    values: dict[str, set[str]] = {}
    for r in rows:
        for k in SETTING_FIELDS:
            if k in r:
                values.setdefault(k, set()).add(json.dumps(r[k], sort_keys=True))
        for k, v in (r.get("config_params") or {}).items():
            if k == "seed":  # DARE's drop seed follows the run's seed (method.seed: ${seed}): not a setting
                continue
            values.setdefault(f"{r['method']}.{k}", set()).add(json.dumps(v, sort_keys=True))
    return {k: v.pop() if len(v) == 1 else "[" + ", ".join(sorted(v)) + "]" for k, v in sorted(values.items())}


def load_runs(targets: Sequence[str | Path]) -> list[Run]:
    """Every results.jsonl in or below each target (like tcube.reporting.analysis.load_results), one Run each."""
    from .analysis import _result_files

    runs = []
    for target in targets:
        files = _result_files(Path(target))
        if not files:
            raise FileNotFoundError(f"no results.jsonl in or below {target}; pass run directories of tcube.eval "
                                    "(or a Hydra multirun folder)")
        for path in files:
            rows = read_rows(path)
            if rows:
                runs.append(Run(path.parent, rows, run_settings(rows)))
    if not runs:
        raise FileNotFoundError(f"the results.jsonl files under {list(map(str, targets))} hold no rows")
    return runs


def run_scores(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Score -> method -> value of one run: the headline scores averaged over its expert modalities, and
    the PER_EXPERT scores of each modality under `<expert> | <score>`."""
    points: dict[str, dict] = {}
    cells: dict[Any, list] = {}
    for r in rows:
        points.setdefault(r["method"], {})[cell_id(r)] = float(r["top1"])
        cells.setdefault(r.get("expert_data"), []).append(cell_id(r))
    per_expert = {e: scores_for(list(dict.fromkeys(c))) for e, c in cells.items()}
    named = [(s.key, s) for s in averaged(per_expert)]
    named += [(f"{e} | {s.key}", s) for e, scores in per_expert.items() for s in scores if s.key in PER_EXPERT]
    out = {}
    for key, s in named:
        values = {m: s(points, m) for m in methods}
        out[key] = {m: float(v) for m, v in values.items() if v is not None and math.isfinite(float(v))}
    return out


def group_runs(runs: Sequence[Run]) -> tuple[list[str], dict[tuple, list[Run]]]:
    """(the settings that differ between runs other than seed, runs grouped by their values of those)."""
    keys = sorted({k for r in runs for k in r.settings})
    differ = [k for k in keys if k != "seed" and len({r.settings.get(k) for r in runs}) > 1]
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple((k, r.settings.get(k)) for k in differ), []).append(r)
    return differ, groups


def aggregate(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, Any]:
    """Per group: each headline score's mean ± std (sample std, ddof = 1) over the group's runs, per method."""
    differ, groups = group_runs(runs)
    out = []
    for key, members in groups.items():
        per_run = [run_scores(r.rows, methods) for r in members]
        scores: dict[str, dict[str, dict]] = {}
        for name in dict.fromkeys(k for p in per_run for k in p):
            for m in methods:
                vals = [p[name][m] for p in per_run if m in p.get(name, {})]
                if vals:
                    scores.setdefault(name, {})[m] = {
                        "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                        "n": len(vals), "values": vals}
        label = ", ".join(f"{k}={v}" for k, v in key) or "all runs"
        out.append({"label": label, "settings": dict(key), "runs": [str(r.path) for r in members],
                    "seeds": [r.settings.get("seed") for r in members], "scores": scores})
    return {"differing": differ, "groups": out, "methods": list(methods)}


def _mean_std(v: Mapping[str, Any] | None) -> str:
    if not v:
        return "–"
    if v["std"] is None:
        return f"{v['mean']:.1f} (n=1)"
    return f"{v['mean']:.1f} ± {v['std']:.1f} (n={v['n']})"


def render_aggregate(agg: Mapping[str, Any]) -> str:
    """report.md of several runs: which runs form which group, then one table per headline score."""
    groups, methods = agg["groups"], agg["methods"]
    out = ["# tcube multi-run report", "",
           f"{sum(len(g['runs']) for g in groups)} runs in {len(groups)} group(s). Runs that differ only by seed "
           "form one group: entries are mean ± sample std over its runs (n = runs). Groups differ by: "
           + (", ".join(f"`{k}`" for k in agg["differing"]) or "nothing (seed only)") + ".", "",
           "## Runs", "", "| group | seeds | run dirs |", "|---|---|---|"]
    out += [f"| {g['label']} | {', '.join(map(str, g['seeds']))} | {'<br>'.join(g['runs'])} |" for g in groups]
    names = list(dict.fromkeys(n for g in groups for n in g["scores"]))
    experts = list(dict.fromkeys(n.split(" | ")[0] for n in names if " | " in n))
    names = [n for n in names if " | " not in n]
    out += ["", "## Headline scores (mean over expert modalities within each run)", ""]
    for name in names:
        lower = name.endswith("mCE")
        out += [f"### {name}" + (" (lower is better)" if lower else ""), "",
                "| method | " + " | ".join(g["label"] for g in groups) + " |",
                "|---|" + "---:|" * len(groups)]
        out += [f"| {m} | " + " | ".join(_mean_std(g["scores"].get(name, {}).get(m)) for g in groups) + " |"
                for m in methods if any(m in g["scores"].get(name, {}) for g in groups)]
        out.append("")
    if len(groups) == 1 and experts:  # one column per score; with several groups these would multiply
        scores = groups[0]["scores"]
        out += ["## Per expert modality", "",
                "Mean ± std over the runs of each expert's own scores (novel = the other modalities, "
                "base_to_novel split=modality; mCE: generalist = 100, lower is better).", ""]
        for expert in experts:
            cols = [s for s in PER_EXPERT if f"{expert} | {s}" in scores]
            out += [f"### {expert}", "", "| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
            out += [f"| {m} | " + " | ".join(_mean_std(scores[f"{expert} | {s}"].get(m)) for s in cols) + " |"
                    for m in methods if any(m in scores[f"{expert} | {s}"] for s in cols)]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
