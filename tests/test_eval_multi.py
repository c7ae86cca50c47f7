"""data=all (one expert per modality found), `{dataset}` model specs, protocol.limit and computed-once views."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_support import compose, make_env

from tcube.harness.evaluate import build_plan, run, to_settings

pytestmark = pytest.mark.usefixtures("one_thread")
FOUND = ("retinamnist", "breastmnist")


@pytest.fixture(scope="module")
def partial_root(tmp_path_factory, data_root) -> Path:
    """A data root with two of the four default modalities (links to data_root's files)."""
    root = tmp_path_factory.mktemp("partial")
    for name in FOUND:
        (root / f"{name}.npz").symlink_to(data_root.file(name))
    return root


def test_data_all_plans_one_expert_per_found_modality(partial_root):
    s = to_settings(compose(["model=local", "model.generalist=local-dir:/g", "model.expert='local-dir:/e/{dataset}'",
                             "model.expert_base='local-dir:/b/{dataset}'", "data=all", f"data.root={partial_root}",
                             "protocol=in_domain", "method=t3"]))
    plan = build_plan(s)
    assert [p.primary.name for p in plan.parts] == list(FOUND)
    assert [p.settings["model"]["expert"] for p in plan.parts] == [f"local-dir:/e/{d}" for d in FOUND]
    assert {k.what for k in plan.skipped} == {"pneumoniamnist", "ph2"}
    assert all("pneumoniamnist" in k.reason or "ph2" in k.reason for k in plan.skipped)
    rows = {(c.identity["expert_data"], c.identity["dataset"], c.identity["expert"]) for c in plan.cells}
    assert rows == {(d, d, f"local-dir:/e/{d}") for d in FOUND}


def test_data_all_with_no_file_names_the_fix(tmp_path):
    s = to_settings(compose(["model=local", "model.generalist=g", "model.expert=e", "data=all",
                             f"data.root={tmp_path}", "protocol=in_domain"]))
    with pytest.raises(FileNotFoundError, match="TCUBE_DATA_DIR"):
        build_plan(s)


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, clip_pair, partial_root):
    """in_domain + base_to_novel + corruption for two experts, on data_root's images with tiny models."""
    from tcube.models import save_local_dir

    root = tmp_path_factory.mktemp("multi")
    env = make_env(root, clip_pair)
    for name in FOUND:  # `{dataset}` picks each modality's own expert folder
        save_local_dir(clip_pair.expert, root / "experts" / name, model_cfg=clip_pair.model_cfg,
                       tokenizer=clip_pair.tokenizer)
    cfg = compose(["model=local", f"model.generalist=local-dir:{env['generalist']}",
                   f"model.expert='local-dir:{root}/experts/{{dataset}}'", "model.expert_base=null", "data=all",
                   f"data.root={partial_root}", "protocol=all", "protocol.split=modality",
                   "protocol.corruptions=[pixelate]", "protocol.severities=[1]", "protocol.limit=5", "limit=12",
                   "method=all", "method.methods=[t3,wise_ft,weight_average]", f"cache_dir={env['cache']}", "progress=false",
                   "device=cpu", "batch_size=8", "plots=false"])
    run_dir = root / "run"
    summary = run(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return summary, rows


def test_multi_run_rows_cover_both_experts_and_limits(multi_run):
    _, rows = multi_run
    by = {(r["expert_data"], r["protocol"], r["dataset"], r["corruption"], r["method"]): r for r in rows}
    assert len(by) == len(rows)
    assert {r["expert_data"] for r in rows} == set(FOUND)
    for d in FOUND:
        assert by[(d, "in_domain", d, None, "t3")]["n"] == 12                       # run-wide limit
        assert by[(d, "corruption", d, "pixelate", "t3")]["n"] == 5                # protocol.limit is narrower
        assert by[(d, "corruption", d, None, "t3")]["n"] == 5                      # clean reference: same images
        other = next(x for x in FOUND if x != d)
        novel = by[(d, "base_to_novel", other, None, "t3")]
        assert novel["role"] == "novel" and novel["expert"].endswith(f"experts/{d}")
    for r in rows:
        assert len(r["correct"]) == len(r["labels"]) == len(r["js_per_image"]) == r["n"]
        assert (r["lambda_per_image"] is None) == (r["method"] not in ("t3", "t3_batch", "t3_cal", "dawin"))


def test_views_shared_by_protocols_are_computed_once(multi_run):
    """base_to_novel's base set is in_domain's set: the row is copied (same numbers), not recomputed."""
    _, rows = multi_run
    by_key = {r["key"]: r for r in rows}
    copies = [r for r in rows if r.get("same_as")]
    assert {(r["protocol"], r["role"]) for r in copies} == {("base_to_novel", "base")}
    assert len(copies) == len(FOUND) * 5                               # generalist, expert, t3, wise_ft, weight_average
    for r in copies:
        source = by_key[r["same_as"]]
        assert source["protocol"] == "in_domain" and r["key"] != source["key"]
        assert (r["correct"], r["top1"], r["js_per_image"]) == (source["correct"], source["top1"],
                                                               source["js_per_image"])


def test_bit_identical_merges_share_one_pass(multi_run):
    """weight_average and wise_ft at α = 0.5 merge to the same bits: one pass, the same predictions."""
    _, rows = multi_run
    views = {}
    for r in rows:
        views.setdefault((r["expert_data"], r["protocol"], r["dataset"], r["corruption"]), {})[r["method"]] = r
    for view in views.values():
        wa, wise = view["weight_average"], view["wise_ft"]
        assert wise["same_weights_as"] is None and wa["same_weights_as"] == "wise_ft"
        assert wa["correct"] == wise["correct"] and wa["lambda_mean"] == wise["lambda_mean"] == 0.5
        assert wa["params"] == {} and wise["params"] == {"alpha": 0.5}
        assert view["t3"]["same_weights_as"] is None
