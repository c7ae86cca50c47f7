from __future__ import annotations

import pandas as pd
import pytest

from tcube.reporting.plots import mce_table, save_all


def rows():
    out = []
    for method, err_scale in (("generalist", 1.0), ("expert", 1.5), ("t3", 0.8)):
        out.append(dict(protocol="in_domain", dataset="d", method=method, severity=0, corruption=None,
                        top1=80.0, lambda_mean=0.5, js_mean=0.1))
        for corruption in ("blur", "noise"):
            for s in range(1, 6):
                out.append(dict(protocol="corruption", dataset="d", method=method, severity=s, corruption=corruption,
                                top1=100 - err_scale * 4 * s, lambda_mean=0.5 + 0.01 * s, js_mean=0.02 * s))
    return pd.DataFrame(out)


def test_mce_table_by_hand():
    table = mce_table(rows())
    assert table["generalist"] == pytest.approx(100.0)
    assert table["expert"] == pytest.approx(150.0)  # every error is 1.5× the generalist's
    assert table["t3"] == pytest.approx(80.0)


def test_save_all_writes_pngs(tmp_path):
    paths = save_all(rows(), tmp_path)
    assert {p.name for p in paths} == {"accuracy_by_method.png", "mce_by_method.png", "lambda_vs_severity.png",
                                       "lambda_vs_js.png", "accuracy_vs_severity.png", "lambda_distribution.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_routing_auroc_plot_per_expert_and_protocol(tmp_path):
    from report_support import synthetic_rows

    from tcube.reporting.plots import routing_auroc, routing_table

    df = pd.DataFrame(synthetic_rows())
    table = routing_table(df)
    assert set(table.index) == {(e, p) for e in ("retinamnist", "pneumoniamnist")
                                for p in ("in_domain", "base_to_novel", "corruption")}
    assert table["auroc_js_gen_right_exp_wrong"].tolist() == pytest.approx([0.7] * 6)
    fig = routing_auroc(df)
    assert fig.axes[0].has_data() and len(fig.axes[0].patches) == 6
    assert "routing_auroc.png" in {p.name for p in save_all(df, tmp_path)}


def tradeoff_rows():
    out = []
    for expert in ("retinamnist", "ph2"):
        for method, acc in (("generalist", 50.0), ("expert", 90.0), ("t3", 80.0)):
            base = {"expert_data": expert, "severity": 0, "corruption": None, "method": method, "lambda_mean": 0.55,
                    "js_mean": 0.1}
            out.append({**base, "protocol": "in_domain", "split": None, "role": None, "dataset": expert, "top1": acc})
            for novel in ("a", "b"):
                out.append({**base, "protocol": "base_to_novel", "split": "modality", "role": "novel",
                            "dataset": novel, "top1": 100 - acc + (10 if novel == "a" else 0)})
    return pd.DataFrame(out)


def test_headline_table_and_new_plots():
    from tcube.reporting.plots import (
        accuracy_vs_severity,
        headline_table,
        lambda_distribution,
        tradeoff,
    )

    table = headline_table(rows())
    assert list(table.index) == ["generalist", "expert", "t3"] and list(table.columns) == ["in_domain"]  # clean cells only
    assert table.loc["t3", "in_domain"] == 80.0
    lines = accuracy_vs_severity(rows()).axes[0].get_lines()
    t3 = next(line for line in lines if line.get_label() == "t3")
    assert list(t3.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(t3.get_ydata()) == pytest.approx([100 - 0.8 * 4 * s for s in range(1, 6)])
    assert lambda_distribution(rows()).axes[0].has_data()
    ax = tradeoff(tradeoff_rows()).axes[0]
    points = {tuple(c.get_offsets()[0]) for c in ax.collections if len(c.get_offsets())}
    # expert: in-domain 90, novel mean over (20, 10) = 15; t3: 80 vs 25
    assert (90.0, 15.0) in points and (80.0, 25.0) in points and len(points) == 3  # same numbers for both experts
    # nothing to draw -> empty axes (save_all then skips the file)
    assert not tradeoff(rows()).axes[0].has_data()
