"""A run checks every expert's models before its first cell, and a run that fails midway still reports."""
from __future__ import annotations

import pytest
from eval_support import compose, make_env, overrides

import tcube.harness.evaluate as evaluate
from tcube.harness.evaluate import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, clip_pair):
    return make_env(tmp_path_factory.mktemp("safety"), clip_pair)


def test_a_missing_expert_stops_the_run_before_any_cell(env, tmp_path):
    cfg = compose(overrides(env, methods=("t3",), extra=["model.expert=local-dir:/nonexistent/expert"]))
    with pytest.raises(FileNotFoundError, match=r"model.expert=local-dir:/nonexistent/expert.*does not exist"):
        run(cfg, tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_an_unknown_zoo_model_names_the_valid_ones(env, tmp_path):
    cfg = compose(overrides(env, methods=("t3",), extra=["model.expert=zoo:expert-nosuchdata"]))
    with pytest.raises(ValueError, match="model.expert=zoo:expert-nosuchdata: unknown zoo model.*valid names"):
        run(cfg, tmp_path)


def test_a_run_that_fails_midway_reports_what_finished(env, tmp_path, monkeypatch):
    original = evaluate.make_runner

    def failing_runner(*args, **kwargs):
        runner, calls = original(*args, **kwargs), {"n": 0}
        inner = runner.run

        def run_once(es, variants):
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError("disk full")  # any failure after the first eval set
            yield from inner(es, variants)

        runner.run = run_once
        return runner

    monkeypatch.setattr(evaluate, "make_runner", failing_runner)
    cfg = compose(overrides(env, protocol="corruption", methods=("t3",),
                            extra=["protocol.corruptions=[gaussian_noise]", "protocol.severities=[1,2]"]))
    with pytest.raises(RuntimeError, match="disk full"):
        run(cfg, tmp_path)
    rows = (tmp_path / "results.jsonl").read_text().splitlines()
    report = (tmp_path / "report.md").read_text()
    assert rows and (tmp_path / "summary.json").is_file() and "tcube evaluation report" in report
