"""LoRA experts through the fused engine: deltas kept as factors (plain forward + low-rank terms), exact against
the naive per-sample oracle, and dense wherever the factors do not explain the weights."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from common import perturbed, seeded_images

import tcube.engines.fused_ops as ops
from tcube import merge_and_predict
from tcube.engines import (
    FusedCLIP,
    MultiTextHeads,
    TextHeads,
    make_engine,
    make_multi_engine,
    merged_logits,
    multi_merged_logits,
)
from tcube.engines.fused_ops import FusedLinear, RowCoefficients, agrees_to_rounding, factored_delta
from tcube.models.heads import tokenize_prompts
from tcube.models.lora import (
    LoraConfig,
    LoraFactors,
    LowRank,
    add_lora,
    apply_factors,
    attach_factors,
    lora_factors,
    merge_lora,
    target_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["normal lungs", "pneumonia", "malignant mass"]
LAMBDAS = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.77, 0.91])
W = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, -0.2, 0.5], [1.4, -0.6, 0.1],
                  [0.25, 0.25, 0.25]])
TARGETS = {"attn": ("attn",), "attn+mlp": ("attn", "mlp")}


def trained_lora(gen, targets=("attn", "mlp"), rank=4, seed=0):
    """The training route: adapters with non-zero random B (as after training), merged, factors attached."""
    model = copy.deepcopy(gen)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        add_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, targets=targets))
        for adapter in model.modules():
            if isinstance(adapter, LowRank):
                adapter.lora_B.data.normal_(0.0, 0.05)
    factors = lora_factors(model)
    return attach_factors(merge_lora(model).eval(), LoraFactors(factors, "tiny generalist"))


def applied_lora(gen, targets=("attn", "mlp"), rank=4, seed=0):
    """The loading route: random factors applied to the generalist (lora.apply_factors)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(gen.named_parameters())
    factors = {}
    for name in target_weights(gen, LoraConfig(rank=rank, targets=targets)):
        out, inn = params[name].shape
        factors[name] = (torch.randn(out, rank, generator=g) * 0.1, torch.randn(rank, inn, generator=g) / inn**0.5)
    return apply_factors(gen, LoraFactors(factors, "tiny generalist"))


def n_targets(model, targets):
    return len(target_weights(model, LoraConfig(targets=targets)))


def pair_logits(gen, expert, tokenizer, engine, lam, **options):
    eng = make_engine(engine, gen, expert, **options)
    tokens, (c, t) = tokenize_prompts(tokenizer, CLASSES)
    return merged_logits(eng, seeded_images(lam.shape[0]), lam, TextHeads(eng, tokens, c, t, mode="exact"))[0], eng


def multi_logits(gen, experts, tokenizer, engine, w, **options):
    eng = make_multi_engine(engine, gen, experts, **options)
    tokens, (c, t) = tokenize_prompts(tokenizer, CLASSES)
    heads = MultiTextHeads(eng, tokens, torch.arange(c).repeat_interleave(t))
    return multi_merged_logits(eng, seeded_images(w.shape[0]), w, heads), eng


@pytest.fixture
def lowrank_calls(monkeypatch):
    """Counts the fused linears' low-rank terms (calls of fused_ops.add_lowrank)."""
    calls = []
    real = ops.add_lowrank
    monkeypatch.setattr(ops, "add_lowrank", lambda *a: calls.append(1) or real(*a))
    return calls


# -- the ops against the obvious per-row computation ---------------------------------------------------------------

def _reference_linear(x, w_base, b, others, coef):
    """Row r: F.linear with W_base + Σ_k c_rk·(W_k − W_base), one row at a time."""
    rows = []
    for r in range(x.shape[0]):
        w = w_base + sum(coef[r, k] * (o - w_base) for k, o in enumerate(others))
        rows.append(F.linear(x[r], w, b))
    return torch.stack(rows)


def _linear_case(seed=0):
    """W_base with four others: two LoRA offsets of ranks 2 and 3 (one against a LoRA base), a dense change, none."""
    g = torch.Generator().manual_seed(seed)
    out, inn = 24, 20
    gen = torch.randn(out, inn, generator=g)
    f = [(torch.randn(out, r, generator=g) * 0.3, torch.randn(r, inn, generator=g)) for r in (2, 3, 1)]
    base = gen + f[2][0] @ f[2][1]  # the base is itself a LoRA model (factors f[2])
    others = [gen + f[0][0] @ f[0][1], gen + f[1][0] @ f[1][1], gen + torch.randn(out, inn, generator=g), base.clone()]
    sides = (f[2], [f[0], f[1], None, f[2]])
    return base, torch.randn(out, generator=g), others, sides


@pytest.mark.parametrize("min_tokens", [0, 10_000])  # the dense delta: chunked / dual form
def test_fused_linear_per_row_equals_reference(min_tokens):
    base, bias, others, sides = _linear_case()
    rows = RowCoefficients()
    op = FusedLinear(base, bias, others, [bias] * 4, rows, factors=sides, chunked_min_tokens=min_tokens, chunk_bytes=1)
    assert op.factored_index == (0, 1) and op.factored_ranks == (2 + 1, 3 + 1)  # both sides' factors
    assert op.weight_index == (2,)  # the dense change; other 3 equals the base (Δ = 0)
    x, coef = torch.randn(5, 7, 20), torch.randn(5, 4)
    with rows.set(coef):
        got = op(x)
    assert (got - _reference_linear(x, base, bias, others, coef)).abs().max() <= 1e-4


@pytest.mark.parametrize("fold_min_tokens", [0, 10**9])  # shared row: U·V folded into the weight / low-rank term
def test_fused_linear_shared_row_equals_reference(fold_min_tokens, lowrank_calls):
    base, bias, others, sides = _linear_case(seed=1)
    rows = RowCoefficients()
    op = FusedLinear(base, bias, others, [bias] * 4, rows, factors=sides)
    op.fold_min_tokens = fold_min_tokens
    x, coef = torch.randn(5, 7, 20), torch.tensor([[0.4, -1.3, 0.7, 2.0]]).expand(5, -1)
    with rows.set(coef):
        got = op(x)
    assert (got - _reference_linear(x, base, bias, others, coef)).abs().max() <= 1e-4
    assert len(lowrank_calls) == (fold_min_tokens > 0)


def test_factored_delta_needs_a_paying_rank_and_agreeing_weights():
    g = torch.Generator().manual_seed(0)
    gen = torch.randn(64, 64, generator=g)
    u, v = torch.randn(64, 8, generator=g), torch.randn(8, 64, generator=g)
    exp = gen + u @ v
    got = factored_delta(exp, gen, (u, v), None)  # the pair: base = expert, Δ = −U·V
    assert got is not None and (got[0] @ got[1] - (gen - exp)).abs().max() <= 1e-4
    big = torch.randn(64, 32, generator=g), torch.randn(32, 64, generator=g)  # 32·(64 + 64) ≥ 64·64: dense pays
    assert factored_delta(gen + big[0] @ big[1], gen, big, None) is None
    assert factored_delta(exp, gen, None, None) is None
    tampered = exp.clone()
    tampered[3, 5] += 1e-3 * exp.abs().max()
    assert factored_delta(tampered, gen, (u, v), None) is None
    assert factored_delta(exp, gen + 0.01 * torch.randn(64, 64, generator=g), (u, v), None) is None  # other generalist


def test_rounding_bound_follows_the_models_dtype():
    g = torch.Generator().manual_seed(0)
    gen = torch.randn(48, 32, generator=g)
    u, v = torch.randn(48, 4, generator=g) * 0.1, torch.randn(4, 32, generator=g)
    exp = gen + u @ v
    assert agrees_to_rounding(gen, exp, u, v) and agrees_to_rounding(exp, gen, -u, v)
    # models cast to bf16 after the merge agree to bf16 rounding, not to fp32's
    assert agrees_to_rounding(gen.bfloat16(), exp.bfloat16(), u, v)
    assert not agrees_to_rounding(gen, exp.bfloat16().float(), u, v)


# -- the pair engine -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", list(TARGETS))
def test_pair_per_row_equals_naive_and_runs_factored(any_pair, targets, lowrank_calls):
    gen = any_pair.generalist
    expert = trained_lora(gen, TARGETS[targets])
    naive, _ = pair_logits(gen, expert, any_pair.tokenizer, "naive", LAMBDAS)
    fused, eng = pair_logits(gen, expert, any_pair.tokenizer, "fused", LAMBDAS)
    assert (fused - naive).abs().max() <= 1e-4
    assert (naive[0] - naive[1]).abs().max() > 0.05  # the expert really differs from the generalist
    n = n_targets(gen, TARGETS[targets])
    assert eng.fused.delta_forms() == {"factored": n, "dense": 0, "zero": eng.fused.delta_forms()["zero"]}
    assert lowrank_calls  # the low-rank terms ran
    if targets == "attn":
        assert eng.fused.delta_forms()["zero"] > 0  # MLP matrices: equal in both models


@pytest.mark.parametrize("fold_min_tokens", [0, 10**9])
def test_pair_shared_lambda_equals_naive(any_pair, fold_min_tokens, lowrank_calls):
    """T^3_B's batch: one merged weight per matrix (U·V folded in) or the plain weight plus the low-rank term."""
    gen = any_pair.generalist
    expert = trained_lora(gen, seed=3)
    lam = torch.full((5,), 0.42)
    eng = make_engine("fused", gen, expert)
    for m in eng.fused.modules():
        if isinstance(m, FusedLinear):
            m.fold_min_tokens = fold_min_tokens
    tokens, (c, t) = tokenize_prompts(any_pair.tokenizer, CLASSES)
    fused, _ = merged_logits(eng, seeded_images(5), lam, TextHeads(eng, tokens, c, t, mode="exact"))
    naive, _ = pair_logits(gen, expert, any_pair.tokenizer, "naive", lam)
    assert (fused - naive).abs().max() <= 1e-4
    assert bool(lowrank_calls) == (fold_min_tokens > 0)


def test_factors_of_another_generalist_fall_back_to_dense_and_stay_exact(any_pair):
    gen = any_pair.generalist
    foreign = trained_lora(perturbed(gen, seed=7), targets=("attn",))  # a LoRA of another generalist
    fused = FusedCLIP(gen, foreign)
    assert fused.delta_forms()["factored"] == 0 and fused.delta_forms()["dense"] > 0
    naive, _ = pair_logits(gen, foreign, any_pair.tokenizer, "naive", LAMBDAS)
    assert (pair_logits(gen, foreign, any_pair.tokenizer, "fused", LAMBDAS)[0] - naive).abs().max() <= 1e-4


def test_an_edited_matrix_alone_goes_dense(any_pair):
    gen = any_pair.generalist
    expert = applied_lora(gen, targets=("attn",))
    name = next(iter(expert.tcube_lora.factors))
    with torch.no_grad():
        dict(expert.named_parameters())[name].mul_(1.01)  # weights no longer gen + U·V there
    forms = FusedCLIP(gen, expert).delta_forms()
    assert forms["dense"] == 1 and forms["factored"] == n_targets(gen, ("attn",)) - 1
    naive, _ = pair_logits(gen, expert, any_pair.tokenizer, "naive", LAMBDAS)
    assert (pair_logits(gen, expert, any_pair.tokenizer, "fused", LAMBDAS)[0] - naive).abs().max() <= 1e-4


def test_two_lora_models_take_both_factors(clip_pair):
    """Base and other both LoRA models of one generalist: Δ = U_b·V_b − U_a·V_a, rank r_a + r_b."""
    gen = clip_pair.generalist
    a, b = trained_lora(gen, rank=2, seed=1), applied_lora(gen, rank=3, seed=2)
    fused, eng = pair_logits(b, a, clip_pair.tokenizer, "fused", LAMBDAS)  # base = a, other = b
    ranks = {m.factored_ranks for m in eng.fused.modules() if isinstance(m, FusedLinear)}
    assert ranks == {(5,)}
    assert (fused - pair_logits(b, a, clip_pair.tokenizer, "naive", LAMBDAS)[0]).abs().max() <= 1e-4


def test_merge_and_predict_t3_equals_naive(any_pair, lowrank_calls):
    gen, tokenizer = any_pair.generalist, any_pair.tokenizer
    expert = trained_lora(gen, seed=5)
    images = seeded_images(6)
    fused = merge_and_predict(gen, expert, images, CLASSES, tokenizer=tokenizer, method="t3")
    assert lowrank_calls
    naive = merge_and_predict(gen, expert, images, CLASSES, tokenizer=tokenizer, method="t3", engine="naive")
    assert (fused.logits - naive.logits).abs().max() <= 1e-4
    assert torch.equal(fused.preds, naive.preds) and torch.equal(fused.lambdas, naive.lambdas)


def test_bf16_forward_agrees_with_fp32(clip_pair, lowrank_calls):
    """Under autocast the low-rank terms run in the forward's precision (factors stay fp32 in the op)."""
    from tcube import Merger

    expert = trained_lora(clip_pair.generalist, seed=6)
    x = seeded_images(8)
    ref, low = (Merger(clip_pair.generalist, expert, clip_pair.tokenizer, CLASSES, precision=p).predict(x, "t3")
                for p in ("fp32", "bf16"))
    assert lowrank_calls
    assert (ref.logits - low.logits).abs().max() < 0.5 and (ref.preds == low.preds).float().mean() >= 0.75


# -- the multi-expert engine ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", list(TARGETS))
def test_k_lora_experts_per_row_equal_naive(any_pair, targets):
    gen = any_pair.generalist
    experts = [trained_lora(gen, TARGETS[targets], rank=2, seed=10), applied_lora(gen, TARGETS[targets], seed=11),
               trained_lora(gen, TARGETS[targets], rank=3, seed=12)]
    got, eng = multi_logits(gen, experts, any_pair.tokenizer, "fused", W, materialize_below=0)
    assert eng.fused.delta_forms()["factored"] == 3 * n_targets(gen, TARGETS[targets])
    assert eng.fused.delta_forms()["dense"] == 0
    assert (got - multi_logits(gen, experts, any_pair.tokenizer, "naive", W)[0]).abs().max() <= 1e-4


@pytest.mark.parametrize("fold_min_tokens", [0, 10**9])
def test_k_lora_experts_shared_weights_equal_naive(any_pair, fold_min_tokens):
    gen = any_pair.generalist
    experts = [trained_lora(gen, seed=20), applied_lora(gen, rank=2, seed=21)]
    w = torch.tensor([[0.6, -0.3]]).expand(4, -1)
    eng = make_multi_engine("fused", gen, experts, materialize_below=0)
    for m in eng.fused.modules():
        if isinstance(m, FusedLinear):
            m.fold_min_tokens = fold_min_tokens
    tokens, (c, t) = tokenize_prompts(any_pair.tokenizer, CLASSES)
    got = multi_merged_logits(eng, seeded_images(4), w, MultiTextHeads(eng, tokens, torch.arange(c).repeat_interleave(t)))
    assert eng.models.loads == 0  # the fused ops ran (one new shared row), not a merged copy
    assert (got - multi_logits(gen, experts, any_pair.tokenizer, "naive", w)[0]).abs().max() <= 1e-4


@pytest.mark.parametrize("min_tokens", [0, 10_000])  # the fully fine-tuned expert's dense deltas: chunked / dual
def test_lora_and_fully_fine_tuned_experts_mixed(any_pair, min_tokens):
    gen = any_pair.generalist
    experts = [trained_lora(gen, seed=30), perturbed(gen, seed=31), applied_lora(gen, ("attn",), seed=32)]
    got, eng = multi_logits(gen, experts, any_pair.tokenizer, "fused", W, materialize_below=0,
                            chunked_min_tokens=min_tokens, chunk_bytes=1)
    linears = [m for m in eng.fused.modules() if isinstance(m, FusedLinear)]
    assert all(m.weight_index == (1,) for m in linears)  # the full fine-tune: dense everywhere
    forms = eng.fused.delta_forms()
    assert forms["factored"] == n_targets(gen, ("attn", "mlp")) + n_targets(gen, ("attn",))
    assert (got - multi_logits(gen, experts, any_pair.tokenizer, "naive", W)[0]).abs().max() <= 1e-4
