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
