"""Harness level: what tcube.eval writes for the report (uncertainty, calibration, chosen coefficients,
diagnostics), and that validation-tuned coefficients never look at test labels."""
from __future__ import annotations

import numpy as np
import pytest
from eval_support import compose, make_env, overrides

from tcube.harness.evaluate import run
from tcube.harness.views import DataViews
from tcube.reporting.results import read_rows

CHOSEN = {"t3_cal": ("gamma", "lambda_min", "lambda_max", "tau"), "wise_ft_cal": ("alpha",)}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, clip_pair, data_root):
    env = make_env(tmp_path_factory.mktemp("env"), clip_pair)
    # cache=false: the second run must choose its coefficients again, not read the first run's choice
    args = [a for a in overrides(env, methods=("wise_ft", "t3", "t3_cal", "wise_ft_cal"),
                                 extra=["limit=24", "cache=false"]) if not a.startswith(("data.", "data="))]
    return compose(args + ["data=retina", f"data.root={data_root.path}", "protocol=in_domain"])


@pytest.fixture(scope="module")
def clean_run(cfg, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("clean")
    run(cfg, run_dir)
    return read_rows(run_dir / "results.jsonl"), run_dir


def _poisoned(original):
    """Test labels permuted (val untouched): anything chosen on validation data must not move."""
    def split_arrays(self, data, split):
        images, labels = original(self, data, split)
        if split == "test":
            labels = np.random.default_rng(123).permutation(labels)
        return images, labels
    return split_arrays


def test_chosen_coefficients_ignore_test_labels(cfg, clean_run, tmp_path, monkeypatch):
    rows, _ = clean_run
    monkeypatch.setattr(DataViews, "_split_arrays", _poisoned(DataViews._split_arrays))
    run(cfg, tmp_path)
    poisoned = {r["method"]: r for r in read_rows(tmp_path / "results.jsonl")}
    clean = {r["method"]: r for r in rows}
    assert poisoned["generalist"]["correct"] != clean["generalist"]["correct"]  # the poison reached the test cells
    for method, keys in CHOSEN.items():
        assert set(keys) <= set(clean[method]["params"]), clean[method]["params"]
        assert {k: poisoned[method]["params"][k] for k in keys} == {k: clean[method]["params"][k] for k in keys}
        assert poisoned[method]["calibration"]["temperatures"] == clean[method]["calibration"]["temperatures"]


def test_rows_carry_what_the_report_needs(clean_run, data_root):
    rows, run_dir = clean_run
    labels = np.load(data_root.file("retinamnist"))["test_labels"].reshape(-1)
    from tcube.data.npz import select_view

    majority = np.bincount(labels[select_view(labels, None, 24, 0)[0]]).max() / 24 * 100
    for r in rows:
        assert r["expert_data"] == "retinamnist" and r["majority_top1"] == pytest.approx(majority)
        assert len(r["correct"]) == 24 and 0.0 <= r["diagnostics"]["rescuable_fraction"] <= 1.0
    ece = next(r for r in rows if r["method"] == "t3_cal")["calibration"]["ece"]
    for split in ("val", "test"):
        for model in ("generalist", "expert"):
            assert 0.0 <= ece[split][f"ece_{model}_before"] <= 100 and 0.0 <= ece[split][f"ece_{model}_after"] <= 100
    assert ece["test"]["temperature_generalist"] == ece["val"]["temperature_generalist"]
    report = (run_dir / "report.md").read_text()
    for text in ("| *majority class* |", "vs wise_ft (α=0.5):", "Temperature scaling", "Coefficients chosen",
                 "Routing diagnostics", "| t3_cal | "):
        assert text in report, text


def test_poisoned_validation_labels_do_move_the_choice(cfg, clean_run, tmp_path, monkeypatch):
    """The counterpart: the same poison on the val split changes what is chosen, so the test above can fail."""
    rows, _ = clean_run

    def split_arrays(self, data, split, original=DataViews._split_arrays):
        images, labels = original(self, data, split)
        return (images, np.random.default_rng(123).permutation(labels)) if split == "val" else (images, labels)

    monkeypatch.setattr(DataViews, "_split_arrays", split_arrays)
    run(cfg, tmp_path)
    poisoned = {r["method"]: r for r in read_rows(tmp_path / "results.jsonl")}
    clean = {r["method"]: r for r in rows}
    chosen = [(clean[m]["params"][k], poisoned[m]["params"][k]) for m, keys in CHOSEN.items() for k in keys]
    temperatures = [(clean[m]["calibration"]["temperatures"], poisoned[m]["calibration"]["temperatures"])
                    for m in CHOSEN]
    assert any(a != b for a, b in chosen + temperatures)
