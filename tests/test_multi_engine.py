"""Multi-expert engines (one generalist, K experts) against the naive per-sample oracle, on both tiny families."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from common import perturbed, seeded_images

from tcube.core.merging import combine
from tcube.engines import (
    FusedEngine,
    FusedMultiEngine,
    MultiTextHeads,
    TextHeads,
    make_multi_engine,
    merged_logits,
    multi_merged_logits,
)
from tcube.engines.fused_ops import FusedLinear
from tcube.models.heads import tokenize_prompts, tokenize_tasks

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["normal lungs", "pneumonia", "malignant mass"]
# per-row weights on K = 3 experts: all zero (the generalist), one-hot, mixed, negative and extrapolated
W = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, -0.2, 0.5], [1.4, -0.6, 0.1],
                  [0.25, 0.25, 0.25]])


@pytest.fixture(scope="module")
def trio(any_pair):
    """The pair's generalist and three experts that each really differ from it."""
    gen = any_pair.generalist
    return gen, [perturbed(gen, seed=20 + k) for k in range(3)], any_pair.tokenizer


def logits(trio, engine, w, experts=None, **options):
    gen, exps, tokenizer = trio
    eng = make_multi_engine(engine, gen, exps if experts is None else experts, **options)
    tokens, (c, t) = tokenize_prompts(tokenizer, CLASSES)
    heads = MultiTextHeads(eng, tokens, torch.arange(c).repeat_interleave(t))
    return multi_merged_logits(eng, seeded_images(w.shape[0]), w, heads)


@pytest.fixture(scope="module")
def naive(trio):
    return logits(trio, "naive", W)


def test_experts_really_differ(naive):
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert (naive[i] - naive[j]).abs().max() > 0.05  # rows 0-2: generalist, expert 0, expert 1


@pytest.mark.parametrize("materialize_below", [0, 8])  # 0: the fused forward; 8: a merged model per distinct row
def test_fused_equals_naive_per_row(trio, naive, materialize_below):
    assert (logits(trio, "fused", W, materialize_below=materialize_below) - naive).abs().max() <= 1e-4


@pytest.mark.parametrize("min_tokens", [0, 10_000])
def test_both_linear_forms_are_exact(trio, naive, min_tokens):
    # 0: every linear forms per-row weights (chunked, one row per chunk); 10_000: every linear uses the dual form
    got = logits(trio, "fused", W, materialize_below=0, chunked_min_tokens=min_tokens, chunk_bytes=1)
    assert (got - naive).abs().max() <= 1e-4


@pytest.mark.parametrize("materialize_below", [0, 8])
def test_shared_weights_merge_once_and_are_exact(trio, materialize_below):
    w = torch.tensor([[0.3, -0.2, 0.6]]).expand(4, -1)
    gen, experts, tokenizer = trio
    eng = FusedMultiEngine(gen, experts, materialize_below=materialize_below)
    shared = []
    for module in eng.fused.modules():
        if isinstance(module, FusedLinear) and module.has_delta_w:
            module.register_forward_hook(lambda m, args, out: shared.append(m.rows.shared is not None))
    tokens, (c, t) = tokenize_prompts(tokenizer, CLASSES)
    got = multi_merged_logits(eng, seeded_images(4), w, MultiTextHeads(eng, tokens, torch.arange(c).repeat_interleave(t)))
    assert shared and all(shared)  # one new shared row: the fused ops' merge-once path (not a merged copy)
    assert eng.models.loads == 0
    assert (got - logits(trio, "naive", w)).abs().max() <= 1e-4


def test_few_distinct_rows_are_merged_once_and_cached(trio):
    """Hard routing: K one-hot rows repeat within and across batches; each merged model and head is built once."""
    gen, experts, tokenizer = trio
    eng = FusedMultiEngine(gen, experts)
    eng.fused.encode_image = eng.fused.encode_text = None  # this path never runs the fused forward
    tokens, (c, t) = tokenize_prompts(tokenizer, CLASSES)
    heads = MultiTextHeads(eng, tokens, torch.arange(c).repeat_interleave(t))
    for rows in ([0, 1, 2, 1, 0, 2], [2, 2, 0, 1, 1, 0]):
        w = torch.eye(3)[rows]
        got = multi_merged_logits(eng, seeded_images(6), w, heads)
        assert (got - logits(trio, "naive", w)).abs().max() <= 1e-4
    assert eng.models.loads == 3 and len(eng.models.cache) == 3  # default cache: K + 1 models
    assert heads.stats["ray_rows"] == 12 and sum(r.stats["encoded"] for r in heads.rays) == 3  # one per expert


def test_distinct_rows_run_fused_unless_already_merged(trio):
    """A merge pays only when reused: rows seen once and not yet merged take the fused forward."""
    gen, experts, _ = trio
    eng = FusedMultiEngine(gen, experts)
    images, w = seeded_images(3), torch.eye(3)
    eng.image_features(images, w)
    assert eng.models.loads == 0  # three distinct rows, none repeated: fused
    eng.image_features(images, w[[0, 0, 1]])  # row 0 repeats: merged; row 1 is not (so the batch runs fused)
    assert eng.models.loads == 0
    eng.image_features(seeded_images(4), w[[0, 0, 1, 1]])  # two rows, each repeated: merged (and kept)
    assert eng.models.loads == 2 and eng.models.has(w[0]) and eng.models.has(w[1])
    eng.image_features(images[:2], w[[2, 2]])  # one new row for the whole batch: fused ops merge once, no copy
    assert eng.models.loads == 2 and not eng.models.has(w[2])
    eng.image_features(images[:2], w[[0, 0]])  # an already merged row: reused
    assert eng.models.loads == 2


def test_zero_task_vector_is_skipped_and_exact(trio, naive):
    gen, experts, tokenizer = trio
    # expert 1 is the generalist itself (τ_1 = 0): ops store the deltas of experts 0 and 2 only
    same = [experts[0], copy.deepcopy(gen), experts[2]]
    eng = FusedMultiEngine(gen, same, materialize_below=0)
    indices = [idx for m in eng.fused.modules() for name, idx in vars(m).items() if name.endswith("_index")]
    indices += [index for _, _, index in eng.fused.direct.values()]
    assert (0, 2) in indices and set(indices) <= {(0, 2), ()}  # (): a parameter the model lacks (bias=False)
    w0 = W.clone()
    w0[:, 1] = 0
    got = logits(trio, "fused", W, experts=same, materialize_below=0)
    assert (got - logits(trio, "fused", w0, experts=same, materialize_below=0)).abs().max() <= 1e-5
    assert (got - logits(trio, "naive", W, experts=same)).abs().max() <= 1e-4


@pytest.mark.parametrize("materialize_below", [0, 8])
def test_one_expert_equals_the_pair_engine(any_pair, materialize_below):
    lam = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.77, -0.2])
    tokens, (c, t) = tokenize_prompts(any_pair.tokenizer, CLASSES)
    pair = FusedEngine(any_pair.generalist, any_pair.expert)
    want, _ = merged_logits(pair, seeded_images(6), lam, TextHeads(pair, tokens, c, t, mode="exact"))
    multi = FusedMultiEngine(any_pair.generalist, [any_pair.expert], materialize_below=materialize_below)
    heads = MultiTextHeads(multi, tokens, torch.arange(c).repeat_interleave(t))
    got = multi_merged_logits(multi, seeded_images(6), (1 - lam).unsqueeze(1), heads)
    assert (got - want).abs().max() <= 1e-5


def test_heads_with_ragged_templates_equal_a_per_class_computation(trio):
    gen, experts, tokenizer = trio
    tasks = [["normal lungs", "pneumonia"], ["melanoma"]]
    templates = [["a chest x-ray with {}.", "an image of {}.", "{}"], ["a dermoscopy photograph of {}."]]
    tokens, prompt_class = tokenize_tasks(tokenizer, tasks, templates)
    w = torch.tensor([[0.5, -0.3, 1.2], [0.0, 0.0, 1.0]])
    for engine in ("naive", "fused"):
        heads = MultiTextHeads(make_multi_engine(engine, gen, experts), tokens, prompt_class)(w)
        for row, head in zip(w, heads):
            model = copy.deepcopy(gen)
            model.load_state_dict(combine(gen.state_dict(), [e.state_dict() for e in experts], row.tolist()))
            for cls, (names, tmpl) in enumerate([(tasks[0][0], templates[0]), (tasks[0][1], templates[0]),
                                                 (tasks[1][0], templates[1])]):
                with torch.no_grad():
                    feats = F.normalize(model.encode_text(tokenizer([t.format(names) for t in tmpl])), dim=-1)
                assert (head[cls] - F.normalize(feats.mean(0), dim=-1)).abs().max() <= 1e-5


def test_errors_are_clear(clip_pair):
    gen = clip_pair.generalist
    bad = copy.deepcopy(gen)
    bad.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match="expert 1.*identical parameter names"):
        make_multi_engine("naive", gen, [clip_pair.expert, bad])
    with pytest.raises(ValueError, match="at least one expert"):
        make_multi_engine("fused", gen, [])
    with pytest.raises(ValueError, match="unknown multi-expert engine 'turbo'.*fused.*naive"):
        make_multi_engine("turbo", gen, [clip_pair.expert])
    eng = make_multi_engine("naive", gen, [clip_pair.expert, clip_pair.expert])
    images = seeded_images(2)
    for w in (torch.zeros(2, 3), torch.zeros(2), torch.zeros(3, 2)):
        with pytest.raises(ValueError, match=r"\[B, K\] = \[2, 2\]"):
            eng.image_features(images, w)
    with pytest.raises(ValueError, match="finite"):
        eng.image_features(images, torch.tensor([[0.5, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="finite"):
        eng.logit_scale(torch.tensor([[float("inf"), 0.0]]))


def test_rows_on_one_expert_use_that_experts_adaptive_heads(trio):
    """Hard routing with per-image magnitudes (T^3 with a hard task guess): each expert's ray is one variable, so
    the pair's adaptive heads serve it, within the contract against exact heads, and far fewer encodes."""
    gen, experts, tokenizer = trio
    tokens, (c, t) = tokenize_prompts(tokenizer, CLASSES)
    prompt_class = torch.arange(c).repeat_interleave(t)
    w = torch.zeros(12, 3)
    w[torch.arange(12), torch.arange(12) % 3] = torch.linspace(0.40, 0.50, 12)  # distinct magnitudes
    w[11] = torch.tensor([0.1, 0.2, 0.0])  # one row off the rays: exact
    images = seeded_images(12)
    ray = MultiTextHeads(FusedMultiEngine(gen, experts), tokens, prompt_class)
    exact = MultiTextHeads(FusedMultiEngine(gen, experts), tokens, prompt_class, rays=False)
    got = multi_merged_logits(ray.engine, images, w, ray)
    assert (got - multi_merged_logits(exact.engine, images, w, exact)).abs().max() <= 1e-4
    assert ray.stats["ray_rows"] == 11 and ray.stats["encodes"] == 1
