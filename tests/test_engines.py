"""Every engine against the naive per-sample oracle, on tiny real models of both families."""
from __future__ import annotations

import copy

import pytest
import torch
from common import seeded_images

from tcube.engines import FusedCLIP, TextHeads, make_engine, merged_logits
from tcube.models.heads import tokenize_prompts

CLASSES = ["normal lungs", "pneumonia", "malignant mass"]
LAMBDAS = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.77, 0.91])


def run(pair, engine, lam, *, text="exact", grid_size=33, **options):
    eng = make_engine(engine, pair.generalist, pair.expert, **options)
    tokens, (c, t) = tokenize_prompts(pair.tokenizer, CLASSES)
    heads = TextHeads(eng, tokens, c, t, mode=text, grid_size=grid_size)
    return merged_logits(eng, seeded_images(lam.shape[0]), lam, heads)


@pytest.fixture(scope="module")
def naive_logits(any_pair):
    return run(any_pair, "naive", LAMBDAS)[0]


def test_fused_equals_naive_per_sample(any_pair, naive_logits):
    fused, used = run(any_pair, "fused", LAMBDAS)
    assert torch.equal(used, LAMBDAS)
    assert (fused - naive_logits).abs().max() <= 1e-4
    # the pair really differs, so agreement is not trivial
    assert (run(any_pair, "naive", torch.zeros(6))[0] - run(any_pair, "naive", torch.ones(6))[0]).abs().max() > 0.1


@pytest.mark.parametrize("min_tokens", [0, 10_000])
def test_fused_both_linear_forms_are_exact(any_pair, naive_logits, min_tokens):
    # 0: every linear uses per-row weights (chunked); 10_000: every linear uses the dual form
    fused, _ = run(any_pair, "fused", LAMBDAS, chunked_min_tokens=min_tokens, chunk_bytes=1)
    assert (fused - naive_logits).abs().max() <= 1e-4


def test_endpoints_equal_plain_models(any_pair):
    images = seeded_images(4)
    for lam, model in ((1.0, any_pair.generalist), (0.0, any_pair.expert)):
        fused = FusedCLIP(any_pair.generalist, any_pair.expert)
        got = fused.encode_image(images, torch.full((4,), lam))
        assert (got - model.encode_image(images)).abs().max() <= 1e-4


def test_batch_equals_naive_for_one_lambda(any_pair):
    lam = torch.full((5,), 0.42)
    batch, _ = run(any_pair, "batch", lam)
    assert (batch - run(any_pair, "naive", lam)[0]).abs().max() <= 1e-4


def test_fused_with_one_lambda_merges_once_and_equals_naive(any_pair):
    """T^3_B's batch: every fused op takes its one-λ path (one merged weight), still exact."""
    lam = torch.full((5,), 0.42)
    eng = make_engine("fused", any_pair.generalist, any_pair.expert)
    from tcube.engines.fused_ops import FusedLinear

    seen = []
    for module in eng.fused.modules():
        if isinstance(module, FusedLinear) and module.has_delta_w:
            module.register_forward_hook(lambda m, args, out: seen.append(m.rows.shared is not None))
    tokens, (c, t) = tokenize_prompts(any_pair.tokenizer, CLASSES)
    fused, _ = merged_logits(eng, seeded_images(5), lam, TextHeads(eng, tokens, c, t, mode="exact"))
    assert seen and all(seen)
    assert (fused - run(any_pair, "naive", lam)[0]).abs().max() <= 1e-4


def test_batch_refuses_per_sample_lambdas(clip_pair):
    with pytest.raises(ValueError, match="different λ"):
        run(clip_pair, "batch", LAMBDAS)


def test_bucket_quantizes_and_reports_what_it_used(clip_pair, naive_logits):
    lam = torch.tensor([0.50, 0.51, 0.52, 0.58, 0.586, 0.55])
    approx, used = run(clip_pair, "bucket", lam, num_buckets=2)
    assert used.unique().numel() == 2
    assert (used - lam).abs().max() <= (lam.max() - lam.min()) / 4 + 1e-6
    exact_at_used, _ = run(clip_pair, "naive", used)
    assert (approx - exact_at_used).abs().max() <= 1e-4


def test_grid_heads_error_is_bounded_and_shrinks(any_pair, naive_logits):
    errors = {g: (run(any_pair, "fused", LAMBDAS, text="grid", grid_size=g)[0] - naive_logits).abs().max().item()
              for g in (5, 17, 65)}
    assert errors[65] <= 2e-3  # the bound the README quotes for the default grid is measured in the benchmark
    assert errors[17] < errors[5] / 4  # linear interpolation: error ~ O(1/G²)
    assert errors[65] < errors[17]


def test_zero_deltas_are_skipped_and_still_exact(clip_pair):
    expert = copy.deepcopy(clip_pair.expert)
    gen_state = clip_pair.generalist.state_dict()
    with torch.no_grad():  # an expert that only fine-tuned the image tower: text tower identical
        for name, p in expert.named_parameters():
            if not name.startswith("visual."):
                p.copy_(gen_state[name])
    fused = FusedCLIP(clip_pair.generalist, expert)
    assert not fused.model.transformer.resblocks[0].mlp.c_fc.has_delta_w
    assert fused.model.visual.transformer.resblocks[0].mlp.c_fc.has_delta_w

    class P:  # the same pair with the new expert
        generalist, tokenizer = clip_pair.generalist, clip_pair.tokenizer
    P.expert = expert
    assert (run(P, "fused", LAMBDAS)[0] - run(P, "naive", LAMBDAS)[0]).abs().max() <= 1e-4


def test_unsupported_tower_raises_naming_it():
    from tcube.models import build_model

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    model = build_model(cfg)  # ModifiedResNet image tower: BatchNorm is not affine in λ
    with pytest.raises(ValueError, match="ModifiedResNet|BatchNorm"):
        FusedCLIP(model, copy.deepcopy(model))


def test_unknown_engine_name():
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("turbo", None, None)


def test_fused_text_drops_padding_exactly(any_pair):
    # prompts are a few tokens, padded to the context (BiomedCLIP: 256); the fused tower drops the padding
    tokens, _ = tokenize_prompts(any_pair.tokenizer, CLASSES)
    fused = FusedCLIP(any_pair.generalist, any_pair.expert)
    trimmed = fused.trim_padding(tokens)
    assert trimmed.shape[1] < tokens.shape[1]
    assert torch.equal(trimmed, tokens[:, :trimmed.shape[1]])
    lam = torch.linspace(0, 1, tokens.shape[0])
    naive = make_engine("naive", any_pair.generalist, any_pair.expert)
    assert (fused.encode_text(tokens, lam) - naive.text_features(tokens, lam)).abs().max() <= 1e-4


def test_plain_heads_drop_padding_only_where_exact(any_pair):
    """Plain Hugging Face towers (BiomedCLIP) encode prompts without their padding; open_clip's keep it."""
    from tcube.models.heads import hf_pad_id, zero_shot_head

    model = any_pair.generalist
    tokens, (c, t) = tokenize_prompts(any_pair.tokenizer, CLASSES)
    full = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
    full = torch.nn.functional.normalize(full.view(c, t, -1).mean(1), dim=-1)
    assert (zero_shot_head(model, any_pair.tokenizer, CLASSES) - full).abs().max() <= 1e-5
    assert (hf_pad_id(getattr(model, "text", None)) is not None) == (any_pair.family == "biomedclip")
