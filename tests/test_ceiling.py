"""The per-sample ceiling: its maths on hand-made matrices (tcube.reporting.ceiling), and the harness's λ-grid bits
against the static merge run directly (tcube.harness.ceiling)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tcube.reporting.ceiling import as_matrix, ceiling_table, cell_ceiling, pooled

GRID3 = [0.0, 0.5, 1.0]
# 4 images × 3 λ: λ=0 gets images 0,1; λ=0.5 gets 0,1,2; λ=1 gets 3 only -> curve 50, 75, 25; oracle 100
M = np.array([[1, 1, 0],
              [1, 1, 0],
              [0, 1, 0],
              [0, 0, 1]], dtype=bool)


def test_cell_ceiling_on_a_hand_made_matrix():
    out = cell_ceiling(M, GRID3, {"t3": "1101", "dawin": [0, 0, 0, 1], "perfect": "1111"})
    assert out["curve"] == [50.0, 75.0, 25.0]
    assert out["expert"] == 50.0 and out["generalist"] == 25.0
    assert (out["static_lambda"], out["static"], out["oracle"]) == (0.5, 75.0, 100.0)
    assert out["methods"]["t3"] == {"top1": 75.0, "recovered": 0.0}  # matches the best static merge: 0 %
    assert out["methods"]["perfect"]["recovered"] == pytest.approx(100.0)
    assert out["methods"]["dawin"]["recovered"] == pytest.approx(-200.0)  # 25 vs 75, gap 25: below static


def test_bit_strings_are_one_per_grid_point():
    assert (as_matrix(["1100", "1110", "0001"]) == M).all()
    with pytest.raises(ValueError, match="same images"):
        as_matrix(["1100", "111"])
    with pytest.raises(ValueError, match="4 correct bits for 2 images"):
        cell_ceiling(M[:2], GRID3, {"t3": "1101"})


def test_zero_gap_makes_the_share_undefined_not_inf():
    # λ = 0.5 is right wherever any λ is: the oracle equals the static ceiling
    m = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    out = cell_ceiling(m, GRID3, {"t3": "100"})
    assert out["static"] == out["oracle"] == pytest.approx(200 / 3)
    assert out["methods"]["t3"]["recovered"] is None and out["methods"]["t3"]["top1"] == pytest.approx(100 / 3)


def test_ties_go_to_the_lambda_closest_to_the_expert():
    m = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)  # curve 50, 50, 50
    assert cell_ceiling(m, GRID3)["static_lambda"] == 0.0


def test_pooling_weighs_views_equally_and_picks_one_lambda_for_the_protocol():
    a = cell_ceiling(M, GRID3)                                   # curve 50, 75, 25; oracle 100 (4 images)
    b = cell_ceiling(np.array([[0, 0, 1], [0, 0, 1]], bool), GRID3)  # curve 0, 0, 100; oracle 100 (2 images)
    out = pooled([a, b], {"t3": [75.0, 100.0], "missing": [75.0, None]})
    assert out["curve"] == [25.0, 37.5, 62.5]  # per-view means, not image-weighted (that would be 33.3, 50, 50)
    assert (out["static_lambda"], out["static"], out["oracle"]) == (1.0, 62.5, 100.0)
    assert out["methods"]["t3"]["recovered"] == pytest.approx((87.5 - 62.5) / 37.5 * 100)
    assert "missing" not in out["methods"] and out["cells"] == 2 and out["n"] == 6
    with pytest.raises(ValueError, match="different λ grids"):
        pooled([a, cell_ceiling(M[:, :2], [0.0, 1.0])])


def test_table_joins_views_to_rows_by_cell_and_groups_corruption_views():
    def cell(corruption, severity):
        return {"expert_data": "synth2", "protocol": "corruption", "split": None, "role": None, "dataset": "synth2",
                "subset": "all", "corruption": corruption, "severity": severity}

    records = [{"key": str(i), "cell": cell(c, s), "grid": GRID3, "n": 4, "correct": ["1100", "1110", "0001"]}
               for i, (c, s) in enumerate([(None, 0), ("pixelate", 1)])]
    rows = [{**cell(c, s), "method": m, "top1": t, "method_kind": k}
            for c, s in [(None, 0), ("pixelate", 1)]
            for m, t, k in [("t3", 100.0, "per_sample"), ("wise_ft", 75.0, "static"), ("ties", 0.0, "static")]]
    table = ceiling_table(rows, records)
    assert [(e["view"], e["cells"]) for e in table] == [("clean", 1), ("corrupted", 1)]
    assert set(table[0]["methods"]) == {"t3", "wise_ft"}  # adaptive + the static reference; not ties
    assert table[0]["methods"]["t3"]["recovered"] == pytest.approx(100.0)
    assert table[0]["methods"]["wise_ft"]["recovered"] == 0.0
    json.dumps(table, allow_nan=False)  # strict JSON for summary.json
    assert not any(isinstance(v, float) and math.isnan(v) for e in table for v in e.values())


# -- the harness: python -m tcube.eval ... ceiling_grid=21 on the tiny synthetic setup -------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory, clip_pair, one_thread):
    from common import perturbed
    from conftest import Pair
    from eval_support import make_env

    # the tiny random models predict one class for every noise image; a far-perturbed expert at least predicts
    # another one, so the grid's two ends (and the columns between) have different correct bits
    far = Pair(clip_pair.generalist, perturbed(clip_pair.generalist, seed=1, scale=1.0), clip_pair.tokenizer,
               clip_pair.model_cfg, clip_pair.family)
    return make_env(tmp_path_factory.mktemp("ceiling_env"), far)


@pytest.fixture(scope="module")
def ceiling_run(env, tmp_path_factory):
    from eval_support import SYNTH4, compose, overrides

    from tcube.harness.evaluate import run

    cfg = compose(overrides(env, data=SYNTH4, methods=("t3", "wise_ft"), plots=True,
                            extra=["ceiling_grid=21", "method.params.wise_ft.alpha=0.25"]))
    run_dir = tmp_path_factory.mktemp("ceiling_run")
    summary = run(cfg, run_dir)
    return cfg, run_dir, summary


def _bits(run_dir):
    from tcube.reporting.analysis import load_results

    [record] = [json.loads(p.read_text()) for p in (run_dir / "ceiling").glob("*.json")]
    rows = {r["method"]: r for r in load_results(run_dir).to_dict("records")}
    return record, rows


def test_grid_columns_are_the_static_merges_of_the_cell(ceiling_run):
    _, run_dir, _ = ceiling_run
    record, rows = _bits(run_dir)
    grid, correct = record["grid"], record["correct"]
    assert len(grid) == 21 and grid[0] == 0.0 and grid[5] == 0.25 and grid[-1] == 1.0
    assert record["n"] == rows["t3"]["n"] == 8 and record["cell"]["protocol"] == "in_domain"
    assert rows["expert"]["correct"] != rows["generalist"]["correct"]  # else the two ends could be swapped unseen
    assert correct[0] == rows["expert"]["correct"]         # λ = 0: the merge is the expert
    assert correct[-1] == rows["generalist"]["correct"]    # λ = 1: the generalist
    assert correct[5] == rows["wise_ft"]["correct"]        # α = 0.25 run as a method, on the same images
    assert correct[5] not in (correct[0], correct[-1])      # (so a shifted or mislabelled column would show)


def test_report_shows_the_ceiling_table_and_plot(ceiling_run, tmp_path):
    from tcube.reporting.report import main

    _, run_dir, summary = ceiling_run
    [entry] = summary["ceiling"]
    assert entry["protocol"] == "in_domain" and entry["cells"] == 1 and set(entry["methods"]) == {"t3", "wise_ft"}
    assert entry["oracle"] >= entry["static"] >= max(entry["expert"], entry["generalist"])
    assert "Per-sample ceiling (21-point λ grid" in (run_dir / "report.md").read_text()
    assert (run_dir / "ceiling.png").is_file()
    assert main([str(run_dir), "--out", str(tmp_path)]) == 0  # python -m tcube.report RUN_DIR reads them too
    assert "Per-sample ceiling" in (tmp_path / "report.md").read_text()


def test_rerun_resumes_without_recomputing_the_grid(ceiling_run, monkeypatch):
    from tcube.harness import ceiling
    from tcube.harness.evaluate import run

    cfg, run_dir, first = ceiling_run
    files = {p.name: p.read_bytes() for p in (run_dir / "ceiling").glob("*.json")}

    def fail(*_args, **_kwargs):
        raise AssertionError("the λ grid was computed again")

    monkeypatch.setattr(ceiling.CeilingGrid, "bits", fail)
    summary = run(cfg, run_dir)
    assert {p.name: p.read_bytes() for p in (run_dir / "ceiling").glob("*.json")} == files
    assert summary["cells"]["computed"] == 0 and summary["ceiling"] == first["ceiling"]


def test_ceiling_is_off_by_default_and_checked():
    from omegaconf import OmegaConf

    from tcube.harness.config import EvalConfig, to_settings

    base = {"model": {"generalist": "g", "expert": "e"}, "data": {"name": "synth2"}, "method": {"name": "t3"},
            "engine": {"name": "fused"}, "protocol": {"name": "in_domain"}}
    assert OmegaConf.structured(EvalConfig).ceiling_grid == 0
    assert to_settings({**base, "ceiling_grid": 21})["ceiling_grid"] == 21
    with pytest.raises(ValueError, match=r"ceiling_grid must be 0 \(off\) or ≥ 2, got 1"):
        to_settings({**base, "ceiling_grid": 1})


def test_corrupted_views_use_the_cells_corrupted_images(env, tmp_path):
    """Corruption is seeded per image: the grid's ends must match the endpoints' rows cell by cell."""
    from eval_support import SYNTH4, compose, overrides

    from tcube.harness.evaluate import run
    from tcube.reporting.results import read_rows

    cfg = compose(overrides(env, data=SYNTH4, protocol="corruption", methods=("t3",), plots=False,
                            extra=["ceiling_grid=3", "protocol.corruptions=[brightness_down]", "protocol.severities=[5]"]))
    summary = run(cfg, tmp_path)
    rows = {(r["corruption"], r["method"]): r["correct"] for r in read_rows(tmp_path / "results.jsonl")}
    records = {r["cell"]["corruption"]: r for r in map(json.loads, map(Path.read_text, (tmp_path / "ceiling").glob("*.json")))}
    assert set(records) == {None, "brightness_down"} and records["brightness_down"]["grid"] == [0.0, 0.5, 1.0]
    # (darkening changes the tiny expert's predictions, so scoring clean images for the corrupted view would show)
    assert rows[(None, "expert")] != rows[("brightness_down", "expert")]
    for corruption, record in records.items():
        assert record["correct"][0] == rows[(corruption, "expert")]
        assert record["correct"][-1] == rows[(corruption, "generalist")]
    assert [e["view"] for e in summary["ceiling"]] == ["clean", "corrupted"]
