from __future__ import annotations

import math

import numpy as np

from tcube.reporting.diagnostics import auroc, routing_diagnostics


def test_auroc_hand_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # one of four (pos, neg) pairs mis-ordered: pos {0.3, 0.9}, neg {0.1, 0.4} -> 3/4
    assert auroc([0.3, 0.9, 0.1, 0.4], [1, 1, 0, 0]) == 0.75
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))


def test_routing_diagnostics_on_an_informative_signal():
    rng = np.random.default_rng(0)
    exp_correct = rng.random(500) < 0.7
    gen_correct = np.where(exp_correct, rng.random(500) < 0.8, rng.random(500) < 0.6)
    js = np.where(exp_correct, rng.random(500) * 0.2, 0.1 + rng.random(500) * 0.5)  # disagree when expert errs
    lam = 0.5 + js / 2
    d = routing_diagnostics(js, lam, gen_correct, exp_correct)
    assert d["auroc_js_gen_right_exp_wrong"] > 0.8
    assert d["spearman_js_expert_error"] > 0.5 and d["pearson_lambda_expert_error"] > 0.5
    noise = routing_diagnostics(rng.random(500), lam, gen_correct, exp_correct)
    assert abs(noise["auroc_js_gen_right_exp_wrong"] - 0.5) < 0.1
