"""The mixed protocol: a seeded interleaved stream over the union label space, K experts, resumable rows, report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from common import perturbed
from eval_support import compose

from tcube.harness.evaluate import build_plan, run, to_settings
from tcube.protocols.mixed import shared_corruptions, stream_order

pytestmark = pytest.mark.usefixtures("one_thread")
DATASETS = ("retinamnist", "pneumoniamnist", "breastmnist", "ph2")
METHODS = ["multi_expert", "multi_ensemble", "multi_average", "multi_task_arithmetic_cal", "oracle_route",
           "multi_t3", "router", "multi_t3_batch"]


def test_stream_order_interleaves_every_image_once():
    domain, position = stream_order([3, 5, 2], seed=0)
    assert sorted(zip(domain.tolist(), position.tolist())) == [(k, i) for k, n in enumerate([3, 5, 2]) for i in range(n)]
    assert not np.array_equal(domain, np.sort(domain))  # interleaved, not concatenated
    assert np.array_equal(stream_order([3, 5, 2], seed=0)[0], domain)
    assert not np.array_equal(stream_order([3, 5, 2], seed=1)[0], domain)


@pytest.fixture(scope="module")
def mixed_env(tmp_path_factory, clip_pair, data_root):
    """Four local-dir experts (expert 0 = the generalist itself, so its row must equal the generalist's)."""
    from tcube.models import save_local_dir

    root = tmp_path_factory.mktemp("mixed")
    save = lambda m, name: save_local_dir(m, root / name, model_cfg=clip_pair.model_cfg,  # noqa: E731
                                          tokenizer=clip_pair.tokenizer)
    gen = save(clip_pair.generalist, "generalist")
    experts = [save(clip_pair.generalist if k == 0 else perturbed(clip_pair.generalist, seed=20 + k, scale=0.2),
                    f"expert{k}") for k in range(4)]
    return root, gen, experts, data_root


def _overrides(env, extra=()):
    root, gen, experts, data_root = env
    return ["model=local", f"model.generalist=local-dir:{gen}", "model.expert=unused",
            "model.experts=[" + ",".join(f"local-dir:{e}" for e in experts) + "]", "model.expert_base=null",
            "data=all", f"data.root={data_root.path}", "protocol=mixed", "protocol.corruptions=[pixelate]",
            "protocol.limit=4", "limit=6", "protocol.methods=[" + ",".join(METHODS) + "]", "tuning_limit=6",
            f"cache_dir={root}/cache", "progress=false", "device=cpu", "batch_size=8", "plots=false", *extra]


def test_plan_lists_views_times_variants_and_checks_experts(mixed_env):
    plan = build_plan(to_settings(compose(_overrides(mixed_env))))
    assert not plan.cells  # no pair protocol ran
    views = {(c.view.corruption, c.view.severity) for c in plan.mixed}
    assert views == {(None, 0), ("pixelate", 3)}
    # multi_generalist heads every table; multi_expert once per expert
    assert len(plan.mixed) == 2 * (1 + 4 + len(METHODS) - 1)
    assert len({c.key for c in plan.mixed}) == len(plan.mixed)
    val = build_plan(to_settings(compose(_overrides(mixed_env, ["protocol.data_split=val"]))))
    assert {c.identity["data_split"] for c in val.mixed} == {"val"}
    assert not {c.key for c in val.mixed} & {c.key for c in plan.mixed}
    assert all("data_split" not in c.identity for c in plan.mixed)  # test rows keep their keys
    with pytest.raises(ValueError, match="model.experts lists 2 experts for the 4 datasets"):
        build_plan(to_settings(compose(_overrides(mixed_env, ["model.experts=[a,b]"]))))
    with pytest.raises(ValueError, match="merges a pair"):
        build_plan(to_settings(compose(_overrides(mixed_env, ["protocol.methods=[t3]"]))))
    with pytest.raises(ValueError, match="not in every stream dataset's list"):
        build_plan(to_settings(compose(_overrides(mixed_env, ["protocol.corruptions=[characters]"]))))


def test_shared_corruptions_are_in_every_list(mixed_env):
    plan = build_plan(to_settings(compose(_overrides(mixed_env))))
    assert shared_corruptions([p.primary for p in plan.parts]) == ["pixelate", "jpeg_compression", "speckle_noise",
                                                                     "brightness_down", "contrast_down"]


def test_mixed_run_scores_resumes_and_reports(mixed_env, tmp_path):
    cfg = compose(_overrides(mixed_env))
    run(cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * (4 + len(METHODS))
    clean = {(r["method"], r["config_params"].get("index")): r for r in rows if r["corruption"] is None}
    n = clean[("multi_generalist", None)]["n"]
    assert n == 4 * 6  # limit=6 images of each of the four test splits
    gen = clean[("multi_generalist", None)]
    assert set(gen["per_dataset_top1"]) == set(DATASETS)
    assert gen["macro_top1"] == pytest.approx(np.mean(list(gen["per_dataset_top1"].values())))
    assert clean[("multi_expert", 0)]["correct"] == gen["correct"]  # expert 0 is the generalist
    assert clean[("oracle_route", None)]["route_accuracy"] == 100.0
    assert clean[("router", None)]["weights_mean"] is not None and clean[("multi_ensemble", None)]["weights_mean"] is None
    labels, domain = np.array(gen["labels"]), np.array([int(c) for c in gen["domain"]])
    offsets = {0: (0, 5), 1: (5, 7), 2: (7, 9), 3: (9, 12)}  # union classes of each dataset
    assert all(offsets[d][0] <= y < offsets[d][1] for y, d in zip(labels, domain))
    corrupted = [r for r in rows if r["corruption"] == "pixelate"]
    assert {r["n"] for r in corrupted} == {4 * 4} and {r["corruption_reading"] for r in corrupted} == {"224"}
    report = (tmp_path / "report.md").read_text()
    assert "Mixed stream: one generalist, 4 experts" in report and "expert: ph2" in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    oracle = summary["mixed"]["views"]["clean"]["oracle_route"]
    assert oracle["delta_macro_vs_oracle"][0] == 0.0
    assert summary["cells"]["computed"] == len(rows)
    again = run(cfg, tmp_path)  # resumes: nothing recomputed, nothing duplicated
    assert again["cells"]["computed"] == 0
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(rows)
