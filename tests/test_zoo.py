"""tcube.zoo: naming, storage and the smoke zoo (tiny step counts) trained on data_root (synthetic; real too when present)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tcube.zoo import build, model_names, read_manifest, resolve_spec, store, zoo_dir
from tcube.zoo.recipe import Augment, get_recipe

ZOO_FILES = ("retinamnist", "pneumoniamnist", "breastmnist", "ph2")


# ---------------------------------------------------------------------------------- no data needed

def test_names_and_specs(monkeypatch, tmp_path):
    monkeypatch.setenv("TCUBE_HOME", str(tmp_path))
    assert model_names() == ["generalist", "expert-retinamnist", "expert-pneumoniamnist", "expert-breastmnist",
                             "expert-ph2", "expert-retinamnist-base"]
    assert store.parse_name("expert-retina").name == "expert-retinamnist"   # registry aliases work
    assert store.parse_name("expert-derm").name == "expert-ph2"
    assert zoo_dir("smoke", 3) == tmp_path / "zoo" / "smoke" / "seed3"
    for spec in ("local-dir:/some/folder", "hf-hub:org/repo", "ViT-B-32:openai", "/x/expert.safetensors"):
        assert resolve_spec(spec) == spec                                    # non-zoo specs pass through
    for bad in ("zoo:nope", "zoo:expert-breastmnist-base", "zoo:expert-dermamnist", "zoo:"):
        with pytest.raises(ValueError, match="valid names"):
            resolve_spec(bad, profile="smoke")
    with pytest.raises(ValueError, match="unknown zoo profile"):
        zoo_dir("huge")
    assert not any(tmp_path.iterdir())                                       # nothing was created


def test_missing_data_is_the_data_layers_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TCUBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TCUBE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))                               # no ~/.medmnist fallback
    monkeypatch.setenv("TCUBE_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="TCUBE_DATA_DIR"):
        resolve_spec("zoo:expert-ph2", profile="smoke")
    assert not (zoo_dir("smoke", 0) / "generalist").exists()


def test_augmentation_is_seeded_bounded_and_keeps_grey_grey():
    from tcube.zoo.augment import augment_batch

    grey = torch.rand(8, 1, 32, 32).expand(-1, 3, -1, -1).contiguous()
    aug = Augment(blur_p=0.5, vflip=0.5)
    a = augment_batch(grey, aug, torch.Generator().manual_seed(0))
    b = augment_batch(grey, aug, torch.Generator().manual_seed(0))
    c = augment_batch(grey, aug, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == grey.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])


def test_balanced_sampler_shares_and_passes():
    from tcube.zoo.train import BatchSampler

    sampler = BatchSampler([10, 3, 50], batch_size=8, generator=torch.Generator().manual_seed(0))
    picks = [sampler(step) for step in range(30)]
    assert all(sum(len(p) for p in step) == 8 for step in picks)
    assert all(abs(len(step[0]) - len(step[1])) <= 1 for step in picks)   # every dataset an equal share
    first_pass = torch.cat([step[0] for step in picks])[:10]
    assert sorted(first_pass.tolist()) == list(range(10))                  # without replacement per pass


def test_publish_is_atomic(monkeypatch, tmp_path):
    from tcube.models import tokenizer_for
    from tcube.zoo.train import new_generalist

    recipe = get_recipe("smoke")
    model, tok = new_generalist(recipe, 0), tokenizer_for(recipe.model_cfg)
    final = tmp_path / "generalist"

    def killed(path):
        raise KeyboardInterrupt("simulated kill while writing")

    monkeypatch.setattr(store, "sha256", killed)
    with pytest.raises(KeyboardInterrupt):
        store.publish(model, final, {}, recipe, tok, {})
    assert not final.exists() and any(tmp_path.glob(".generalist.partial-*"))  # nothing half-written in place
    monkeypatch.undo()
    store.publish(model, final, {}, recipe, tok, {})
    assert read_manifest(final)["weights_sha256"] and sorted(p.name for p in tmp_path.iterdir()) == ["generalist"]


def test_labelled_share_is_class_stratified_seeded_and_names_bad_fractions():
    from dataclasses import replace

    from tcube.zoo.data import Split, labelled_share

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 3)
    split = Split("d", "train", torch.arange(83).view(83, 1, 1, 1).to(torch.uint8), labels, (0, 1, 2),
                  ("a", "b", "c"), ("{}",))
    share = labelled_share(split, 0.1, seed=0)
    assert torch.bincount(share.labels).tolist() == [5, 3, 1]            # ceil(0.1 · n_c), at least one per class
    assert torch.equal(share.labels, labels[share.images.flatten().long()])  # images stay with their labels
    assert share.images.flatten().tolist() == sorted(share.images.flatten().tolist())  # file order
    again, other = labelled_share(split, 0.1, seed=0), labelled_share(split, 0.1, seed=1)
    assert torch.equal(again.images, share.images) and not torch.equal(other.images, share.images)
    assert labelled_share(split, 1.0, seed=0) is split
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        labelled_share(split, 0.0, seed=0)
    with pytest.raises(ValueError, match="generalist_fraction"):
        replace(get_recipe("default"), generalist_fraction=1.5)
    assert get_recipe("default").generalist_fraction == 0.1 and get_recipe("full").generalist_fraction == 1.0
    # the profiles of the gap sweep differ from the default only in the share
    for name in ("share05", "share25", "full"):
        r = get_recipe(name)
        assert replace(r, profile="default", generalist_fraction=0.1) == get_recipe("default")


# --------------------------------------------------------------------------------- smoke zoo

@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory, data_root):
    """The smoke generalist + BreastMNIST expert, trained from data_root's files into a tmp TCUBE_HOME (one per root).

    Under pytest-xdist the workers share one home: the zoo's own lock makes the second worker wait
    and reuse the models instead of training them again (so `calls` is empty there).
    """
    DATA = data_root.path
    root = tmp_path_factory.getbasetemp()
    home = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / f"zoo_home_{data_root.kind}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TCUBE_HOME", str(home))
        calls = []
        train_model = build.train_model
        mp.setattr(build, "train_model", lambda key, *a, **k: calls.append(key.name) or train_model(key, *a, **k))
        exp_spec = resolve_spec("zoo:expert-breastmnist", profile="smoke", seed=0, data_root=DATA)
        gen_spec = resolve_spec("zoo:generalist", profile="smoke", seed=0, data_root=DATA)
        yield SimpleNamespace(home=home, gen_spec=gen_spec, exp_spec=exp_spec, calls=calls, data=DATA)


def _folder(spec: str) -> Path:
    assert spec.startswith("local-dir:")
    return Path(spec[len("local-dir:"):])


def test_smoke_pair_loads_and_merges_images(smoke_zoo):
    from tcube import load_pair, merge_and_predict
    from tcube.data import NpzDataset, find_npz, get_dataset_spec, prompts_for

    assert smoke_zoo.calls in ([], ["generalist", "expert-breastmnist"])     # generalist first, each once
    assert _folder(smoke_zoo.exp_spec) == zoo_dir("smoke", 0) / "expert-breastmnist"
    assert _folder(smoke_zoo.exp_spec).is_absolute()
    pair = load_pair(smoke_zoo.gen_spec, smoke_zoo.exp_spec)
    data = NpzDataset(find_npz("breastmnist", root=smoke_zoo.data), "test", transform=pair.preprocess)
    images = torch.stack([data[i][0] for i in range(6)])
    assert images.shape == (6, 3, 32, 32)
    descriptions, templates = prompts_for(get_dataset_spec("breastmnist"))
    out = merge_and_predict(pair.generalist, pair.expert, images, descriptions, tokenizer=pair.tokenizer,
                            templates=templates, method="t3")
    assert out.logits.shape == (6, 2) and torch.isfinite(out.logits).all()
    assert ((out.lambdas >= 0.5) & (out.lambdas <= 0.587)).all()           # paper defaults: λ ∈ [0.5, 0.586]
    assert not torch.equal(*(p.state_dict()["visual.proj"] for p in (pair.generalist, pair.expert)))


def test_manifest_records_data_recipe_and_lineage(smoke_zoo):
    from tcube.data import file_md5
    from tcube.zoo.train import training_device

    gen, exp = (read_manifest(_folder(s)) for s in (smoke_zoo.gen_spec, smoke_zoo.exp_spec))
    assert set(gen["trained_on"]) == set(ZOO_FILES) and list(exp["trained_on"]) == ["breastmnist"]
    for m in (gen, exp):
        assert set(m["data"]) == set(ZOO_FILES)
        for entry in m["data"].values():
            assert entry["md5"] == file_md5(entry["file"])
        assert m["seed"] == 0 and m["profile"] == "smoke" and m["recipe_digest"] == get_recipe("smoke").digest()
        assert set(d for d in m["val"] if ":" not in d) == set(ZOO_FILES)
        assert 0 <= m["val"]["breastmnist"]["top1"] <= 100 and m["versions"]["torch"] == torch.__version__
        assert m["training"]["device"] == str(training_device())              # CPU here; a GPU when visible
    assert exp["parent"]["weights_sha256"] == gen["weights_sha256"]
    recipe = get_recipe("smoke")
    assert (gen["training"]["steps"], exp["training"]["steps"]) == (recipe.generalist.steps, recipe.expert.steps)
    config = json.loads((_folder(smoke_zoo.exp_spec) / "open_clip_config.json").read_text())
    assert config["tcube"]["zoo_model"] == "expert-breastmnist"


def test_second_resolve_reuses_the_folder(smoke_zoo):
    folder = _folder(smoke_zoo.exp_spec)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    n_calls = len(smoke_zoo.calls)
    assert resolve_spec("zoo:expert-breastmnist", profile="smoke", seed=0, data_root=smoke_zoo.data) == smoke_zoo.exp_spec
    assert resolve_spec("zoo:expert-breastmnist", profile="smoke", seed=0, data_root=smoke_zoo.data) == smoke_zoo.exp_spec
    assert len(smoke_zoo.calls) == n_calls and (folder / "manifest.json").stat().st_mtime_ns == stamp

    from tcube.zoo.__main__ import main

    assert main(["--profile", "smoke", "--data-root", str(smoke_zoo.data), "--only", "expert-breast", "--no-progress"]) == 0
    assert len(smoke_zoo.calls) == n_calls                                  # the CLI found it too


def test_training_is_deterministic(smoke_zoo):
    from tcube.models import load_state_dict_file
    from tcube.zoo.build import train_model
    from tcube.zoo.store import ModelKey

    recipe = get_recipe("smoke")
    stored = {name: load_state_dict_file(zoo_dir("smoke", 0) / name / "open_clip_model.safetensors")
              for name in ("generalist", "expert-breastmnist")}
    # bit-identity holds at equal thread counts (GEMM reductions): retrain at the stored models' count
    threads = read_manifest(zoo_dir("smoke", 0) / "generalist")["training"]["threads"]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        again, _, _ = train_model(ModelKey("generalist"), recipe, 0, smoke_zoo.data, progress=False)
        other, _, _ = train_model(ModelKey("generalist"), recipe, 1, smoke_zoo.data, progress=False)
        expert, _, _ = train_model(ModelKey("expert", "breastmnist"), recipe, 0, smoke_zoo.data, generalist=again,
                                   progress=False)
    finally:
        torch.set_num_threads(before)
    for name, model in (("generalist", again), ("expert-breastmnist", expert)):
        state = model.state_dict()
        assert state.keys() == stored[name].keys()
        assert all(torch.equal(state[k], stored[name][k]) for k in state), f"{name} is not bit-identical"
    assert not torch.equal(other.state_dict()["visual.proj"], stored["generalist"]["visual.proj"])


def test_eval_runs_end_to_end_on_the_smoke_zoo(smoke_zoo, tmp_path):
    """`model=zoo` resolves `zoo:expert-{dataset}` to the smoke zoo's BreastMNIST expert (no retraining)."""
    from eval_support import compose

    from tcube.harness.evaluate import run

    n_calls = len(smoke_zoo.calls)
    summary = run(compose(["model=zoo", "model.zoo_profile=smoke", "data=breast", f"data.root={smoke_zoo.data}",
                           "protocol=in_domain", "method=all", "method.methods=[t3,t3_batch]", "limit=16",
                           f"cache_dir={tmp_path / 'cache'}", "progress=false", "plots=false", "device=cpu"]),
                  tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["generalist", "expert", "t3", "t3_batch"]
    assert all(r["expert"] == "zoo:expert-breastmnist" and r["zoo_profile"] == "smoke" and r["n"] == 16 for r in rows)
    assert len(smoke_zoo.calls) == n_calls                                   # the trained pair was reused
    assert summary["protocols"]["in_domain"]["top1"]["t3"] is not None


def test_union_objective_scores_every_image_against_every_dataset():
    from tcube.zoo.train import class_contrastive_loss

    g = torch.Generator().manual_seed(0)
    img = torch.randn(5, 8, generator=g)
    heads = [torch.nn.functional.normalize(torch.randn(c, 8, generator=g), dim=-1) for c in (3, 2)]
    groups, labels, scale = [slice(0, 3), slice(3, 5)], torch.tensor([0, 2, 1, 1, 0]), torch.tensor(1.0)
    union = class_contrastive_loss(img, heads, groups, labels, scale, union=True)
    logits = scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ torch.cat(heads).T
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 1, 4, 3]))
    torch.testing.assert_close(union, expected)
    assert not torch.isclose(union, class_contrastive_loss(img, heads, groups, labels, scale))
    one = [slice(0, 5)]  # one dataset: both objectives are the same loss
    torch.testing.assert_close(class_contrastive_loss(img, heads[:1], one, labels % 3, scale, union=True),
                               class_contrastive_loss(img, heads[:1], one, labels % 3, scale))


def test_new_recipe_options_keep_stored_digests():
    from tcube.zoo.recipe import PROFILES

    # digests of round two's zoos (stored models are found by them): an option at its default changes nothing
    assert PROFILES["default"].digest() == "528b947976f42aa0" and PROFILES["full"].digest() == "f83a1fe9b147f90d"
    assert PROFILES["union"].digest() != PROFILES["default"].digest()
