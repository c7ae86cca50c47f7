"""End to end: `tcube.harness.evaluate.run` on synthetic npz files and tiny local-dir models (plumbing, not results)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_support import NOVEL_GRAY, SYNTH4, compose, make_env, overrides

from tcube.harness.evaluate import cli, run
from tcube.reporting.analysis import load_results

REQUIRED = ("protocol", "modality", "dataset", "subset", "corruption", "severity", "method", "engine", "n", "top1",
            "balanced_acc", "lambda_mean", "lambda_std", "seconds", "js_mean", "params", "seed", "key")
pytestmark = pytest.mark.usefixtures("one_thread")
ALL_PROTOCOLS = ["protocol.corruptions=[gaussian_noise,pixelate]", "protocol.severities=[2]", NOVEL_GRAY, "limit=6"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, clip_pair):
    return make_env(tmp_path_factory.mktemp("eval"), clip_pair)


@pytest.fixture(scope="module")
def full_run(env, tmp_path_factory):
    """protocol=all on the 4-class set: in_domain, base_to_novel (modality + class), corruption."""
    cfg = compose(overrides(env, data=SYNTH4, protocol="all", methods=("t3", "wise_ft"), extra=ALL_PROTOCOLS,
                            plots=True))
    run_dir = tmp_path_factory.mktemp("full")
    summary = run(cfg, run_dir)
    return cfg, run_dir, summary


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_full_run_writes_well_formed_outputs(full_run):
    _, run_dir, summary = full_run
    rows = [json.loads(line) for line in _lines(run_dir / "results.jsonl")]
    # 8 eval sets (in_domain 1, modality base+novel 2, class base+novel 2, clean + 2 corruptions) × 4 methods
    assert len(rows) == summary["cells"]["planned"] == 32
    assert len({r["key"] for r in rows}) == len(rows)
    for r in rows:
        assert all(k in r for k in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert 0 <= r["top1"] <= 100 and 0 <= r["balanced_acc"] <= 100 and r["n"] > 0
        assert (r["corruption"] is None) == (r["severity"] == 0)
    by = {(r["protocol"], r["dataset"], r["subset"], r["corruption"], r["method"]): r for r in rows}
    assert by[("in_domain", "synth4", "all", None, "generalist")]["lambda_mean"] == 1.0
    assert by[("in_domain", "synth4", "all", None, "expert")]["lambda_mean"] == 0.0
    assert by[("in_domain", "synth4", "all", None, "t3")]["params"]["gamma"] == 0.5
    novel = by[("base_to_novel", "synthgray", "all", None, "t3")]
    assert novel["role"] == "novel" and novel["modality"] == "chest_xray" and novel["num_classes"] == 2
    base_cls = by[("base_to_novel", "synth4", "base", None, "expert")]
    assert base_cls["split"] == "class" and base_cls["num_classes"] == 2 and base_cls["expert"].endswith("expert_base")
    assert {r["corruption"] for r in rows if r["protocol"] == "corruption"} == {None, "gaussian_noise", "pixelate"}

    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s["protocols"]) == {"in_domain", "base_to_novel", "corruption"}
    mce_gen = s["protocols"]["corruption"]["mce"]["generalist"]
    assert mce_gen is None or mce_gen == pytest.approx(100.0)  # None only if the generalist never errs
    assert set(s["harmonic_mean"]) == {"modality", "class"}
    assert any("ph2" in k["what"] for k in s["skipped"])  # listed novel dataset without a file: skipped, logged
    report = (run_dir / "report.md").read_text()
    for heading in ("## in_domain", "split=modality", "split=class", "## corruption", "mCE", "## Skipped"):
        assert heading in report
    assert not (run_dir / "wandb").exists()  # logger=none writes no tracker files
    assert (run_dir / "accuracy_by_method.png").is_file() and (run_dir / "mce_by_method.png").is_file()


def test_rerun_into_the_same_dir_adds_no_rows(full_run):
    cfg, run_dir, _ = full_run
    before = (run_dir / "results.jsonl").read_bytes()
    summary = run(cfg, run_dir)
    assert (run_dir / "results.jsonl").read_bytes() == before
    assert summary["cells"]["computed"] == 0 and summary["cells"]["rows"] == 32


def test_killed_run_resumes_without_duplicates(full_run, tmp_path):
    cfg, run_dir, _ = full_run
    lines = _lines(run_dir / "results.jsonl")
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][:37])  # killed mid-write
    summary = run(cfg, tmp_path)
    resumed = _lines(tmp_path / "results.jsonl")
    assert resumed[:10] == lines[:10]  # finished cells were kept, not recomputed
    keys = [json.loads(line)["key"] for line in resumed]
    assert len(keys) == len(set(keys)) == 32 and set(keys) == {json.loads(line)["key"] for line in lines}
    assert summary["cells"] == {"planned": 32, "computed": 22, "resumed": 10, "rows": 32}


def test_load_results_reads_rows_and_tolerates_a_partial_line(full_run, tmp_path):
    _, run_dir, _ = full_run
    shutil.copy(run_dir / "results.jsonl", tmp_path / "results.jsonl")
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"protocol": "in_dom')
    df = load_results([run_dir, tmp_path])
    assert len(df) == 64 and set(df["run_dir"]) == {str(run_dir), str(tmp_path)}
    assert {"top1", "method", "param_gamma"} <= set(df.columns)


def test_cache_is_hit_on_the_second_run(env, tmp_path, monkeypatch):
    from tcube.methods.merger import Merger

    calls = {"n": 0}
    original = Merger.endpoint_logits

    def counting(self, images):
        calls["n"] += 1
        return original(self, images)

    monkeypatch.setattr(Merger, "endpoint_logits", counting)
    extra = [f"cache_dir={tmp_path / 'cache'}", "protocol.split=modality"]
    cfg = compose(overrides(env, protocol="base_to_novel", methods=("t3_cal",), extra=[NOVEL_GRAY] + extra))
    first = run(cfg, tmp_path / "a")
    assert calls["n"] > 0
    calls["n"] = 0
    second = run(cfg, tmp_path / "b")  # a new run dir: every cell is computed again, from cached logits
    assert calls["n"] == 0  # neither the endpoints nor the calibration ran again
    rows_a, rows_b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert rows_b["cached_endpoints"].all() and not rows_a["cached_endpoints"].any()
    assert list(rows_a["top1"]) == list(rows_b["top1"])
    cal = rows_b[rows_b["method"] == "t3_cal"]
    assert {"gamma", "lambda_min", "lambda_max"} <= set(cal["params"].iloc[0])  # the calibrated choice
    assert first["protocols"]["base_to_novel"]["splits"]["modality"]["hm"] == \
        second["protocols"]["base_to_novel"]["splits"]["modality"]["hm"]


@pytest.mark.parametrize("extra, message", [
    (["method.name=nope"], "unknown method 'nope'"),
    (["method.lambda_min=0.9", "method.lambda_max=0.1"], "lambda_min (0.9) must not exceed lambda_max"),
    (["engine=batch"], "use engine=fused"),
    (["protocol=corruption", "protocol.corruptions=[characters]"], "do not apply to synth2"),
    (["limit=0"], "limit must be ≥ 1"),
])
def test_bad_override_fails_fast_naming_the_fix(env, tmp_path, capsys, extra, message):
    cfg = compose(overrides(env, methods=("t3",), extra=extra))
    with pytest.raises(SystemExit) as exit_info:
        cli_in(cfg, tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "results.jsonl").exists()


def test_missing_data_file_names_the_fix(env, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = compose(overrides(env, extra=[f"data.root={empty}"]))
    with pytest.raises(SystemExit) as exit_info:
        cli_in(cfg, tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "synth2.npz not found" in err and "TCUBE_DATA_DIR" in err


def test_missing_model_spec_names_the_override(tmp_path, capsys):
    cfg = compose(["model=local", "progress=false"])
    with pytest.raises(SystemExit):
        cli_in(cfg, tmp_path)
    assert "model.generalist is not set" in capsys.readouterr().err


def cli_in(cfg, run_dir):
    """`cli` as Hydra calls it, with the run dir Hydra would provide."""
    import tcube.harness.evaluate as ev

    original = ev.run
    ev.run = lambda c: original(c, run_dir)
    try:
        cli(cfg)
    finally:
        ev.run = original


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tcube.eval", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_multirun_sweep(env, tmp_path):
    """The real entry point (`python -m tcube.eval -m ...`, basic launcher): one run dir per γ."""
    sweep = tmp_path / "sweep"
    args = [a for a in overrides(env, extra=["limit=4", f"hydra.sweep.dir={sweep}"]) if not a.startswith("method")]
    done = _cli(["-m", "method=t3", "method.gamma=0.25,1.0", *args], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.rglob("results.jsonl"))
    assert len(jobs) == 2 and all((j / "summary.json").is_file() and (j / "report.md").is_file() for j in jobs)
    df = load_results(sweep)
    assert sorted(df[df["method"] == "t3"]["param_gamma"]) == [0.25, 1.0]
    assert (df["n"] == 4).all()


def test_wandb_logger_runs_offline_and_finishes(env, tmp_path, monkeypatch):
    import types

    calls = []

    class Run:
        summary = {}

        def log(self, data):
            calls.append(("log", data))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run(),
                                 finish=lambda: calls.append(("finish", None)),
                                 Table=lambda columns, data: ("table", columns, data))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = compose(overrides(env, methods=("t3",), extra=["logger=wandb", "limit=4"]))
    run(cfg, tmp_path)
    init = [kw for name, kw in calls if name == "init"]
    assert len(init) == 1 and init[0]["mode"] == "offline" and init[0]["dir"] == str(tmp_path)
    assert [name for name, _ in calls].count("finish") == 1 and calls[-1][0] == "finish"
    assert sum(name == "log" for name, _ in calls) >= 3  # one per cell, then the results table


def test_in_domain_on_retinamnist_with_tiny_random_models(env, data_root, tmp_path):
    """Plumbing on retinamnist.npz (MD5-checked when real, RGB, 5 classes); the random models' accuracy means nothing."""
    args = [a for a in overrides(env, methods=("t3",), extra=["limit=16"]) if not a.startswith(("data.", "data="))]
    summary = run(compose(args + ["data=retina", f"data.root={data_root.path}"]), tmp_path)
    df = load_results(tmp_path)
    assert list(df["method"]) == ["generalist", "expert", "t3"]
    assert (df["n"] == 16).all() and (df["num_classes"] == 5).all() and (df["dataset"] == "retinamnist").all()
    assert summary["protocols"]["in_domain"]["top1"]["t3"] is not None


def test_image_folder_dataset_runs_from_the_harness(env, tmp_path, monkeypatch):
    """DESIGN §4: a data config may name an image folder (read through `datasets`) instead of an npz file."""
    from test_npz_dataset import write_image_folder

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    write_image_folder(tmp_path / "data" / "thyroid", classes=("benign nodule", "malignant nodule"), n=4)
    thyroid = {"name": "thyroid", "modality": "breast_ultrasound", "classes": ["benign nodule", "malignant nodule"]}
    args = [a for a in overrides(env, data=thyroid, protocol="corruption", methods=("t3",), expert_base=False,
                                 extra=["protocol.corruptions=[speckle_noise]", "protocol.severities=[1]"])
            if not a.startswith("data.root=")]
    run(compose(args + [f"data.root={tmp_path / 'data'}"]), tmp_path / "run")
    df = load_results(tmp_path / "run")
    assert set(df["dataset"]) == {"thyroid"} and (df["n"] == 8).all() and (df["num_classes"] == 2).all()
    assert set(df["corruption"].dropna()) == {"speckle_noise"} and (df["modality"] == "breast_ultrasound").all()
