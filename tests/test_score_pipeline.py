"""One score pipeline (issue #10): one set of rows, the same numbers in summary.json, report.md, the intervals,
`python -m tcube.report` (one run and the multi-run aggregate), the plots' tables and the notebook's tables;
the zero-reference rule end to end; reporting loads no model code; method kinds come from the rows."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_support import RUN_METHODS, run_rows

from tcube.reporting import plots
from tcube.reporting.aggregate import aggregate, load_runs
from tcube.reporting.analysis import load_results
from tcube.reporting.report import main, point_summary, render_report, summarize
from tcube.reporting.results import method_order
from tcube.reporting.tables import diagnostics_table

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ("retinamnist", "dermamnist")
N_BOOT = 200


def _write(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rows = run_rows(EXPERTS)
    folder = _write(tmp_path_factory.mktemp("pipeline") / "run", rows)
    summary = summarize(rows, method_order(rows), n_boot=N_BOOT)
    return rows, folder, summary, render_report(summary, rows, {"data": "all"})


def _entry(entries, name):
    return next(e for e in entries if e["name"] == name)


def _md_table(report: str, heading: str) -> dict[str, dict[str, str]]:
    """method -> column -> cell of the first markdown table after `heading`."""
    lines = report.split(heading, 1)[1].split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| method"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(header[1:], cells[1:]))
    return out


def test_one_set_of_rows_gives_the_same_numbers_everywhere(run, tmp_path):
    rows, folder, summary, report = run
    methods = summary["methods"]
    assert methods == list(RUN_METHODS)
    headline = summary["uncertainty"]["headline"]
    # the scores and where each consumer shows them
    expected = {
        "in_domain: top-1": summary["top1"]["in_domain"],
        "base_to_novel: modality HM": summary["harmonic_mean"]["modality"],
        "base_to_novel: class HM": summary["harmonic_mean"]["class"],
        "corruption: mean corrupted": summary["top1"]["corruption"],
        "corruption: mCE": summary["mce"],
    }
    # 1. intervals (summary.json "uncertainty") are centred on the same points
    for key, values in expected.items():
        entry = _entry(headline, key.split(": ", 1)[1])
        for m in methods:
            assert entry["values"][m][0] == pytest.approx(values[m], rel=1e-12, abs=1e-12), (key, m)
    for e in EXPERTS:
        per = summary["per_expert"][e]
        assert _entry(summary["uncertainty"]["experts"][e], "mCE")["values"]["t3"][0] == pytest.approx(
            per["corruption"]["mce"]["t3"], rel=1e-12)
        assert _entry(summary["uncertainty"]["experts"][e], "class HM")["values"]["t3"][0] == pytest.approx(
            per["base_to_novel"]["splits"]["class"]["hm"]["t3"], rel=1e-12)
    # 2. report.md prints them (headline table: point, then the interval)
    table = _md_table(report, "## Headline")
    for key, values in expected.items():
        for m in methods:
            assert table[m][key.split(": ", 1)[1]].startswith(f"{values[m]:.1f} ["), (key, m)
    assert "| t3 |" in report.split("#### mCE")[1]
    # 3. python -m tcube.report on the run folder rewrites the same summary
    assert main([str(folder), "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    for key in ("top1", "mce", "harmonic_mean", "per_expert"):
        assert cli[key] == json.loads(json.dumps(summary[key])), key
    cli_table = _md_table((tmp_path / "cli" / "report.md").read_text(), "## Headline")  # 2000 resamples there
    assert {m: {k: v.split(" [")[0] for k, v in c.items()} for m, c in cli_table.items()} == \
        {m: {k: v.split(" [")[0] for k, v in c.items()} for m, c in table.items()}
    # 4. the multi-run aggregate (python -m tcube.report over several runs) of this one run
    agg = aggregate(load_runs([folder]), methods)["groups"][0]["scores"]
    for key, values in expected.items():
        for m in methods:
            assert agg[key][m]["mean"] == pytest.approx(values[m], rel=1e-12), (key, m)
    for e in EXPERTS:
        assert agg[f"{e} | corruption: mCE"]["t3"]["mean"] == pytest.approx(
            summary["per_expert"][e]["corruption"]["mce"]["t3"], rel=1e-12)
    # 5. the plots' tables, on the DataFrame the harness and the notebook build (load_results)
    for df in (pd.DataFrame.from_records(rows), load_results(folder)):
        assert plots.mce_table(df).to_dict() == pytest.approx(summary["mce"], rel=1e-12)
        head = plots.headline_table(df)
        assert list(head.index) == methods
        assert head["in_domain"].to_dict() == pytest.approx(summary["top1"]["in_domain"], rel=1e-12)
        assert head["base_to_novel"].to_dict() == pytest.approx(summary["top1"]["base_to_novel"], rel=1e-12)
        assert head["corruption"].to_dict() == pytest.approx(summary["protocols"]["corruption"]["clean_top1"],
                                                             rel=1e-12)
        routing = plots.routing_table(df)
        for d in summary["diagnostics"]:
            if d["expert_data"] != "all modalities":
                assert routing.loc[(d["expert_data"], d["protocol"]), "auroc_js_gen_right_exp_wrong"] == \
                    pytest.approx(d["auroc_js_gen_right_exp_wrong"], rel=1e-12)
    # 6. the notebook calls exactly these table functions on load_results(run_dirs)
    notebook = (ROOT / "notebooks" / "analysis.ipynb").read_text()
    assert "load_results(run_dirs)" in notebook and "plots.headline_table(df)" in notebook
    assert "plots.mce_table(df)" in notebook


def test_several_runs_in_the_plot_tables_average_the_runs_summaries(tmp_path):
    a, b = run_rows(EXPERTS, seed=0), run_rows(EXPERTS, seed=1)
    df = load_results([_write(tmp_path / "a", a), _write(tmp_path / "b", b)])
    mce = plots.mce_table(df)
    for m in ("t3", "expert"):
        assert mce[m] == pytest.approx((point_summary(a)["mce"][m] + point_summary(b)["mce"][m]) / 2, rel=1e-12)


# -- the zero-reference rule, end to end -------------------------------------------------------------------
def _degenerate_rows() -> list[dict]:
    """The generalist makes no error under `pixelate` and is not degraded by `contrast`, where its errors differ
    from its clean error by one image either way: Σ_s(err_s − err_clean) is 1.4e-14 in floating point, the
    round-off that once gave a relative mCE of 1.8e16."""
    rows = run_rows(EXPERTS[:1], n=48)
    for r in rows:
        if r["method"] != "generalist" or r["protocol"] != "corruption":
            continue
        k = {None: 32, "contrast": {1: 31, 2: 32, 3: 33}}.get(r["corruption"])
        if r["corruption"] == "pixelate":
            r["correct"] = "1" * 48
        elif k is not None:
            k = k if isinstance(k, int) else k[r["severity"]]
            r["correct"] = "1" * k + "0" * (48 - k)
        else:
            continue
        r["top1"] = 100.0 * r["correct"].count("1") / 48
    return rows


def test_zero_and_round_off_references_are_undefined_and_noted():
    rows = _degenerate_rows()
    summary = summarize(rows, method_order(rows), n_boot=N_BOOT)
    corr = summary["protocols"]["corruption"]
    # pixelate: CE undefined, left out of the mCE (the generalist still scores 100)
    assert "pixelate" not in corr["ce"]["t3"] and set(corr["ce"]["t3"]) == {"gaussian_noise", "contrast"}
    assert corr["mce"]["generalist"] == pytest.approx(100.0)
    assert corr["mce"]["t3"] == pytest.approx((corr["ce"]["t3"]["gaussian_noise"] + corr["ce"]["t3"]["contrast"]) / 2)
    assert _entry(summary["uncertainty"]["headline"], "mCE")["values"]["t3"][0] == pytest.approx(corr["mce"]["t3"])
    # relative mCE: contrast (round-off denominator) and pixelate (negative) are undefined, not 1e16
    for m, rel in corr["relative_mce"].items():
        assert rel is None or abs(rel) < 1e4, (m, rel)
    assert any("not degraded by ['contrast', 'pixelate']" in n for n in corr["notes"])
    assert any("no error under ['pixelate']" in n for n in corr["notes"]) and len(corr["notes"]) == 2
    report = render_report(summary, rows, {})
    assert "- note: relative CE undefined (–)" in report and "e+1" not in report


def test_error_reduction_against_an_error_free_reference_is_undefined():
    rows = [r for r in run_rows(EXPERTS[:1], n=20) if r["protocol"] == "in_domain"]
    for r in rows:
        if r["method"] == "expert":
            r["correct"], r["top1"] = "1" * 20, 100.0
    in_domain = summarize(rows, method_order(rows), n_boot=50)["protocols"]["in_domain"]
    assert set(in_domain["error_reduction_vs_expert"].values()) == {None}
    assert in_domain["error_reduction_vs_generalist"]["t3"] is not None


# -- notes state only what the run knows -------------------------------------------------------------------
def test_modality_note_comes_from_meta_and_claims_nothing_without_it(run):
    rows, _, summary, report = run
    assert "trained on" not in report and "every modality" not in report
    told = render_report(summary, rows, {"generalist_datasets": ["retinamnist", "dermamnist", "ph2"]})
    assert "> The generalist was trained on retinamnist, dermamnist, ph2 (zoo manifest)." in told
    assert "generalist_datasets" not in told.split("\n\n", 1)[0]  # not repeated as a meta line


# -- method kinds come from the rows ------------------------------------------------------------------------
def test_legacy_rows_without_method_kind_report_the_same(run):
    rows, _, summary, _ = run
    legacy = run_rows(EXPERTS, kinds=False)
    old = summarize(legacy, method_order(legacy), n_boot=N_BOOT)
    assert old["diagnostics"] == summary["diagnostics"] and old["coefficients"] == summary["coefficients"]
    assert {m for d in summary["diagnostics"] for m in d["spearman_lambda_expert_error"]} == {"t3", "t3_cal"}
    assert {c["method"] for c in summary["coefficients"]} == {"t3_cal", "wise_ft_cal"}


def test_a_new_method_is_reported_by_its_row_kind():
    rows = run_rows(EXPERTS[:1])
    extra = [dict(r, method="my_rule", method_kind="per_sample", key=r["key"] + "-my") for r in rows
             if r["method"] == "t3"]
    rows = extra + rows  # first seen, yet listed after the built-in methods
    assert method_order(rows) == list(RUN_METHODS) + ["my_rule"]
    diag = diagnostics_table(rows, method_order(rows))
    assert all("my_rule" in d["spearman_lambda_expert_error"] for d in diag)
    labels = [t.get_text() for t in plots.lambda_distribution(pd.DataFrame(rows)).axes[0].get_legend().get_texts()]
    assert labels == ["t3", "t3_batch", "t3_cal", "my_rule"]


# -- reporting loads no model code ----------------------------------------------------------------------------
def test_reporting_imports_no_model_code():
    code = ("import tcube.reporting.report, tcube.reporting.plots, tcube.reporting.aggregate, "
            "tcube.reporting.analysis, tcube.report, sys; "
            "bad = [m for m in sys.modules if m.startswith(('tcube.methods', 'tcube.engines', 'tcube.models', "
            "'open_clip', 'torch'))]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_reporting_module_imports_model_code():
    pattern = re.compile(r"^\s*(from|import)\s+(\.\.(methods|engines|models|runtime|core)|tcube\.(methods|engines|"
                         r"models|runtime|core)|torch|open_clip)\b", re.M)
    offenders = [p.name for p in (ROOT / "tcube" / "reporting").glob("*.py") if pattern.search(p.read_text())]
    assert not offenders
