"""Adaptive text heads (the default) against exact heads and the naive engine, on both model families."""
from __future__ import annotations

import pytest
import torch
from common import seeded_images

from tcube.engines import TextHeads, make_engine, merged_logits
from tcube.engines.heads import barycentric, lobatto_nodes
from tcube.models.heads import tokenize_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["normal lungs", "pneumonia", "malignant mass"]
CONTRACT = 1e-4


def heads_for(pair, engine="fused", **kw):
    eng = make_engine(engine, pair.generalist, pair.expert)
    tokens, (c, t) = tokenize_prompts(pair.tokenizer, CLASSES)
    return eng, TextHeads(eng, tokens, c, t, **kw)


def logit_error(eng, approx: torch.Tensor, exact: torch.Tensor, lam: torch.Tensor) -> float:
    """Largest |Δlogit| any unit image feature could see: exp(logit_scale(λ)) · ‖Δhead‖₂."""
    return float(((approx - exact).norm(dim=-1).max(-1).values * eng.logit_scale(lam)).max())


@pytest.fixture(scope="module")
def fused_heads(any_pair):
    eng, adaptive = heads_for(any_pair)
    _, exact = heads_for(any_pair, mode="exact", cache_size=10_000)
    exact.engine = eng  # the same fused engine for both: only the heads differ
    return eng, adaptive, exact


@pytest.mark.parametrize("low,high", [(0.5, 0.586), (0.5, 0.5012), (0.0, 1.0), (-0.25, 1.25)])
def test_adaptive_heads_within_tolerance_of_exact(fused_heads, low, high):
    eng, adaptive, exact = fused_heads
    lam = low + (high - low) * torch.rand(24, generator=torch.Generator().manual_seed(3))
    lam = torch.cat([lam, torch.tensor([low, high])])
    err = logit_error(eng, adaptive(lam), exact(lam), lam)
    assert err <= 2 * adaptive.tol  # measured bound (tol) plus fp32 noise of two encodes
    assert adaptive.max_error() <= adaptive.tol
    assert adaptive.stats["exact_fallback"] == 0


def test_narrow_lambda_span_needs_few_encodes(any_pair):
    eng, heads = heads_for(any_pair)
    _, exact = heads_for(any_pair, mode="exact", cache_size=10_000)
    exact.engine = eng
    lam = 0.5 + 0.0012 * torch.rand(32, generator=torch.Generator().manual_seed(5))
    got = heads(lam)
    assert heads.stats["encoded"] <= 9  # a short piece (or two sharing an endpoint) at 5 nodes each
    assert logit_error(eng, got, exact(lam), lam) <= 2 * heads.tol


def test_adaptive_reuses_pieces_across_batches(any_pair):
    _, heads = heads_for(any_pair)
    g = torch.Generator().manual_seed(0)
    heads(0.5 + 0.086 * torch.rand(16, generator=g))
    first = heads.stats["encoded"]
    assert first <= 17  # one piece of [0, 1] covers the paper's λ range
    heads(0.5 + 0.086 * torch.rand(16, generator=g))
    assert heads.stats["encoded"] == first  # a streamed Merger encodes nothing more


def test_degenerate_batches_are_exact(any_pair):
    eng, heads = heads_for(any_pair)
    _, exact = heads_for(any_pair, mode="exact")
    exact.engine = eng
    for lam in (torch.full((7,), 0.537), torch.tensor([0.25]), torch.tensor([0.1, 0.1, 0.9])):
        before = heads.stats["encoded"]
        assert torch.equal(heads(lam), exact(lam))  # few distinct λ: encoded exactly, one encode each
        assert heads.stats["encoded"] - before == lam.unique().numel()


def test_adaptive_default_logits_match_naive(any_pair):
    lam = torch.cat([torch.linspace(0, 1, 6), torch.tensor([0.5, 0.55, 0.586])])
    images = seeded_images(lam.shape[0])
    naive_eng, naive_heads = heads_for(any_pair, "naive", mode="exact")
    fused_eng, fused_heads_ = heads_for(any_pair)
    ref, _ = merged_logits(naive_eng, images, lam, naive_heads)
    got, used = merged_logits(fused_eng, images, lam, fused_heads_)
    assert torch.equal(used, lam)
    assert (got - ref).abs().max() <= CONTRACT


def test_refinement_splits_or_falls_back_to_exact(clip_pair):
    eng, heads = heads_for(clip_pair, tol=1e-12, noise_cap=0.0, max_depth=1)  # unreachable: below fp32 noise
    _, exact = heads_for(clip_pair, mode="exact")
    exact.engine = eng
    lam = torch.linspace(0.51, 0.6, 6)
    assert torch.allclose(heads(lam), exact(lam), atol=1e-6)
    assert heads.stats["splits"] >= 1 and heads.stats["exact_fallback"] >= 1


def test_barycentric_reproduces_polynomials():
    nodes = lobatto_nodes(0.25, 0.75, 5)
    assert torch.equal(lobatto_nodes(0.25, 0.75, 9)[0::2], nodes)  # nested sets
    poly = lambda x: 1 - 2 * x + 3 * x**3 - x**4  # noqa: E731
    x = torch.linspace(0.2, 0.8, 13, dtype=torch.float64)
    assert torch.allclose(barycentric(nodes, poly(nodes), x), poly(x), atol=1e-12)
    assert torch.equal(barycentric(nodes, poly(nodes), nodes[1:2]), poly(nodes[1:2]))


def test_grid_is_labelled_approximate(clip_pair):
    assert heads_for(clip_pair, mode="grid")[1].approximate
    assert not heads_for(clip_pair)[1].approximate and not heads_for(clip_pair, mode="exact")[1].approximate
    with pytest.raises(ValueError, match="unknown text head mode"):
        heads_for(clip_pair, mode="fast")


def image_logit_error(eng, approx: torch.Tensor, exact: torch.Tensor, lam: torch.Tensor, img: torch.Tensor) -> float:
    """Largest |Δlogit| on these images: exp(logit_scale(λ_i)) · |⟨head_i − exact_i, img_i⟩|."""
    return float((eng.logit_scale(lam).unsqueeze(1) * torch.einsum("be,bce->bc", img, approx - exact)).abs().max())


@pytest.fixture(scope="module", params=["open_clip", "biomedclip"])
def trained_scale_pair(request):
    """Each family with a trained CLIP's temperature, exp(logit_scale) = 100: fp32 noise of the encodes is then
    ~1e-4 in the worst-case measure, so only the measure on real image directions keeps pieces interpolated."""
    import copy

    pair = request.getfixturevalue("clip_pair" if request.param == "open_clip" else "biomed_pair")
    gen, exp = copy.deepcopy(pair.generalist), copy.deepcopy(pair.expert)
    for m in (gen, exp):
        m.logit_scale.data.fill_(float(torch.log(torch.tensor(100.0))))
    return type(pair)(gen, exp, pair.tokenizer, pair.model_cfg, pair.family)


@pytest.mark.parametrize("low,high", [(0.5, 0.586), (0.507, 0.511), (0.0, 1.0)])
def test_adaptive_error_bound_on_images_at_trained_scale(trained_scale_pair, low, high):
    eng, adaptive = heads_for(trained_scale_pair)
    _, exact = heads_for(trained_scale_pair, mode="exact", cache_size=10_000)
    exact.engine = eng
    lam = torch.cat([low + (high - low) * torch.rand(30, generator=torch.Generator().manual_seed(4)),
                     torch.tensor([low, high])])
    img = torch.nn.functional.normalize(eng.image_features(seeded_images(lam.shape[0]), lam).float(), dim=-1)
    got = adaptive(lam, img)
    assert adaptive.stats["exact_fallback"] == 0  # interpolated (pieces may split), never the exact fallback
    assert adaptive.max_error() <= max(adaptive.tol, adaptive.noise_cap * 100)  # tol, or kept at the noise floor
    assert image_logit_error(eng, got, exact(lam), lam, img) <= CONTRACT / 2
    if high - low < 0.1:  # the paper's narrow range: one or two short pieces, fewer encodes than exact heads
        assert adaptive.stats["encoded"] < lam.unique().numel()


def test_later_batches_recheck_and_refine(clip_pair):
    """A piece accepted on one batch's images is checked again on the next batch's; failing there refines it."""
    eng, heads = heads_for(clip_pair)
    lam = 0.5 + 0.086 * torch.rand(16, generator=torch.Generator().manual_seed(6))
    img = torch.nn.functional.normalize(eng.image_features(seeded_images(16), lam).float(), dim=-1)
    heads(lam, img)
    (piece, state), = heads._pieces.items()
    nodes = state.nodes.shape[0]
    heads.tol = heads._measured(state, img.double()) / 2  # the same images now fail the stored check
    heads(lam, img)
    assert heads._pieces[piece].kind != "interp" or heads._pieces[piece].nodes.shape[0] > nodes


def test_default_merge_output_names_its_heads(clip_pair):
    from tcube import merge_and_predict

    images = seeded_images(6)
    out = merge_and_predict(clip_pair.generalist, clip_pair.expert, images, CLASSES, tokenizer=clip_pair.tokenizer)
    assert out.text_heads["mode"] == "adaptive" and out.text_heads["approximate"] is False
    grid = merge_and_predict(clip_pair.generalist, clip_pair.expert, images, CLASSES, tokenizer=clip_pair.tokenizer,
                             text_heads="grid")
    assert grid.text_heads == {"mode": "grid", "approximate": True, "max_error": None}
    static = merge_and_predict(clip_pair.generalist, clip_pair.expert, images, CLASSES, tokenizer=clip_pair.tokenizer,
                               method="wise_ft")
    assert static.text_heads is None  # one merged model: its head is encoded exactly
