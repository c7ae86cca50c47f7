"""The gap sweep's report and the zoo's val premise table: their arithmetic on known inputs."""
from __future__ import annotations

import math

import pytest
from report_support import synthetic_rows

from tcube.reporting.gap import REFERENCE, gap_table, render_gap, run_gap
from tcube.zoo.premise import format_premise, premise_rows

METHODS = ["generalist", "expert", "wise_ft", "t3", "t3_cal"]


def _top1(rows, method):
    dom = [r for r in rows if r["protocol"] == "in_domain" and r["method"] == method]
    return sum(r["top1"] for r in dom) / len(dom)


def test_run_gap_is_expert_minus_generalist_in_domain_and_diffs_are_paired_to_wise_ft():
    rows = synthetic_rows(seed=3)
    out = run_gap(rows, METHODS, n_boot=200)
    assert out["gap"] == pytest.approx(_top1(rows, "expert") - _top1(rows, "generalist"))
    d = out["diffs"]["in_domain: top-1"]["t3"]
    assert d[0] == pytest.approx(_top1(rows, "t3") - _top1(rows, "wise_ft"))
    assert d[1] <= d[0] <= d[2] and isinstance(d[3], bool)
    assert "wise_ft" not in out["diffs"]["in_domain: top-1"]  # no difference of the reference with itself


def test_gap_table_groups_profiles_sorted_by_gap_with_seed_counts():
    a = [run_gap(synthetic_rows(seed=s), METHODS, n_boot=200) for s in (0, 1)]
    b = [{"gap": -2.0, "diffs": {"in_domain: top-1": {"t3": [1.0, 0.5, 1.5, True]}}}]
    table = gap_table({"wide": a, "narrow": b})
    assert [r["profile"] for r in table] == ["narrow", "wide"]
    wide = table[1]
    assert wide["seeds"] == 2 and wide["gap"][0] == pytest.approx((a[0]["gap"] + a[1]["gap"]) / 2)
    t3 = wide["scores"]["in_domain: top-1"]["t3"]
    assert t3["n"] == 2 and t3["significant"] == sum(r["diffs"]["in_domain: top-1"]["t3"][3] for r in a)
    text = render_gap(table, ["t3"])
    assert "| narrow | -2.0 | +1.0 [1/1] |" in text and f"| wide | {wide['gap'][0]:+.1f} ± " in text
    assert REFERENCE.startswith("wise_ft")


def _manifest(kind, dataset, val):
    return {"kind": kind, "dataset": dataset, "val": {d: {"top1": v} for d, v in val.items()}}


def test_premise_rows_from_manifests():
    zoos = []
    for shift in (0.0, 2.0):
        zoos.append({
            "generalist": _manifest("generalist", None, {"a": 50 + shift, "b": 60, "c": 70}),
            "expert-a": _manifest("expert", "a", {"a": 60 + shift, "b": 50, "c": 72}),
            "expert-b": _manifest("expert", "b", {"a": 40, "b": 65 - shift, "c": 60}),
        })
    rows = {r["dataset"]: r for r in premise_rows(zoos)}
    assert rows["a"]["gain_in"] == (10.0, 0.0)
    assert rows["a"]["generalist_other"][0] == pytest.approx(65.0) and rows["a"]["expert_other"][0] == pytest.approx(61.0)
    assert rows["a"]["expert_loses_every_other"] == 0  # c: 72 > 70
    assert rows["b"]["expert_loses_every_other"] == 2
    assert rows["a"]["gain_in_at_least_5"] == 2 and rows["b"]["gain_in_at_least_5"] == 1  # b: +5.0, then +3.0
    assert rows["b"]["gain_in"][0] == 4.0 and math.isclose(rows["b"]["generalist_in"][1], 0.0)
    text = format_premise(list(rows.values()))
    assert "| a | 51.0 ± 1.4 | 61.0 ± 1.4 | +10.0 ± 0.0 |" in text and text.endswith("| 1 of 2 | 2 of 2 |")
    with pytest.raises(ValueError, match="expert-a"):
        premise_rows([{"generalist": zoos[0]["generalist"], "expert-b": zoos[0]["expert-b"]}, zoos[0]])
