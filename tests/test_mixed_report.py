"""The mixed stream's report over seeds: stratified paired intervals, and significant seeds counted by sign."""
from __future__ import annotations

import numpy as np

from tcube.reporting.mixed import render_seeds_table, seeds_table, summarize_mixed


def _row(method, correct, kind="multi_per_sample", stream=("a", "b")):
    domain = "0011"
    per = {d: float(np.mean([c == "1" for c, k in zip(correct, domain) if k == str(i)]) * 100)
           for i, d in enumerate(stream)}
    return {"protocol": "mixed", "method": method, "config_params": {}, "method_kind": kind, "corruption": None,
            "severity": 0, "stream": list(stream), "domain": domain, "correct": correct, "n": 4,
            "top1": correct.count("1") / 4 * 100, "per_dataset_top1": per, "macro_top1": float(np.mean(list(per.values())))}


def test_summary_references_and_sign_counts():
    runs = [[_row("multi_average", "0101", "multi_static"), _row("oracle_route", "1111"), _row("multi_t3", "1111")],
            [_row("multi_average", "1111", "multi_static"), _row("oracle_route", "1111"), _row("multi_t3", "0000")]]
    summaries = [summarize_mixed(rows, n_boot=200) for rows in runs]
    assert summaries[0]["best_static"] == "multi_average"
    clean = summaries[0]["views"]["clean"]
    assert clean["oracle_route"]["delta_macro_vs_oracle"][0] == 0.0
    assert clean["multi_t3"]["delta_macro_vs_best static"][0] == 50.0
    table = seeds_table(summaries)
    mean, std, up, down, n = table["multi_t3"]["delta_vs_best static"]
    assert (mean, n) == (-25.0, 2) and up + down <= 2 and down >= 1  # seed 2: −100 points, significant below
    assert "↓" in render_seeds_table(table, [s["best_static"] for s in summaries])
