"""Fine-tuning experts from a generalist (tcube.finetune) and LoRA experts (tcube.models.lora), on tiny real models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from common import TINY_CLIP_CFG, seeded_images

from tcube.finetune import Recipe, finetune
from tcube.models import load_model, load_pair, save_local_dir
from tcube.models.fingerprint import model_fingerprint
from tcube.models.lora import (
    FACTORS_FILE,
    LoraConfig,
    LoraFactors,
    add_lora,
    apply_factors,
    factors_of,
    lora_factors,
    merge_lora,
    target_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = Recipe(steps=8, batch_size=8, lr=1e-3, eval_every=4)


@pytest.fixture(scope="module")
def generalist_dir(tmp_path_factory, clip_pair):
    return save_local_dir(clip_pair.generalist, tmp_path_factory.mktemp("gen") / "generalist",
                          model_cfg=TINY_CLIP_CFG, tokenizer=clip_pair.tokenizer)


@pytest.fixture(scope="module")
def biomed_dir(tmp_path_factory, biomed_pair):
    return save_local_dir(biomed_pair.generalist, tmp_path_factory.mktemp("biomed") / "generalist",
                          model_cfg=biomed_pair.model_cfg, tokenizer=biomed_pair.tokenizer)


def _with_random_adapters(model, config: LoraConfig, seed: int = 0):
    """Adapters with a non-zero B (a trained adapter's state), so the expert differs from the generalist."""
    torch.manual_seed(seed)
    add_lora(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model


# -- LoRA adapters -----------------------------------------------------------------------------------
def test_targets_pick_each_family_attention_and_mlp(clip_pair, biomed_pair):
    names = target_weights(clip_pair.generalist, LoraConfig(targets=("attn",)))
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in names
    assert "transformer.resblocks.1.attn.out_proj.weight" in names and not any("mlp" in n for n in names)
    biomed = target_weights(biomed_pair.generalist, LoraConfig(targets=("attn", "mlp"), towers=("visual",)))
    assert "visual.trunk.blocks.0.attn.qkv.weight" in biomed and "visual.trunk.blocks.1.mlp.fc2.weight" in biomed
    assert not any(n.startswith("text.") for n in biomed)
    bert = target_weights(biomed_pair.generalist, LoraConfig(targets=("attn",), towers=("text",)))
    assert {"text.transformer.encoder.layer.0.attention.self.query.weight",
            "text.transformer.encoder.layer.0.attention.output.dense.weight"} <= set(bert)
    assert not any("intermediate" in n or n.endswith("layer.0.output.dense.weight") for n in bert)
    with pytest.raises(ValueError, match="match no weight matrix"):
        target_weights(clip_pair.generalist, LoraConfig(targets=("nothing_here",)))
    with pytest.raises(ValueError, match="regular expression"):
        LoraConfig(targets=("attn(",))
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)


def test_adapters_start_at_the_generalist_and_factors_rebuild_the_expert(any_pair):
    import copy

    gen = any_pair.generalist
    model = copy.deepcopy(gen)
    add_lora(model, LoraConfig(targets=("attn", "mlp")))
    x = seeded_images(3)
    assert torch.equal(model.encode_image(x), gen.encode_image(x))  # B = 0: the generalist exactly
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    model = _with_random_adapters(copy.deepcopy(gen), LoraConfig(targets=("attn", "mlp")))
    trained = model.encode_image(x)
    factors = LoraFactors(lora_factors(model), model_fingerprint(gen))
    rebuilt = apply_factors(gen, factors)
    merged = merge_lora(model)
    assert sorted(merged.state_dict()) == sorted(gen.state_dict())  # a plain open_clip model again
    torch.testing.assert_close(merged.encode_image(x), trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rebuilt.encode_image(x), trained, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trained, gen.encode_image(x), atol=1e-3)
    assert factors_of(rebuilt) is factors and factors_of(gen) is None


# -- fine-tuning ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["pneumoniamnist"])
def test_finetuned_expert_beats_its_generalist_on_the_test_split(data_root, generalist_dir, tmp_path, dataset):
    """Train on train, select on val, judge on test (which neither saw): the expert must beat the generalist."""
    from tcube.zoo.data import load_split
    from tcube.zoo.train import evaluate

    out = finetune(f"local-dir:{generalist_dir}", dataset, out=tmp_path / "expert", data_root=data_root.path,
                   recipe=Recipe(steps=40, batch_size=32, lr=1e-3, eval_every=10), device="cpu", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    curve = manifest["validation"]["curve"]
    assert [c["step"] for c in curve] == [0, 10, 20, 30, 40] and manifest["validation"]["selected_step"] > 0
    assert manifest["data"]["md5"] and manifest["generalist"]["fingerprint"] == model_fingerprint(
        load_model(f"local-dir:{generalist_dir}").model)
    pair = load_pair(f"local-dir:{generalist_dir}", f"local-dir:{out}")
    pre = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    test = load_split(dataset, "test", root=data_root.path, preprocess_cfg=pre)
    gen_top1 = evaluate(pair.generalist, pair.tokenizer, test, pre)["top1"]
    exp_top1 = evaluate(pair.expert, pair.tokenizer, test, pre)["top1"]
    assert exp_top1 >= gen_top1 + 5, (data_root.kind, gen_top1, exp_top1)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_biomedclip_shaped_model_finetunes(one_data_root, biomed_dir, tmp_path, mode):
    recipe = Recipe(mode=mode, lora=LoraConfig(rank=4, targets=("attn", "mlp")), steps=6, batch_size=8, lr=1e-3,
                    eval_every=3)
    out = finetune(f"local-dir:{biomed_dir}", "breastmnist", out=tmp_path / mode, recipe=recipe,
                   data_root=one_data_root.path, device="cpu", progress=False)
    pair = load_pair(f"local-dir:{biomed_dir}", f"local-dir:{out}")
    manifest = json.loads((out / "manifest.json").read_text())
    gen, exp = dict(pair.generalist.named_parameters()), dict(pair.expert.named_parameters())
    changed = {n for n in gen if not torch.equal(gen[n], exp[n])}
    if mode == "lora":
        assert (out / FACTORS_FILE).is_file() and not (out / "open_clip_config.json").exists()
        assert changed and changed <= set(manifest["adapted"])  # only adapted matrices move
        assert any(n.startswith("visual.trunk") for n in changed) and any(".attention." in n for n in changed)
        assert factors_of(pair.expert) is not None
    else:
        assert any(n.startswith("text.") for n in changed) and any(n.startswith("visual.") for n in changed)
        assert factors_of(pair.expert) is None


def test_merged_lora_expert_loads_alone_and_equals_the_factors(one_data_root, generalist_dir, tmp_path):
    recipe = Recipe(mode="lora", lora=LoraConfig(rank=2), steps=4, batch_size=8, lr=1e-2, eval_every=2,
                    metric="balanced_acc")
    runs = {save: finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / save, recipe=recipe,
                           save=save, data_root=one_data_root.path, device="cpu", progress=False)
            for save in ("factors", "merged")}
    alone = load_model(f"local-dir:{runs['merged']}").model  # a complete open_clip folder
    via_factors = load_pair(f"local-dir:{generalist_dir}", f"local-dir:{runs['factors']}").expert
    x = seeded_images(2)
    torch.testing.assert_close(alone.encode_image(x), via_factors.encode_image(x), atol=1e-5, rtol=1e-5)
    assert factors_of(alone) is not None
    with pytest.raises(ValueError, match="needs its generalist"):
        load_model(f"local-dir:{runs['factors']}")


def test_factors_refuse_another_generalist(one_data_root, generalist_dir, tmp_path, clip_pair):
    out = finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "e", data_root=one_data_root.path,
                   recipe=Recipe(mode="lora", steps=2, batch_size=8, eval_every=2), device="cpu", progress=False)
    other = save_local_dir(clip_pair.expert, tmp_path / "other", model_cfg=TINY_CLIP_CFG, tokenizer=clip_pair.tokenizer)
    with pytest.raises(ValueError, match="fine-tuned from the generalist with fingerprint"):
        load_pair(f"local-dir:{other}", f"local-dir:{out}")
    with pytest.raises(FileExistsError, match="already holds"):
        finetune(f"local-dir:{generalist_dir}", "breastmnist", out=out, data_root=one_data_root.path, device="cpu")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an expert folder"):  # never deleted to make room
        finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "mine", data_root=one_data_root.path)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_killed_run_resumes_to_the_same_weights(one_data_root, generalist_dir, tmp_path):
    args = dict(data_root=one_data_root.path, device="cpu", progress=False,
                recipe=Recipe(mode="full", steps=12, batch_size=8, lr=1e-3, eval_every=4, augment=True))
    whole = finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "whole", **args)

    def kill_at_9(step, loss):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "resumed", on_step=kill_at_9, **args)
    assert Path(f"{tmp_path / 'resumed'}.checkpoint.pt").is_file() and not (tmp_path / "resumed").exists()
    resumed = finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "resumed", **args)
    a, b = (load_model(f"local-dir:{p}").model.state_dict() for p in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (whole, resumed))
    assert ma["validation"] == mb["validation"] and mb["training"]["resumed_from_step"] == 8
    assert not Path(f"{tmp_path / 'resumed'}.checkpoint.pt").exists()
    # a checkpoint of other settings is refused, not continued
    with pytest.raises(KeyboardInterrupt):
        finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "other", on_step=kill_at_9, **args)
    with pytest.raises(ValueError, match="checkpoint of another fine-tuning run"):
        finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "other", seed=1, **args)


def test_command_line_trains_and_the_harness_runs_every_method_on_a_lora_expert(one_data_root, generalist_dir,
                                                                                tmp_path):
    """`python -m tcube.finetune` → a LoRA expert saved as factors → `python -m tcube.eval` with every pair method."""
    from eval_support import compose

    from tcube.harness.evaluate import run
    from tcube.methods.registry import method_names

    env = {**os.environ, **one_data_root.env, "TCUBE_DATA_DIR": str(one_data_root.path), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "lora"
    cmd = [sys.executable, "-m", "tcube.finetune", f"generalist=local-dir:{generalist_dir}", "data=breast",
           "mode=lora", "lora.rank=4", "steps=6", "batch_size=8", "eval_every=3", "lr=1e-3", f"out={out}",
           "progress=false", "device=cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "python -m tcube.eval model=local" in done.stdout and (out / FACTORS_FILE).is_file()
    bad = subprocess.run(cmd[:4] + ["data=all"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "fine-tuned on one" in bad.stderr
    with pytest.MonkeyPatch.context() as mp:
        for k, v in one_data_root.env.items():
            mp.setenv(k, v)
        summary = run(compose(["model=local", f"model.generalist=local-dir:{generalist_dir}",
                               f"model.expert=local-dir:{out}", "data=breast", f"data.root={one_data_root.path}",
                               "protocol=in_domain", "method=all", "limit=16", "batch_size=8", "device=cpu",
                               "progress=false", "plots=false", f"cache_dir={tmp_path / 'cache'}"]),
                      run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert summary and {r["method"] for r in rows} >= set(method_names())


def test_torchrun_two_ranks_train_what_one_process_trains(one_data_root, generalist_dir, tmp_path):
    """Each rank takes half of every batch; averaged gradients equal the whole batch's (up to float order)."""
    env = {**os.environ, **one_data_root.env, "TCUBE_DATA_DIR": str(one_data_root.path), "OMP_NUM_THREADS": "1"}
    args = [f"generalist=local-dir:{generalist_dir}", "data=breast", "steps=4", "batch_size=8", "eval_every=2",
            "lr=1e-4", "progress=false", "device=cpu"]
    one = subprocess.run([sys.executable, "-m", "tcube.finetune", *args, f"out={tmp_path / 'one'}"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "tcube.finetune", *args, f"out={tmp_path / 'two'}"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_model(f"local-dir:{tmp_path / p}").model.state_dict() for p in ("one", "two"))
    gen = load_model(f"local-dir:{generalist_dir}").model.state_dict()
    assert any(not torch.equal(a[k], gen[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2


def test_bf16_autocast_trains_and_fp16_on_cpu_is_refused(one_data_root, generalist_dir, tmp_path):
    recipe = Recipe(mode="lora", steps=2, batch_size=8, lr=1e-3, eval_every=2)
    out = finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "bf16", recipe=recipe,
                   precision="bf16", data_root=one_data_root.path, device="cpu", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["training"]["loss_first"] > 0
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        finetune(f"local-dir:{generalist_dir}", "breastmnist", out=tmp_path / "fp16", recipe=recipe,
                 precision="fp16", data_root=one_data_root.path, device="cpu", progress=False)


def _write_folder_dataset(root: Path, name: str, hf: bool) -> None:
    """Two classes (dark, bright) of 28-px grey PNGs per split: an image folder, or the same saved with datasets."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = {split: [] for split in ("train", "val", "test")}
    for split in rows:
        for i in range(8):
            label = i % 2
            img = Image.fromarray(rng.integers(0, 90, (28, 28), dtype=np.uint8) + 150 * label)
            if hf:
                rows[split].append((img, label))
            else:
                folder = root / name / split / ("a_dark", "b_bright")[label]
                folder.mkdir(parents=True, exist_ok=True)
                img.save(folder / f"{i}.png")
    if hf:
        from datasets import ClassLabel, Dataset, DatasetDict, Features
        from datasets import Image as HFImage

        features = Features({"image": HFImage(), "label": ClassLabel(names=["a_dark", "b_bright"])})
        DatasetDict({s: Dataset.from_dict({"image": [r[0] for r in v], "label": [r[1] for r in v]}, features=features)
                     for s, v in rows.items()}).save_to_disk(str(root / name))


@pytest.mark.parametrize("hf", [False, True], ids=["image_folder", "saved_hf_dataset"])
def test_a_data_config_dataset_in_a_folder_fine_tunes(generalist_dir, tmp_path, hf):
    from tcube.data import file_md5, spec_from_config

    _write_folder_dataset(tmp_path / "data", "skinfolder", hf)
    spec = spec_from_config({"name": "skinfolder", "modality": "dermoscopy", "classes": ["a_dark", "b_bright"],
                             "descriptions": ["a benign lesion", "a malignant lesion"]})
    out = finetune(f"local-dir:{generalist_dir}", spec, out=tmp_path / "e", data_root=tmp_path / "data",
                   recipe=Recipe(steps=2, batch_size=4, eval_every=2, lr=1e-3), device="cpu", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["train_images"] == 8 and manifest["dataset"]["name"] == "skinfolder"
    assert manifest["data"]["file"].endswith("skinfolder") and len(manifest["data"]["md5"]) == 32
    first = next(p for p in sorted((tmp_path / "data" / "skinfolder").rglob("*")) if p.is_file())
    before = file_md5(tmp_path / "data" / "skinfolder")
    first.write_bytes(first.read_bytes() + b"\0")
    assert file_md5(tmp_path / "data" / "skinfolder") != before
