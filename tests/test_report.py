"""report.md / summary.json of one or several expert modalities, and `python -m tcube.report` over runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_support import METHODS, synthetic_rows

from tcube.reporting.report import main, render_report, summarize
from tcube.reporting.results import read_rows

EXPERTS = ("retinamnist", "pneumoniamnist")


@pytest.fixture(scope="module")
def multi():
    rows = synthetic_rows(EXPERTS)
    summary = summarize(rows, list(METHODS), n_boot=500)
    return rows, summary, render_report(summary, rows, {"data": "all"})


def _entry(entries, protocol, name):
    return next(e for e in entries if e["protocol"] == protocol and e["name"] == name)


def test_multi_expert_report_has_a_headline_and_one_section_per_modality(multi):
    _, summary, report = multi
    assert summary["experts"] == list(EXPERTS)
    assert "## Headline: mean over 2 expert modalities" in report
    assert all(f"## Expert: {e}" in report for e in EXPERTS)
    for heading in ("### in_domain (retinamnist, test)", "### corruption (pneumoniamnist", "#### mCE",
                    "split=modality", "Paired differences", "Temperature scaling", "Coefficients chosen on validation",
                    "Routing diagnostics"):
        assert heading in report, heading
    assert report.count("| *majority class* | 60.0 |") >= 3  # headline + in_domain of each expert
    assert "*" in report.split("vs generalist:")[1].split("\n\n")[1]  # a clear gap is marked significant


def test_intervals_bracket_each_point_and_headline_is_the_mean_over_modalities(multi):
    _, summary, _ = multi
    unc = summary["uncertainty"]
    for name in ("top-1",):
        per = [_entry(unc["experts"][e], "in_domain", name)["values"]["t3"][0] for e in EXPERTS]
        head = _entry(unc["headline"], "in_domain", name)["values"]["t3"]
        assert head[0] == pytest.approx(np.mean(per))
        assert head[1] < head[0] < head[2]
    # per expert, mCE is computed from that expert's own corruption rows (no collision between datasets)
    for e in EXPERTS:
        mce = _entry(unc["experts"][e], "corruption", "mCE")["values"]["expert"][0]
        assert mce == pytest.approx(summary["per_expert"][e]["corruption"]["mce"]["expert"])
    assert summary["mce"]["expert"] == pytest.approx(np.mean([summary["per_expert"][e]["corruption"]["mce"]["expert"]
                                                              for e in EXPERTS]))


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    rows = synthetic_rows(EXPERTS)
    t3 = {(r["expert_data"], r["protocol"], r["dataset"], r["corruption"], r["severity"]): r["correct"]
          for r in rows if r["method"] == "t3"}
    for r in rows:  # wise_ft (the α = 0.5 reference) predicts exactly what t3 predicts
        if r["method"] == "wise_ft":
            r["correct"] = t3[(r["expert_data"], r["protocol"], r["dataset"], r["corruption"], r["severity"])]
            r["top1"] = 100.0 * r["correct"].count("1") / len(r["correct"])
    unc = summarize(rows, list(METHODS), n_boot=300)["uncertainty"]
    for entries in [unc["headline"], *unc["experts"].values()]:
        for e in entries:
            if e["headline"]:
                assert e["diffs"]["wise_ft (α=0.5)"]["t3"] == [0.0, 0.0, 0.0, False], e["name"]


def test_intervals_are_seeded():
    rows = synthetic_rows(EXPERTS[:1])
    a = summarize(rows, list(METHODS), n_boot=200, seed=1)["uncertainty"]
    b = summarize(rows, list(METHODS), n_boot=200, seed=1)["uncertainty"]
    c = summarize(rows, list(METHODS), n_boot=200, seed=2)["uncertainty"]
    assert a == b and a != c


def test_single_expert_report_keeps_the_protocol_headings():
    rows = synthetic_rows(EXPERTS[:1])
    report = render_report(summarize(rows, list(METHODS), n_boot=200), rows, {})
    assert "## in_domain (retinamnist, test)" in report and "## Headline" not in report
    assert "| *majority class* | 60.0 |" in report and "[" in report.split("| t3 |")[1].split("\n")[0]


def _write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_cli_merges_seed_runs_into_mean_and_std_and_keeps_other_settings_apart(tmp_path):
    runs = [_write_run(tmp_path / "sweep" / str(i), synthetic_rows(EXPERTS, seed=seed, gamma=gamma, n=60))
            for i, (seed, gamma) in enumerate(((0, 0.5), (1, 0.5), (2, 1.0)))]
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "merged")]) == 0
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert summary["differing"] == ["t3.gamma"]
    groups = {g["label"]: g for g in summary["groups"]}
    assert set(groups) == {"t3.gamma=0.5", "t3.gamma=1.0"} and groups["t3.gamma=0.5"]["seeds"] == ["0", "1"]
    cell = groups["t3.gamma=0.5"]["scores"]["in_domain: top-1"]["t3"]
    per_run = [np.mean([r["top1"] for r in read_rows(run / "results.jsonl")
                        if r["method"] == "t3" and r["protocol"] == "in_domain"]) for run in runs[:2]]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(np.mean(per_run))
    assert cell["std"] == pytest.approx(np.std(per_run, ddof=1))
    report = (tmp_path / "merged" / "report.md").read_text()
    assert f"{cell['mean']:.1f} ± {cell['std']:.1f} (n=2)" in report and "| t3.gamma=1.0 |" in report


def test_module_entry_point_rewrites_a_single_run_report(tmp_path):
    run = _write_run(tmp_path / "run", synthetic_rows(EXPERTS[:1], n=40))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "tcube.report", str(run)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## in_domain (retinamnist, test)" in (run / "report.md").read_text()
    missing = subprocess.run([sys.executable, "-m", "tcube.report", str(tmp_path / "nothing")], capture_output=True,
                             text=True, env=env, timeout=120, check=False)
    assert missing.returncode == 2 and "no results.jsonl" in missing.stderr


def test_seed_runs_aggregate_per_expert_and_dare_seed_does_not_split_them(tmp_path):
    runs = []
    for seed in (0, 1):
        rows = synthetic_rows(EXPERTS, seed=seed, n=60)
        for r in rows:  # DARE's drop seed follows the run seed in conf/method/all.yaml (method.seed: ${seed})
            r["config_params"] = {**r["config_params"], "seed": seed}
        runs.append(_write_run(tmp_path / "sweep" / str(seed), rows))
    assert main([str(tmp_path / "sweep")]) == 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["differing"] == [] and len(summary["groups"]) == 1
    scores = summary["groups"][0]["scores"]
    for expert in EXPERTS:
        cell = scores[f"{expert} | in_domain: top-1"]["t3"]
        per_run = [next(r["top1"] for r in read_rows(run / "results.jsonl") if r["method"] == "t3"
                        and r["protocol"] == "in_domain" and r["expert_data"] == expert) for run in runs]
        assert cell["values"] == pytest.approx(per_run) and cell["std"] == pytest.approx(np.std(per_run, ddof=1))
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "## Per expert modality" in report and all(f"### {e}" in report for e in EXPERTS)


def test_corruption_section_states_the_reading_and_old_rows_read_as_legacy(multi):
    rows, summary, report = multi  # synthetic rows without corruption_reading: written before readings existed
    assert "Corruption reading legacy mixed (rows without corruption_reading" in report
    tagged = [dict(r, corruption_reading="224") if r["protocol"] == "corruption" else r for r in rows]
    assert "Corruption reading 224 (MedMNIST-C's definition" in render_report(summary, tagged, {"data": "all"})
    from tcube.reporting.readings import reading_header

    mixed = [{"protocol": "corruption", "corruption_reading": "native"}, {"protocol": "corruption"}]
    assert reading_header(mixed).startswith("MIXED readings") and "native (every operation" in reading_header(mixed)
