"""Synthetic result rows in the shape tcube.eval writes (per-image bits included), for report tests."""
from __future__ import annotations

import numpy as np

METHODS = ("generalist", "expert", "wise_ft", "t3", "t3_cal")
SKILL = {"generalist": 0.55, "expert": 0.70, "wise_ft": 0.72, "t3": 0.74, "t3_cal": 0.75}


def _bits(rng: np.random.Generator, p: float, n: int) -> str:
    return "".join("1" if x else "0" for x in rng.random(n) < p)


def _row(expert, protocol, dataset, method, correct, *, seed=0, corruption=None, severity=0, split=None, role=None,
         gamma=0.5):
    top1 = 100.0 * correct.count("1") / len(correct)
    params = {"alpha": 0.5} if method == "wise_ft" else {"gamma": gamma} if method == "t3" else {}
    if method == "t3_cal":
        params = {"gamma": 2.0, "lambda_min": 0.25, "lambda_max": 0.75, "tau": 0.0}
    row = {"expert_data": expert, "protocol": protocol, "split": split, "role": role, "modality": "m", "dataset": dataset,
               "subset": "all", "corruption": corruption, "severity": severity, "method": method, "engine": "fused", "n": len(correct),
               "top1": top1, "balanced_acc": top1, "lambda_mean": 0.5, "lambda_std": 0.0, "js_mean": 0.1, "seed": seed,
               "config_params": {"gamma": gamma} if method == "t3" else {}, "params": params, "correct": correct,
               "majority_top1": 60.0, "key": f"{seed}-{expert}-{protocol}-{dataset}-{corruption}-{severity}-{method}-{gamma}",
               "diagnostics": {"n": len(correct), "rescuable_fraction": 0.1, "spearman_js_expert_error": 0.3,
                            "auroc_js_gen_right_exp_wrong": 0.7,
                            "spearman_lambda_expert_error": 0.3 if method in ("t3", "t3_cal") else None}}
    if method == "t3_cal":
        row["calibration"] = {"dataset": dataset, "split": "val", "temperatures": [1.5, 2.0],
                              "ece": {"val": {"temperature_generalist": 1.5, "temperature_expert": 2.0,
                                              "ece_generalist_before": 9.0, "ece_generalist_after": 3.0,
                                              "ece_expert_before": 12.0, "ece_expert_after": 4.0},
                                      "test": {"ece_generalist_before": 10.0, "ece_generalist_after": 5.0,
                                               "ece_expert_before": 13.0, "ece_expert_after": 6.0}}}
    return row


def synthetic_rows(experts=("retinamnist", "pneumoniamnist"), *, seed: int = 0, n: int = 200, gamma: float = 0.5,
                   methods=METHODS) -> list[dict]:
    """in_domain, base_to_novel (modality) and corruption cells per expert, methods of increasing skill."""
    rng = np.random.default_rng(seed)
    rows = []
    for expert in experts:
        others = [e for e in experts if e != expert] or ["novelset"]
        views = [("in_domain", expert, {}), ("base_to_novel", expert, {"split": "modality", "role": "base"})]
        views += [("base_to_novel", o, {"split": "modality", "role": "novel"}) for o in others]
        views += [("corruption", expert, {})]
        views += [("corruption", expert, {"corruption": c, "severity": s}) for c in ("blur", "noise") for s in (1, 3)]
        for protocol, dataset, kw in views:
            drop = 0.05 * kw.get("severity", 0) + (0.1 if kw.get("role") == "novel" else 0.0)
            for m in methods:
                skill = SKILL[m] - drop * (1.5 if m == "expert" else 1.0)
                rows.append(_row(expert, protocol, dataset, m, _bits(rng, skill, n), seed=seed, gamma=gamma, **kw))
    return rows


# -- one realistic run for the consistency test: every protocol and split, many corruptions, all 14 kinds of rows --
RUN_METHODS = ("generalist", "expert", "ensemble", "wise_ft", "ties", "t3", "t3_batch", "t3_cal", "wise_ft_cal")
RUN_SKILL = {"generalist": 0.55, "expert": 0.72, "ensemble": 0.66, "wise_ft": 0.70, "ties": 0.62, "t3": 0.73,
             "t3_batch": 0.71, "t3_cal": 0.74, "wise_ft_cal": 0.71}
RUN_KINDS = {"generalist": "endpoint", "expert": "endpoint", "ensemble": "ensemble", "wise_ft": "static",
             "ties": "static", "t3": "per_sample", "t3_batch": "per_batch", "t3_cal": ["per_sample", "tuned"],
             "wise_ft_cal": ["static", "tuned"]}


def run_rows(experts=("retinamnist", "dermamnist"), *, seed: int = 0, n: int = 48, kinds: bool = True,
             corruptions=("gaussian_noise", "pixelate", "contrast"), severities=(1, 2, 3)) -> list[dict]:
    """Rows of one `data=all protocol=all` run: in_domain, base_to_novel split=modality (base + novel datasets) and
    split=class (base / novel subsets), corruption (clean + corruptions × severities); per-image `correct` and
    `lambda_per_image`; `method_kind` unless `kinds=False` (rows written before the field existed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for expert in experts:
        others = [e for e in experts if e != expert] + ["ph2"]
        views = [("in_domain", expert, {}), ("base_to_novel", expert, {"split": "modality", "role": "base"})]
        views += [("base_to_novel", o, {"split": "modality", "role": "novel"}) for o in others]
        views += [("base_to_novel", expert, {"split": "class", "role": r, "subset": r}) for r in ("base", "novel")]
        views += [("corruption", expert, {})]
        views += [("corruption", expert, {"corruption": c, "severity": s}) for c in corruptions for s in severities]
        for protocol, dataset, kw in views:
            kw = dict(kw)
            subset = kw.pop("subset", "all")
            drop = 0.06 * kw.get("severity", 0) + (0.15 if kw.get("role") == "novel" else 0.0)
            for m in RUN_METHODS:
                skill = RUN_SKILL[m] - drop * (1.5 if m == "expert" else 1.0)
                row = _row(expert, protocol, dataset, m, _bits(rng, max(skill, 0.02), n), seed=seed, **kw)
                row["subset"] = subset
                row["key"] += f"-{subset}"
                lam = {"generalist": 1.0, "expert": 0.0}.get(m, 0.5)
                per_image = (0.5 + 0.1 * rng.random(n)) if m in ("t3", "t3_cal") else np.full(n, lam)
                row["lambda_per_image"] = [round(float(v), 6) for v in per_image] if m.startswith("t3") else None
                row["lambda_mean"] = float(np.mean(per_image))
                row["js_mean"] = float(0.05 + 0.02 * kw.get("severity", 0))
                row["balanced_acc"] = max(0.0, row["top1"] - 3.0)
                if m in ("t3", "t3_cal", "dawin"):
                    row["diagnostics"]["spearman_lambda_expert_error"] = float(rng.uniform(0.1, 0.4))
                row["diagnostics"]["auroc_js_gen_right_exp_wrong"] = float(rng.uniform(0.5, 0.8))
                row["majority_top1"] = 50.0 + (10.0 if dataset == expert else 0.0)
                if m != "t3_cal":
                    row.pop("calibration", None)
                if kinds:
                    row["method_kind"] = RUN_KINDS[m]
                rows.append(row)
    return rows
