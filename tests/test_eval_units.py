"""Harness pieces in isolation: results file, logit cache and fingerprints, summaries, protocol listings."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from eval_support import SYNTH2, SYNTH4, compose, write_npz
from PIL import Image

from tcube.harness.cache import LogitCache, cache_key
from tcube.io import write_text_atomic
from tcube.models.fingerprint import model_fingerprint
from tcube.reporting.report import render_report, summarize
from tcube.reporting.results import ResultsFile, read_rows


# -- results.jsonl -----------------------------------------------------------------------------------
def test_results_file_appends_whole_lines_and_survives_a_killed_writer(tmp_path):
    f = ResultsFile(tmp_path / "results.jsonl")
    f.append({"key": "a", "top1": 50.0, "lambda_mean": float("nan")})
    f.append({"key": "b", "top1": 60.0})
    with open(f.path, "ab") as raw:
        raw.write(b'{"key": "c", "to')  # killed mid-line
    assert [r["key"] for r in f.rows()] == ["a", "b"]
    assert f.rows()[0]["lambda_mean"] is None  # NaN is written as null: strict JSON
    assert f.repair() > 0 and f.path.read_bytes().endswith(b"\n")
    f.append({"key": "c", "top1": 1.0})
    f.append({"key": "a", "top1": 0.0})  # a duplicate (e.g. two processes): the first write wins
    assert [(r["key"], r["top1"]) for r in read_rows(f.path)] == [("a", 50.0), ("b", 60.0), ("c", 1.0)]
    assert all(json.loads(line) for line in f.path.read_text().splitlines())


def test_atomic_text_write_leaves_no_temporary_files(tmp_path):
    write_text_atomic(tmp_path / "summary.json", "{}")
    write_text_atomic(tmp_path / "summary.json", '{"a": 1}')
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}


# -- cache and fingerprints --------------------------------------------------------------------------
def test_fingerprint_follows_weights_not_objects(clip_pair, monkeypatch):
    fp = model_fingerprint(clip_pair.generalist)
    assert fp == model_fingerprint(copy.deepcopy(clip_pair.generalist))
    assert fp != model_fingerprint(clip_pair.expert)
    changed = copy.deepcopy(clip_pair.generalist)
    with torch.no_grad():
        changed.visual.proj[0, 0] += 1e-6
    assert model_fingerprint(changed) != fp
    import tcube.models.fingerprint as cache_module

    monkeypatch.setattr(cache_module, "FULL_HASH_MAX_NUMEL", 16)  # the sampled path for large tensors
    monkeypatch.setattr(cache_module, "SAMPLE_NUMEL", 4)
    sampled = model_fingerprint(clip_pair.generalist)
    assert sampled != fp and sampled == model_fingerprint(copy.deepcopy(clip_pair.generalist))
    unsampled = copy.deepcopy(clip_pair.generalist)
    with torch.no_grad():
        unsampled.visual.proj[0, 1] += 1e-3  # between two sampled elements: the sums still see it
    assert model_fingerprint(unsampled) != sampled


def test_logit_cache_round_trip_and_damaged_entries(tmp_path):
    cache = LogitCache(tmp_path)
    key = cache_key({"dataset": "x", "corruption": None})
    assert cache.load_logits(key) is None
    g, e = torch.randn(5, 3), torch.randn(5, 3)
    cache.save_logits(key, g, e, {"dataset": "x"})
    got = cache.load_logits(key)
    assert torch.equal(got[0], g) and torch.equal(got[1], e) and cache.hits == 1
    next(tmp_path.rglob("*.safetensors")).write_bytes(b"garbage")
    assert cache.load_logits(key) is None  # damaged: recomputed, never trusted
    cache.save_json(key, {"t3_cal": {"gamma": 2.0}}, {})
    assert cache.load_json(key) == {"t3_cal": {"gamma": 2.0}}
    off = LogitCache(tmp_path, enabled=False)
    assert off.load_logits(key) is None and off.load_json(key) is None
    assert not list(tmp_path.rglob("*.tmp"))


def test_default_cache_dir_follows_tcube_home(monkeypatch, tmp_path):
    from tcube.harness.cache import default_cache_dir

    monkeypatch.setenv("TCUBE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cache" / "logits"


# -- summaries ---------------------------------------------------------------------------------------
def _row(protocol, method, top1, **kw):
    return {"protocol": protocol, "method": method, "top1": top1, "balanced_acc": top1, "lambda_mean": 0.5,
            "dataset": kw.pop("dataset", "d"), "subset": kw.pop("subset", "all"), **kw}


def test_summary_mce_harmonic_mean_and_error_reduction():
    rows = [_row("in_domain", "generalist", 60.0), _row("in_domain", "expert", 80.0), _row("in_domain", "t3", 90.0)]
    for m, clean, errs in (("generalist", 80.0, (40.0, 60.0)), ("expert", 90.0, (20.0, 30.0)), ("t3", 90.0, (30.0, 45.0))):
        rows.append(_row("corruption", m, clean, corruption=None, severity=0))
        rows += [_row("corruption", m, 100.0 - e, corruption="noise", severity=s) for s, e in zip((1, 2), errs)]
    for m, base, novel in (("generalist", 50.0, 80.0), ("expert", 90.0, 40.0), ("t3", 80.0, 70.0)):
        rows.append(_row("base_to_novel", m, base, split="modality", role="base"))
        rows.append(_row("base_to_novel", m, novel, split="modality", role="novel", dataset="n"))
    s = summarize(rows, ["generalist", "expert", "t3"])
    c = s["protocols"]["corruption"]
    assert c["mce"] == {"generalist": pytest.approx(100.0), "expert": pytest.approx(50.0), "t3": pytest.approx(75.0)}
    # relative mCE: Σ(err − clean err) / Σ(ref − ref clean): expert (10 + 20) / (20 + 40)
    assert c["relative_mce"]["expert"] == pytest.approx(50.0)
    d = s["protocols"]["in_domain"]
    assert d["error_reduction_vs_generalist"]["t3"] == pytest.approx(75.0)  # 40 % → 10 % error
    assert d["error_reduction_vs_expert"]["t3"] == pytest.approx(50.0)
    assert s["harmonic_mean"]["modality"]["t3"] == pytest.approx(2 * 80 * 70 / 150)
    report = render_report(s, rows, {"data": "d"})
    assert "| t3 | 90.0 |" in report and "| expert | 50.0 |" in report


# -- protocol listings (no models loaded) ------------------------------------------------------------
@pytest.fixture()
def data_root(tmp_path):
    write_npz(tmp_path, "synth2", 2, rgb=True)
    write_npz(tmp_path, "synth4", 4, rgb=False, n=8)
    return tmp_path


def _settings(data_root, data, extra=()):
    from tcube.harness.evaluate import to_settings

    classes = "[" + ",".join(data["classes"]) + "]"
    return to_settings(compose(["model=local", "model.generalist=g", "model.expert=e", "data=ph2",
                                f"data.name={data['name']}", f"data.modality={data['modality']}",
                                f"data.classes={classes}", "data.descriptions=null", f"data.root={data_root}",
                                *extra]))


def test_class_split_is_skipped_with_a_reason(data_root):
    from tcube.harness.evaluate import build_plan

    plan = build_plan(_settings(data_root, SYNTH4, ["protocol=base_to_novel", "protocol.split=class"]))
    assert plan.cells == [] and "model.expert_base is not set" in plan.skipped[0].reason
    plan = build_plan(_settings(data_root, SYNTH2, ["protocol=base_to_novel", "protocol.split=class",
                                                   "model.expert_base=b"]))
    assert plan.cells == [] and "needs ≥ 4" in plan.skipped[0].reason
    plan = build_plan(_settings(data_root, SYNTH4, ["protocol=base_to_novel", "protocol.split=class",
                                                   "model.expert_base=b", "method=t3"]))
    subsets = {(c.eval_set.subset, c.eval_set.classes, c.eval_set.expert) for c in plan.cells}
    assert subsets == {("base", (0, 1), "expert_base"), ("novel", (2, 3), "expert_base")}
    assert [c.variant.method for c in plan.cells[:3]] == ["generalist", "expert", "t3"]


def test_corruption_plan_and_cell_keys(data_root):
    from tcube.data import corruptions_for
    from tcube.harness.evaluate import build_plan

    s = _settings(data_root, SYNTH2, ["protocol=corruption", "method=wise_ft"])
    plan = build_plan(s)
    views = {(c.eval_set.corruption, c.eval_set.severity) for c in plan.cells}
    assert len(views) == 1 + 5 * len(corruptions_for("retinamnist")) and (None, 0) in views
    assert len({c.key for c in plan.cells}) == len(plan.cells)
    swept = build_plan(_settings(data_root, SYNTH2, ["protocol=corruption", "method=wise_ft", "method.alpha=0.3"]))
    ref = {c.key for c in plan.cells if c.variant.method == "generalist"}
    assert ref == {c.key for c in swept.cells if c.variant.method == "generalist"}  # α does not re-key references
    assert not ({c.key for c in plan.cells} >= {c.key for c in swept.cells if c.variant.method == "wise_ft"})


def test_corruption_rows_name_their_reading_and_keys_follow_it(data_root):
    from tcube.harness.evaluate import build_plan

    default = build_plan(_settings(data_root, SYNTH2, ["protocol=corruption", "method=wise_ft"]))
    native = build_plan(_settings(data_root, SYNTH2, ["protocol=corruption", "method=wise_ft",
                                                      "protocol.reading=native"]))
    assert {c.identity["corruption_reading"] for c in default.cells} == {"224"}  # clean cells included
    assert {c.identity["corruption_reading"] for c in native.cells} == {"native"}
    assert not {c.key for c in default.cells} & {c.key for c in native.cells}  # a reading is its own cell
    noisy = next(c for c in default.cells if c.eval_set.corruption == "gaussian_noise" and c.eval_set.severity == 2)
    assert noisy.identity["corruption_param"] == 0.08  # retinamnist's list, in the row
    in_domain = build_plan(_settings(data_root, SYNTH2, ["protocol=in_domain", "method=wise_ft"]))
    assert all("corruption_reading" not in c.identity for c in in_domain.cells)


@pytest.mark.parametrize("value", ["28", "mixed", "Native"])
def test_protocol_reading_is_validated(data_root, value):
    with pytest.raises(ValueError, match=r"protocol.reading must be one of \['224', 'native'\]"):
        _settings(data_root, SYNTH2, ["protocol=corruption", f"protocol.reading={value}"])


@pytest.mark.parametrize("reading,size", [("native", 28), ("224", 224)])
def test_corruption_is_applied_in_its_reading_and_seeded_per_image(data_root, reading, size):
    from tcube.data.corruptions import to_224
    from tcube.harness.runner import CellRunner
    from tcube.protocols import resolve_data

    data = resolve_data(dict(SYNTH4, modality="chest_xray"), data_root)
    as_tensor = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1).float()  # noqa: E731
    runner = CellRunner(lambda role: None, cache=LogitCache(enabled=False), engine="fused", seed=3)
    full, _ = runner.views.load_view(data, "test", None, as_tensor, "gaussian_noise", 3, reading=reading)
    runner.views.limit = 4
    part, labels = runner.views.load_view(data, "test", None, as_tensor, "gaussian_noise", 3, reading=reading)
    idx = np.sort(np.random.default_rng(3).choice(8, size=4, replace=False))
    assert torch.equal(part, full[idx]) and full.shape[-1] == size  # same image, same noise, whatever the subset
    clean, _ = runner.views.load_view(data, "test", None, as_tensor, reading=reading)
    assert not torch.equal(part, clean) and clean.shape[-1] == size  # the protocol's clean set: same reading
    from tcube.data.npz import load_npz_split

    first = load_npz_split(data.path, "test")[0][idx[0]]
    first = to_224(first) if reading == "224" else first
    assert torch.equal(clean[0], as_tensor(Image.fromarray(first).convert("RGB")))
    assert labels.tolist() == (idx % 4).tolist()
    base, y = runner.views.load_view(data, "test", (2, 3), as_tensor)
    assert set(y.tolist()) <= {0, 1}  # a class subset is its own label space
