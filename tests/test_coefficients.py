"""Tests for tcube.core.coefficients (seeded random batches; hypothesis is not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as sp_entropy

from tcube.core.coefficients import (
    dawin_lambda,
    dawin_offset_stats,
    entropy,
    js_divergence,
    t3_batch_lambda,
    t3_lambda,
)

LN2 = math.log(2.0)
SEEDS = range(5)


def _random_probs(seed: int, batch: int = 64, classes: int = 7, zero_frac: float = 0.3) -> torch.Tensor:
    """Random probability rows in float64, with exact zeros and a few one-hot rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, classes, generator=g, dtype=torch.float64) ** 3
    x = torch.where(torch.rand(batch, classes, generator=g, dtype=torch.float64) < zero_frac, 0.0, x)
    x[:, 0] += 1e-3  # no all-zero row
    x[:4] = 0.0
    x[torch.arange(4), torch.randint(classes, (4,), generator=g)] = 1.0  # one-hot rows
    return x / x.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- JS divergence
@pytest.mark.parametrize("seed", SEEDS)
def test_js_matches_scipy_squared(seed: int) -> None:
    p, q = _random_probs(seed), _random_probs(seed + 100)
    ours = js_divergence(p, q)
    ref = jensenshannon(p.numpy(), q.numpy(), axis=-1) ** 2  # scipy returns the square root
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-12)
    ref2 = jensenshannon(p.numpy(), q.numpy(), axis=-1, base=2) ** 2
    np.testing.assert_allclose(js_divergence(p, q, base=2).numpy(), ref2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_js_symmetric_bounded_nan_free(seed: int) -> None:
    p, q = _random_probs(seed).float(), _random_probs(seed + 7).float()
    a, b = js_divergence(p, q), js_divergence(q, p)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert torch.isfinite(a).all()
    assert (a >= 0).all() and (a <= LN2).all()
    bits = js_divergence(p, q, base=2)
    assert (bits >= 0).all() and (bits <= 1).all()
    torch.testing.assert_close(bits, a / LN2)


def test_js_identical_is_zero_and_disjoint_is_ln2() -> None:
    p = _random_probs(3)
    assert torch.equal(js_divergence(p, p), torch.zeros(p.shape[0], dtype=torch.float64))
    eye = torch.eye(5)
    js = js_divergence(eye[[0, 1, 2]], eye[[1, 2, 3]])
    torch.testing.assert_close(js, torch.full((3,), LN2))
    torch.testing.assert_close(js_divergence(eye[:1], eye[1:2], base=2), torch.ones(1))
    # base-10 for good measure: ln2 / ln10
    torch.testing.assert_close(js_divergence(eye[:1], eye[1:2], base=10), torch.tensor([math.log10(2)]))


def test_js_near_identical_never_negative() -> None:
    # float32 rounding makes the raw sum slightly negative here; the result must stay in [0, ln 2]
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4096, 10, generator=g), dim=-1)
    q = p * (1 + 1e-6 * torch.randn(4096, 10, generator=g))
    q = q / q.sum(dim=-1, keepdim=True)
    js = js_divergence(p, q)
    assert js.dtype == torch.float32
    assert (js >= 0).all() and (js < 1e-6).all()


def test_js_hand_value() -> None:
    # p=[1,0], q=[.5,.5]: m=[.75,.25]; KL(p‖m)=ln(4/3); KL(q‖m)=.5ln(2/3)+.5ln2
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
    expected = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    assert js_divergence(p, q).item() == pytest.approx(expected, rel=1e-6)


def test_js_zeros_everywhere_never_nan() -> None:
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    js = js_divergence(p, q, eps=0.0)
    assert torch.isfinite(js).all()
    torch.testing.assert_close(js, torch.tensor([0.0, LN2, 0.5 * LN2]))


def test_js_batched_dims_and_dtypes() -> None:
    p = _random_probs(1, batch=24).reshape(2, 3, 4, 7)
    q = _random_probs(2, batch=24).reshape(2, 3, 4, 7)
    assert js_divergence(p, q).shape == (2, 3, 4)
    assert js_divergence(p, q).dtype == torch.float64
    # class dim first
    torch.testing.assert_close(js_divergence(p.movedim(-1, 0), q.movedim(-1, 0), dim=0), js_divergence(p, q))
    # half precision inputs are computed (and returned) in float32
    out = js_divergence(p.half(), q.half())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "p,q,match",
    [
        (torch.ones(2, 3) / 3, torch.ones(2, 4) / 4, "same shape"),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([[0.5, 0.5]]), "non-finite"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([[float("inf"), 0.0]]), "non-finite"),
        (torch.tensor([[-1.0, 2.0]]), torch.tensor([[0.5, 0.5]]), "negative"),
    ],
)
def test_js_validation(p: torch.Tensor, q: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        js_divergence(p, q)


@pytest.mark.parametrize("base", [0, -2, 1, float("nan")])
def test_js_bad_base(base: float) -> None:
    with pytest.raises(ValueError, match="base"):
        js_divergence(torch.ones(3) / 3, torch.ones(3) / 3, base=base)


# ----------------------------------------------------------------------------- entropy
@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_matches_scipy(seed: int) -> None:
    p = _random_probs(seed)
    np.testing.assert_allclose(entropy(p).numpy(), sp_entropy(p.numpy(), axis=-1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        entropy(p, base=2).numpy(), sp_entropy(p.numpy(), base=2, axis=-1), rtol=1e-9, atol=1e-12
    )


def test_entropy_hand_values() -> None:
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(entropy(p), torch.tensor([0.0, math.log(4), LN2]))
    torch.testing.assert_close(entropy(p, base=2), torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        entropy(torch.tensor([float("nan"), 1.0]))


# ----------------------------------------------------------------------------- T^3
def test_t3_paper_defaults_range() -> None:
    js = torch.tensor([0.0, LN2])
    lam = t3_lambda(js)
    assert lam[0].item() == pytest.approx(0.5, abs=1e-7)
    assert lam[1].item() == pytest.approx(1 / (1 + math.exp(-0.5 * LN2)), abs=1e-7)
    # σ(0.5·ln2) = 1/(1 + 2^-0.5) = 0.58579 (≈ 0.586)
    assert lam[1].item() == pytest.approx(0.5858, abs=1e-4)
    assert (t3_lambda(torch.linspace(0, LN2, 101)) <= lam[1] + 1e-7).all()


def test_t3_hand_value_with_knobs() -> None:
    # λ = 0.2 + 0.6·σ(2·(0.5 − 0.25)) = 0.2 + 0.6·σ(0.5)
    lam = t3_lambda(torch.tensor([0.5]), gamma=2.0, lambda_min=0.2, lambda_max=0.8, tau=0.25)
    assert lam.item() == pytest.approx(0.2 + 0.6 / (1 + math.exp(-0.5)), rel=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_t3_monotone_and_bounded(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    js = torch.sort(torch.rand(200, generator=g) * LN2).values
    for gamma, lo, hi, tau in [(0.5, 0.0, 1.0, 0.0), (8.0, 0.1, 0.9, 0.3), (50.0, 0.3, 0.35, 0.2)]:
        lam = t3_lambda(js, gamma=gamma, lambda_min=lo, lambda_max=hi, tau=tau)
        assert (lam.diff() >= 0).all()
        lo_t, hi_t = torch.tensor(lo, dtype=lam.dtype), torch.tensor(hi, dtype=lam.dtype)
        assert (lam >= lo_t).all() and (lam <= hi_t).all()
        assert lam[-1] > lam[0]  # strictly informative for gamma > 0 on a spread of JS


def test_t3_constant_cases() -> None:
    js = torch.linspace(0, LN2, 11)
    torch.testing.assert_close(t3_lambda(js, gamma=0.0), torch.full((11,), 0.5))
    lam = t3_lambda(js, gamma=0.0, lambda_min=0.2, lambda_max=0.6)
    torch.testing.assert_close(lam, torch.full((11,), 0.4))
    lam = t3_lambda(js, gamma=3.0, lambda_min=0.7, lambda_max=0.7)
    torch.testing.assert_close(lam, torch.full((11,), 0.7))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lambda_min": 0.8, "lambda_max": 0.2}, "lambda_min"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"lambda_max": float("inf")}, "lambda_max"),
        ({"tau": float("nan")}, "tau"),
    ],
)
def test_t3_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        t3_lambda(torch.tensor([0.1]), **kwargs)


def test_t3_nan_js_rejected() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        t3_lambda(torch.tensor([0.1, float("nan")]))


def test_t3_batch_is_mean_broadcast() -> None:
    lam = torch.tensor([0.5, 0.6, 0.7, 0.9])
    out = t3_batch_lambda(lam)
    assert out.shape == lam.shape
    torch.testing.assert_close(out, torch.full((4,), 0.675))
    lam2 = torch.tensor([[0.1, 0.3], [0.5, 0.7]])
    torch.testing.assert_close(t3_batch_lambda(lam2), torch.full((2, 2), 0.4))
    with pytest.raises(ValueError):
        t3_batch_lambda(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError):
        t3_batch_lambda(torch.tensor([]))


# ----------------------------------------------------------------------------- DaWin
def test_dawin_hand_formula() -> None:
    p_gen = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    p_exp = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    h_gen = [math.log(4), 0.0, LN2]
    h_exp = [0.0, math.log(4), LN2]
    expected = [math.exp(-hg) / (math.exp(-hg) + math.exp(-he)) for hg, he in zip(h_gen, h_exp)]
    lam = dawin_lambda(p_gen, p_exp)
    torch.testing.assert_close(lam, torch.tensor(expected))
    # e^{-ln4} / (e^{-ln4} + 1) = 0.25 / 1.25 = 0.2 ; symmetric case 0.8 ; equal entropies 0.5
    torch.testing.assert_close(lam, torch.tensor([0.2, 0.8, 0.5]))


@pytest.mark.parametrize("seed", SEEDS)
def test_dawin_equal_entropies_give_half(seed: int) -> None:
    p = _random_probs(seed)
    perm = p[:, torch.randperm(p.shape[1], generator=torch.Generator().manual_seed(seed))]  # same H
    torch.testing.assert_close(dawin_lambda(p, perm), torch.full((p.shape[0],), 0.5, dtype=torch.float64))


def test_dawin_offset_matches_official_formula() -> None:
    # Official (naver-ai/dawin): c = mean CV of entropies, w = (mean H_zs + mean H_ft)/mean H_zs,
    # expert coef = (e^{-H_ft} + c/w) / (e^{-H_zs} + e^{-H_ft} + c); we return 1 - coef.
    p_gen = _random_probs(11, batch=32)
    p_exp = _random_probs(12, batch=32)
    hg = sp_entropy(p_gen.numpy(), axis=-1)
    he = sp_entropy(p_exp.numpy(), axis=-1)
    c = (hg.std(ddof=1) / hg.mean() + he.std(ddof=1) / he.mean()) / 2
    w = (hg.mean() + he.mean()) / hg.mean()
    coef_exp = (np.exp(-he) + c / w) / (np.exp(-hg) + np.exp(-he) + c)
    np.testing.assert_allclose(dawin_lambda(p_gen, p_exp, offset=True).numpy(), 1 - coef_exp, rtol=1e-10)
    assert dawin_offset_stats(p_gen, p_exp) == pytest.approx((c, w), rel=1e-10)
    # a precomputed (c, w) pair gives the same
    np.testing.assert_allclose(dawin_lambda(p_gen, p_exp, offset=(c, w)).numpy(), 1 - coef_exp, rtol=1e-10)
    # and the adjustment actually changes the coefficients
    assert not torch.allclose(dawin_lambda(p_gen, p_exp, offset=True), dawin_lambda(p_gen, p_exp))


def test_dawin_offset_hand_value() -> None:
    # H_gen = [ln2, ln2] -> mean ln2, std 0 ; H_exp = [0, ln4] -> mean ln2, std (ddof=1) = ln2·√2
    # c = (0 + √2)/2 = 1/√2 ; w = 2 ; sample 0: e^{-H_gen}=.5, e^{-H_exp}=1
    # coef_exp = (1 + c/2)/(1.5 + c) ; λ = 1 - coef_exp
    p_gen = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    p_exp = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    c = 1 / math.sqrt(2)
    lam0 = 1 - (1 + c / 2) / (1.5 + c)
    lam1 = 1 - (0.25 + c / 2) / (0.75 + c)
    expected = torch.tensor([lam0, lam1], dtype=torch.float64)
    torch.testing.assert_close(dawin_lambda(p_gen, p_exp, offset=True), expected)


def test_dawin_validation() -> None:
    with pytest.raises(ValueError, match="same shape"):
        dawin_lambda(torch.ones(2, 3) / 3, torch.ones(2, 2) / 2)
    with pytest.raises(ValueError, match="non-finite"):
        dawin_lambda(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="at least 2"):
        dawin_lambda(torch.ones(1, 3) / 3, torch.ones(1, 3) / 3, offset=True)
    with pytest.raises(ValueError, match="offset"):
        dawin_lambda(torch.ones(2, 3) / 3, torch.ones(2, 3) / 3, offset=(1.0,))

