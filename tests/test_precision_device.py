"""device=auto|cpu|cuda and precision=fp32|bf16|fp16: bf16 on CPU agrees with fp32; bad values fail clearly."""
from __future__ import annotations

import pytest
import torch
from common import seeded_images
from hydra.errors import ConfigCompositionException

from tcube import Merger
from tcube.runtime.device import resolve_device, to_device
from tcube.runtime.precision import autocast, check_precision

CLASSES = ["normal lungs", "pneumonia", "mass"]


@pytest.mark.parametrize("engine", ["fused", "naive"])
def test_bf16_agrees_with_fp32_and_keeps_merge_maths_fp32(clip_pair, engine):
    x = seeded_images(24)
    ref = Merger(clip_pair.generalist, clip_pair.expert, clip_pair.tokenizer, CLASSES, engine=engine)
    low = Merger(clip_pair.generalist, clip_pair.expert, clip_pair.tokenizer, CLASSES, engine=engine,
                 precision="bf16")
    for method in ("t3", "wise_ft", "generalist"):
        a, b = ref.predict(x, method), low.predict(x, method)
        assert (a.preds == b.preds).float().mean() >= 0.9, method
        assert (a.logits - b.logits).abs().max() < 0.5, method
        # λ and JS come from fp32 probabilities whatever the forward precision
        assert b.lambdas.dtype == b.js.dtype == b.logits.dtype == torch.float32
        assert (a.lambdas - b.lambdas).abs().max() < 1e-2 and (a.js - b.js).abs().max() < 1e-2
    # the models are left in fp32 (autocast casts activations, never the stored weights)
    assert all(p.dtype == torch.float32 for p in clip_pair.generalist.parameters())


def test_bad_precision_names_the_choices(clip_pair):
    with pytest.raises(ValueError, match="precision=fp32\\|bf16\\|fp16"):
        Merger(clip_pair.generalist, clip_pair.expert, clip_pair.tokenizer, CLASSES, precision="half")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*bf16"):
        check_precision("fp16", "cpu")
    assert check_precision("bf16", "cpu") == "bf16"


def test_autocast_is_a_noop_for_fp32():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto\\|cpu\\|cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible.*device=cpu"):
            resolve_device("cuda")
    x = torch.ones(3)
    assert to_device(x, "cpu") is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pinned_copy_and_fp16(clip_pair):
    x = torch.ones(4, 3)
    y = to_device(x, "cuda")
    assert y.is_cuda and torch.equal(y.cpu(), x)
    gen, exp = clip_pair.generalist.cuda(), clip_pair.expert.cuda()
    try:
        images = seeded_images(8)
        ref = Merger(gen, exp, clip_pair.tokenizer, CLASSES).predict(images, "t3")
        half = Merger(gen, exp, clip_pair.tokenizer, CLASSES, precision="fp16").predict(images, "t3")
        assert (ref.preds == half.preds).float().mean() >= 0.9
    finally:
        clip_pair.generalist.cpu(), clip_pair.expert.cpu()


def test_harness_precision_bf16_runs_and_gets_its_own_keys(tmp_path, clip_pair):
    from eval_support import compose, make_env, overrides

    from tcube.harness.evaluate import build_plan, run, to_settings

    env = make_env(tmp_path / "env", clip_pair)
    fp32 = run(compose(overrides(env, methods=("t3",), extra=["limit=4"])), tmp_path / "fp32")
    bf16 = run(compose(overrides(env, methods=("t3",), extra=["limit=4", "precision=bf16"])), tmp_path / "bf16")
    assert fp32["cells"]["rows"] == bf16["cells"]["rows"] == 3
    keys = {p: {c.key for c in build_plan(to_settings(compose(overrides(env, extra=[f"precision={p}"])))).cells}
            for p in ("fp32", "bf16")}
    assert not keys["fp32"] & keys["bf16"]  # a bf16 run never resumes from fp32 rows
    with pytest.raises(ConfigCompositionException, match="precision=fp8"):  # the typed config refuses it
        compose(overrides(env, extra=["precision=fp8"]))
    with pytest.raises(ValueError, match="device must be"):
        build_plan(to_settings(compose(overrides(env, extra=["device=tpu"]))))
