"""Tests for tcube.core.merging against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from tcube.core.merging import (
    combine,
    dare,
    interpolate,
    slerp,
    task_arithmetic,
    task_vector,
    ties,
    weight_average,
    wise_ft,
)

T = torch.tensor


def sd(w, **extra) -> dict[str, torch.Tensor]:
    return {"w": T(w, dtype=torch.float32), **extra}


def _clone(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in d.items()}


def _assert_unchanged(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for k in before:
        assert torch.equal(before[k], after[k]), k


# ----------------------------------------------------------------------------- linear merges
def test_interpolate_and_wise_ft_hand() -> None:
    a, b = sd([1.0, 2.0, 3.0, 4.0]), sd([5.0, 6.0, 7.0, 8.0])
    # 0.25·a + 0.75·b
    torch.testing.assert_close(interpolate(a, b, 0.25)["w"], T([4.0, 5.0, 6.0, 7.0]))
    torch.testing.assert_close(wise_ft(a, b, 0.25)["w"], T([4.0, 5.0, 6.0, 7.0]))
    # λ is the weight on the generalist (first argument)
    assert torch.equal(interpolate(a, b, 1.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 0.0)["w"], b["w"])
    assert torch.equal(wise_ft(a, b, 1.0)["w"], a["w"])


def test_weight_average_hand() -> None:
    sds = [sd([1.0, 2.0, 3.0, 4.0]), sd([5.0, 6.0, 7.0, 8.0]), sd([0.0, 1.0, 2.0, 3.0])]
    torch.testing.assert_close(weight_average(sds)["w"], T([2.0, 3.0, 4.0, 5.0]))
    with pytest.raises(ValueError):
        weight_average([])


def test_task_vector_and_arithmetic_hand() -> None:
    base = sd([1.0, 1.0, 1.0, 1.0])
    ft1 = sd([2.0, 1.0, 0.0, 1.0])  # τ1 = [1, 0, -1, 0]
    ft2 = sd([1.0, 3.0, 1.0, 0.0])  # τ2 = [0, 2, 0, -1]
    torch.testing.assert_close(task_vector(base, ft1)["w"], T([1.0, 0.0, -1.0, 0.0]))
    # base + 0.5·(τ1 + τ2) = 1 + 0.5·[1, 2, -1, -1]
    torch.testing.assert_close(task_arithmetic(base, [ft1, ft2], scale=0.5)["w"], T([1.5, 2.0, 0.5, 0.5]))
    # a single state dict is accepted; scale 1 with one expert gives the expert back
    torch.testing.assert_close(task_arithmetic(base, ft1, scale=1.0)["w"], ft1["w"])
    torch.testing.assert_close(task_arithmetic(base, ft1, scale=2.0)["w"], T([3.0, 1.0, -1.0, 1.0]))


def test_combine_hand() -> None:
    gen = sd([1.0, 1.0, 1.0, 1.0])
    experts = [sd([2.0, 1.0, 0.0, 1.0]), sd([1.0, 3.0, 1.0, 0.0])]  # τ1 = [1, 0, -1, 0], τ2 = [0, 2, 0, -1]
    # θ_gen + 0.5·τ1 − 1·τ2 (any finite weights: negative and extrapolated too)
    torch.testing.assert_close(combine(gen, experts, [0.5, -1.0])["w"], T([1.5, -1.0, 0.5, 2.0]))
    torch.testing.assert_close(combine(gen, experts, [0.0, 0.0])["w"], gen["w"])
    # one expert with w = 1 − λ is the two-model rule (λ = weight on the generalist)
    torch.testing.assert_close(combine(gen, experts[:1], [0.7])["w"], interpolate(gen, experts[0], 0.3)["w"])
    with pytest.raises(ValueError, match="one weight per expert"):
        combine(gen, experts, [0.5])
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        combine(gen, experts, [0.5, float("nan")])
    with pytest.raises(ValueError, match="sd_experts"):
        combine(gen, [], [])


# ----------------------------------------------------------------------------- TIES
def test_ties_sign_election_hand() -> None:
    base = sd([1.0, 1.0, 1.0, 1.0, 1.0])
    # density 0.6 on 5 entries -> keep k = 3 per task vector
    # τ1 = [3, .5, -2, 1, .1]  -> trimmed [3, 0, -2, 1, 0]
    # τ2 = [-1.5, 4, .2, -1, .3] -> trimmed [-1.5, 4, 0, -1, 0]
    # sum = [1.5, 4, -2, 0, 0] -> elected sign [+, +, -, 0, 0]
    # disjoint mean: [3 (τ2's -1.5 disagrees), 4, -2, 0 (sum 0: none agree), 0]
    ft1 = sd([4.0, 1.5, -1.0, 2.0, 1.1])
    ft2 = sd([-0.5, 5.0, 1.2, 0.0, 1.3])
    out = ties(base, [ft1, ft2], density=0.6, scale=1.0)["w"]
    torch.testing.assert_close(out, T([4.0, 5.0, -1.0, 1.0, 1.0]))
    out_half = ties(base, [ft1, ft2], density=0.6, scale=0.5)["w"]
    torch.testing.assert_close(out_half, T([2.5, 3.0, 0.0, 1.0, 1.0]))
    # differs from plain task arithmetic (1 + τ1 + τ2 = [2.5, 5.5, -0.8, 1, 1.4])
    assert not torch.allclose(out, task_arithmetic(base, [ft1, ft2], scale=1.0)["w"])


def test_ties_tie_break_lower_index() -> None:
    base = sd([0.0, 0.0, 0.0, 0.0])
    ft = sd([1.0, -1.0, 1.0, 0.5])  # three entries tie at |1|; k = 2 keeps indices 0 and 1
    torch.testing.assert_close(ties(base, [ft], density=0.5, scale=1.0)["w"], T([1.0, -1.0, 0.0, 0.0]))


def test_ties_tie_break_large_tensor() -> None:
    # 10_000 equal magnitudes, density 0.3 -> exactly the first 3_000 flat indices are kept
    base = {"w": torch.zeros(100, 100)}
    signs = torch.where(torch.arange(10_000) % 3 == 0, -1.0, 1.0).reshape(100, 100)
    out = ties(base, [{"w": signs}], density=0.3, scale=1.0)["w"].reshape(-1)
    assert torch.equal(out[:3000], signs.reshape(-1)[:3000])
    assert torch.equal(out[3000:], torch.zeros(7000))


def test_ties_density_one_single_task_is_task_arithmetic() -> None:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(3, 5, generator=g)}
    ft = {"w": torch.randn(3, 5, generator=g)}
    torch.testing.assert_close(ties(base, [ft], density=1.0, scale=1.0)["w"], ft["w"])


def test_ties_keeps_top_density_fraction_per_tensor() -> None:
    base = {"a": torch.zeros(10), "b": torch.zeros(20)}
    ft = {"a": torch.arange(1.0, 11.0), "b": -torch.arange(1.0, 21.0)}
    out = ties(base, [ft], density=0.2, scale=1.0)
    torch.testing.assert_close(out["a"], T([0.0] * 8 + [9.0, 10.0]))
    torch.testing.assert_close(out["b"], T([0.0] * 16 + [-17.0, -18.0, -19.0, -20.0]))


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_ties_bad_density(density: float) -> None:
    with pytest.raises(ValueError, match="density"):
        ties(sd([0.0]), [sd([1.0])], density=density, scale=1.0)


# ----------------------------------------------------------------------------- DARE
def _dare_inputs():
    g = torch.Generator().manual_seed(1)
    base = {"x": torch.randn(50, generator=g), "y": torch.randn(4, 8, generator=g)}
    fts = [{k: v + torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    return base, fts


def test_dare_deterministic_and_seed_dependent() -> None:
    base, fts = _dare_inputs()
    a = dare(base, fts, drop=0.5, scale=1.0, seed=3)
    torch.manual_seed(123)  # global RNG must not matter
    b = dare(base, fts, drop=0.5, scale=1.0, seed=3)
    c = dare(base, fts, drop=0.5, scale=1.0, seed=4)
    for k in base:
        assert torch.equal(a[k], b[k])
    assert not all(torch.equal(a[k], c[k]) for k in base)


def test_dare_does_not_touch_global_rng_and_ignores_dict_order() -> None:
    base, fts = _dare_inputs()
    state = torch.get_rng_state()
    a = dare(base, fts, drop=0.7, scale=1.0, seed=0)
    assert torch.equal(state, torch.get_rng_state())
    rev = lambda d: dict(reversed(list(d.items())))  # noqa: E731
    b = dare(rev(base), [rev(f) for f in fts], drop=0.7, scale=1.0, seed=0)
    for k in base:
        assert torch.equal(a[k], b[k])


def test_dare_entries_and_expectation() -> None:
    n = 200_000
    base = {"w": torch.zeros(n)}
    ft = {"w": torch.ones(n)}
    out = dare(base, [ft], drop=0.9, scale=1.0, seed=0)["w"]
    # every entry is dropped (0) or kept and rescaled by 1/(1-0.9) = 10
    assert torch.all((out == 0) | torch.isclose(out, torch.tensor(10.0)))
    assert abs((out != 0).float().mean().item() - 0.1) < 0.005
    assert abs(out.mean().item() - 1.0) < 0.03  # E[τ̃] = τ


def test_dare_drop_zero_is_task_arithmetic() -> None:
    base, fts = _dare_inputs()
    a = dare(base, fts, drop=0.0, scale=0.7, seed=9)
    b = task_arithmetic(base, fts, scale=0.7)
    for k in base:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_dare_hand_small() -> None:
    # drop=0.5: kept entries doubled, so each output entry is base or base + 2τ
    base = sd([1.0, 1.0, 1.0, 1.0])
    ft = sd([2.0, 3.0, 0.0, 1.5])  # τ = [1, 2, -1, .5]
    out = dare(base, [ft], drop=0.5, scale=1.0, seed=0)["w"]
    for o, tau in zip(out.tolist(), [1.0, 2.0, -1.0, 0.5]):
        assert o == pytest.approx(1.0) or o == pytest.approx(1.0 + 2 * tau)


@pytest.mark.parametrize("drop", [1.0, -0.1, 1.5])
def test_dare_bad_drop(drop: float) -> None:
    with pytest.raises(ValueError, match="drop"):
        dare(sd([0.0]), [sd([1.0])], drop=drop, scale=1.0, seed=0)


# ----------------------------------------------------------------------------- SLERP
def test_slerp_endpoints_alpha_is_weight_on_generalist() -> None:
    a, b = sd([1.0, 2.0, -3.0, 0.5]), sd([-2.0, 0.0, 1.0, 4.0])
    assert torch.equal(slerp(a, b, alpha=1.0)["w"], a["w"])  # alpha = 1 -> generalist (first argument)
    assert torch.equal(slerp(a, b, alpha=0.0)["w"], b["w"])  # alpha = 0 -> expert


def test_slerp_orthogonal_hand() -> None:
    a, b = sd([1.0, 0.0]), sd([0.0, 1.0])
    c45 = math.cos(math.pi / 4)
    out = slerp(a, b, alpha=0.5)["w"]
    torch.testing.assert_close(out, T([c45, c45]))
    assert torch.linalg.vector_norm(out).item() == pytest.approx(1.0, abs=1e-6)  # lerp would give 0.707
    # alpha = 2/3 on the generalist, Ω = π/2 -> [sin(π/3), sin(π/6)] = [0.8660, 0.5]
    torch.testing.assert_close(slerp(a, b, alpha=2 / 3)["w"], T([math.sqrt(3) / 2, 0.5]))
    torch.testing.assert_close(slerp(a, b, alpha=1 / 3)["w"], T([0.5, math.sqrt(3) / 2]))
    # non-unit orthogonal: combines the original tensors -> 2·[c45, c45]
    torch.testing.assert_close(slerp(sd([2.0, 0.0]), sd([0.0, 2.0]), alpha=0.5)["w"], T([2 * c45, 2 * c45]))


def test_slerp_same_convention_as_wise_ft() -> None:
    # colinear tensors fall back to lerp, so slerp and wise_ft must agree for every alpha
    a, b = sd([1.0, 2.0, 3.0]), sd([2.0, 4.0, 6.0])
    for alpha in (0.0, 0.2, 0.75, 1.0):
        torch.testing.assert_close(slerp(a, b, alpha=alpha)["w"], wise_ft(a, b, alpha)["w"])


def test_slerp_colinear_and_zero_fall_back_to_lerp() -> None:
    a, b = sd([1.0, 2.0, 3.0]), sd([2.0, 4.0, 6.0])
    torch.testing.assert_close(slerp(a, b, alpha=0.75)["w"], T([1.25, 2.5, 3.75]))  # 0.75a + 0.25b
    anti = sd([-1.0, -2.0, -3.0])
    torch.testing.assert_close(slerp(a, anti, alpha=0.75)["w"], T([0.5, 1.0, 1.5]))
    torch.testing.assert_close(slerp(sd([0.0, 0.0]), sd([1.0, 2.0]), alpha=0.5)["w"], T([0.5, 1.0]))
    torch.testing.assert_close(slerp(sd([0.0, 0.0]), sd([1.0, 2.0]), alpha=0.25)["w"], T([0.75, 1.5]))
    # scalar tensors (e.g. logit_scale) are colinear by construction
    out = slerp({"s": T(2.0)}, {"s": T(4.0)}, alpha=0.5)["s"]
    torch.testing.assert_close(out, T(3.0))


@pytest.mark.parametrize("alpha", [-0.1, 1.1, float("nan")])
def test_slerp_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must"):
        slerp(sd([1.0]), sd([2.0]), alpha=alpha)


def test_slerp_alpha_is_keyword_only() -> None:
    # the old positional third argument weighted the expert: refuse it rather than invert silently
    with pytest.raises(TypeError):
        slerp(sd([1.0]), sd([2.0]), 0.3)  # type: ignore[misc]


def test_method_coefficients_have_no_defaults() -> None:
    # defaults live in the method registry only (issue #10: dare's drop had drifted)
    base, ft = sd([0.0, 1.0]), sd([1.0, 2.0])
    with pytest.raises(TypeError):
        task_arithmetic(base, [ft])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ties(base, [ft], scale=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ties(base, [ft], density=0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        dare(base, [ft], scale=1.0, seed=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        dare(base, [ft], drop=0.5, seed=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        dare(base, [ft], drop=0.5, scale=1.0)  # type: ignore[call-arg]


def test_wise_ft_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        wise_ft(sd([1.0]), sd([2.0]), 1.5)


# ----------------------------------------------------------------------------- common contract
def _all_merges(a: dict, b: dict) -> dict[str, dict]:
    return {
        "interpolate": interpolate(a, b, 0.3),
        "wise_ft": wise_ft(a, b, 0.3),
        "weight_average": weight_average([a, b]),
        "task_vector": task_vector(a, b),
        "task_arithmetic": task_arithmetic(a, [b, b], scale=0.5),
        "combine": combine(a, [b, b], [0.3, 0.2]),
        "ties": ties(a, [b, b], density=0.5, scale=1.0),
        "dare": dare(a, [b, b], drop=0.5, scale=1.0, seed=0),
        "slerp": slerp(a, b, alpha=0.3),
    }


def test_non_float_buffers_copied_not_merged_and_inputs_untouched() -> None:
    a = {
        "w": T([1.0, 2.0, 3.0, 4.0]),
        "steps": T([7, 8, 9], dtype=torch.int64),
        "flag": T([True, False]),
    }
    b = {
        "w": T([4.0, 3.0, 2.0, 1.0]),
        "steps": T([100, 200, 300], dtype=torch.int64),
        "flag": T([False, True]),
    }
    a0, b0 = _clone(a), _clone(b)
    for name, out in _all_merges(a, b).items():
        assert list(out) == ["w", "steps", "flag"], name
        assert out["steps"].dtype == torch.int64 and out["steps"].tolist() == [7, 8, 9], name
        assert out["flag"].tolist() == [True, False], name
        for k in a:
            assert out[k].data_ptr() != a[k].data_ptr() and out[k].data_ptr() != b[k].data_ptr(), (name, k)
        out["steps"].add_(1)  # mutating an output must not reach the inputs
        out["w"].add_(1.0)
    _assert_unchanged(a0, a)
    _assert_unchanged(b0, b)


def test_bf16_in_bf16_out_computed_in_fp32() -> None:
    # mean(256, 1, 1, 1) = 64.75 -> bf16 rounds (tie to even) to 65.
    # Accumulating in bf16 would give 256+1 -> 256 (tie to even), ... -> 256/4 = 64.
    sds = [{"w": T([v], dtype=torch.bfloat16)} for v in (256.0, 1.0, 1.0, 1.0)]
    out = weight_average(sds)["w"]
    assert out.dtype == torch.bfloat16
    assert out.item() == 65.0
    # interpolate(x, x, 0.3) must give x back: 0.3·255 + 0.7·255 = 255 (bf16 arithmetic gives 254)
    x = {"w": T([255.0], dtype=torch.bfloat16)}
    same = interpolate(x, x, 0.3)["w"]
    assert same.dtype == torch.bfloat16 and same.item() == 255.0
    # 0.25·1 + 0.75·255 = 191.5 exactly -> bf16 (step 1 in [128, 256)) ties to even -> 192
    # (bf16 arithmetic: 0.75·255 rounds to 191, + 0.25 -> 191)
    inter = interpolate(sds[1], x, 0.25)["w"]
    assert inter.dtype == torch.bfloat16 and inter.item() == 192.0
    for name, out in _all_merges(sds[0], sds[1]).items():
        assert out["w"].dtype == torch.bfloat16, name


def test_float64_stays_float64_precision() -> None:
    a = {"w": T([1.0 + 2.0**-40], dtype=torch.float64)}
    b = {"w": T([1.0], dtype=torch.float64)}
    out = interpolate(a, b, 0.5)["w"]
    assert out.dtype == torch.float64
    assert out.item() == 1.0 + 2.0**-41  # float32 arithmetic would round this to 1.0


def test_mismatched_keys_and_shapes_raise_naming_key() -> None:
    a = {"enc.w": torch.zeros(4), "enc.b": torch.zeros(2)}
    missing = {"enc.w": torch.zeros(4)}
    with pytest.raises(ValueError, match="enc.b"):
        interpolate(a, missing, 0.5)
    extra = {**a, "head.w": torch.zeros(1)}
    with pytest.raises(ValueError, match="head.w"):
        task_arithmetic(a, [extra], scale=1.0)
    shaped = {"enc.w": torch.zeros(5), "enc.b": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"enc\.w.*\(4,\).*\(5,\)"):
        ties(a, [shaped], density=0.5, scale=1.0)
    with pytest.raises(ValueError, match="enc.w"):
        slerp(a, shaped, alpha=0.5)
    kind = {"enc.w": torch.zeros(4, dtype=torch.int64), "enc.b": torch.zeros(2)}
    with pytest.raises(ValueError, match="enc.w"):
        dare(a, [kind], drop=0.5, scale=1.0, seed=0)


def test_bad_lambda_and_scale() -> None:
    with pytest.raises(ValueError, match="lam"):
        interpolate(sd([1.0]), sd([2.0]), float("nan"))
    with pytest.raises(ValueError, match="scale"):
        task_arithmetic(sd([1.0]), [sd([2.0])], scale=float("inf"))
    with pytest.raises(ValueError):
        task_arithmetic(sd([1.0]), [], scale=1.0)
