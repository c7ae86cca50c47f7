"""Can a disagreement signal route samples at all? Correlations and AUROC of JS against the errors."""
from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu, pearsonr, spearmanr


def auroc(scores, positives) -> float:
    """Area under the ROC curve of `scores` for detecting `positives` (Mann–Whitney U / (n⁺·n⁻), ties averaged).

    NaN when one of the two groups is empty (the question has no answer on this data).
    """
    scores, positives = np.asarray(scores, float).reshape(-1), np.asarray(positives, bool).reshape(-1)
    if scores.shape != positives.shape:
        raise ValueError(f"scores and positives differ in length: {scores.shape} vs {positives.shape}")
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(mannwhitneyu(scores[positives], scores[~positives]).statistic / (n_pos * n_neg))


def routing_diagnostics(js, lambdas, gen_correct, exp_correct) -> dict[str, float]:
    """Per protocol: does JS (or λ) track the expert's errors, and does JS flag 'generalist right, expert wrong'?"""
    js = np.asarray(js, float).reshape(-1)
    lam = np.asarray(lambdas, float).reshape(-1)
    gen_ok, exp_ok = np.asarray(gen_correct, bool).reshape(-1), np.asarray(exp_correct, bool).reshape(-1)
    exp_err = (~exp_ok).astype(float)
    out = {"n": float(js.size), "rescuable_fraction": float((gen_ok & ~exp_ok).mean()) if js.size else float("nan")}
    constant = js.size < 3 or np.ptp(exp_err) == 0
    out["spearman_js_expert_error"] = float("nan") if constant or np.ptp(js) == 0 else float(spearmanr(js, exp_err)[0])
    # λ is NaN where a method has no single weight (TIES, DARE) and constant for static merges: no correlation
    flat_lam = constant or not np.isfinite(lam).all() or np.ptp(lam) == 0
    out["pearson_lambda_expert_error"] = float("nan") if flat_lam else float(pearsonr(lam, exp_err)[0])
    out["spearman_lambda_expert_error"] = float("nan") if flat_lam else float(spearmanr(lam, exp_err)[0])
    out["auroc_js_gen_right_exp_wrong"] = auroc(js, gen_ok & ~exp_ok)
    return out
