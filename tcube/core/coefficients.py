"""Merging coefficients: JS divergence, entropy, and the T^3 / T^3_B / DaWin rules.

Pure torch functions, batched over leading dimensions. tcube's one convention: every λ returned
here is the **weight on the generalist**, θ = λ·θ_gen + (1 − λ)·θ_exp.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "js_divergence",
    "entropy",
    "t3_lambda",
    "t3_batch_lambda",
    "dawin_lambda",
    "dawin_offset_stats",
]

_LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- helpers
def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 at least; float64 if any input is float64."""
    dt = torch.float32
    for t in tensors:
        if t.is_complex():
            raise ValueError(f"complex inputs are not supported (got {t.dtype})")
        if t.is_floating_point():
            dt = torch.promote_types(dt, t.dtype)
    return dt


def _check_finite(name: str, t: Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or Inf)")


def _check_probs(name: str, p: Tensor) -> None:
    if p.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class dimension)")
    _check_finite(name, p)
    if bool((p < 0).any()):
        raise ValueError(f"{name} has negative entries: expected probabilities, not logits")


def _check_scalar(name: str, v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _log_base(base: float | None) -> float:
    if base is None:
        return 1.0
    b = float(base)
    if not math.isfinite(b) or b <= 0 or b == 1.0:
        raise ValueError(f"base must be a positive finite number other than 1, got {base!r}")
    return math.log(b)


def _plogp(p: Tensor, eps: float) -> Tensor:
    # xlogy: 0·log(0) = 0 exactly; eps floors the log argument so no -inf can appear.
    return torch.special.xlogy(p, p.clamp_min(eps))


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


# ----------------------------------------------------------------------------- divergences
def js_divergence(
    p: Tensor, q: Tensor, *, base: float | None = None, eps: float = 1e-12, dim: int = -1
) -> Tensor:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2, reduced over ``dim``.

    Natural log by default (values in [0, ln 2]); ``base=2`` gives bits ([0, 1]). Zero entries
    contribute 0 (no NaN). Inputs are used as given (not renormalised). Computed in ≥ float32.
    """
    p = torch.as_tensor(p)
    q = torch.as_tensor(q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    _check_probs("p", p)
    _check_probs("q", q)
    eps = _check_eps(eps)
    ln_base = _log_base(base)
    dt = _compute_dtype(p, q)
    p = p.to(dt)
    q = q.to(dt)
    m = 0.5 * (p + q)
    m_c = m.clamp_min(eps)
    # KL(p‖m) = Σ p log p − p log m ; xlogy keeps 0·log(·) = 0 where p = 0.
    kl_pm = _plogp(p, eps) - torch.special.xlogy(p, m_c)
    kl_qm = _plogp(q, eps) - torch.special.xlogy(q, m_c)
    js = 0.5 * (kl_pm.sum(dim=dim) + kl_qm.sum(dim=dim))
    js = js.clamp(0.0, _LN2)  # remove tiny rounding outside the mathematical range
    return js / ln_base if ln_base != 1.0 else js


def entropy(p: Tensor, *, base: float | None = None, eps: float = 1e-12, dim: int = -1) -> Tensor:
    """Shannon entropy −Σ p log p over ``dim`` (nats by default; 0·log 0 = 0). Computed in ≥ float32."""
    p = torch.as_tensor(p)
    _check_probs("p", p)
    eps = _check_eps(eps)
    ln_base = _log_base(base)
    p = p.to(_compute_dtype(p))
    h = (-_plogp(p, eps).sum(dim=dim)).clamp_min(0.0)
    return h / ln_base if ln_base != 1.0 else h


# ----------------------------------------------------------------------------- λ rules
def t3_lambda(
    js: Tensor,
    *,
    gamma: float = 0.5,
    lambda_min: float = 0.0,
    lambda_max: float = 1.0,
    tau: float = 0.0,
) -> Tensor:
    """T^3 rule λ = λ_min + (λ_max − λ_min)·σ(γ·(JS − τ)); λ is the weight on the generalist."""
    # NB: with the paper's defaults (γ=0.5, λ∈[0,1], τ=0) and JS ∈ [0, ln 2] nats, λ only spans
    # [σ(0), σ(0.5·ln 2)] = [0.5, 1/(1+2^-0.5)] ≈ [0.5, 0.586]. This is the published rule; we
    # expose the knobs and do not change it.
    gamma = _check_scalar("gamma", gamma)
    lambda_min = _check_scalar("lambda_min", lambda_min)
    lambda_max = _check_scalar("lambda_max", lambda_max)
    tau = _check_scalar("tau", tau)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if lambda_min > lambda_max:
        raise ValueError(f"lambda_min ({lambda_min}) must be <= lambda_max ({lambda_max})")
    js = torch.as_tensor(js)
    _check_finite("js", js)
    js = js.to(_compute_dtype(js))
    lam = lambda_min + (lambda_max - lambda_min) * torch.sigmoid(gamma * (js - tau))
    return lam.clamp(lambda_min, lambda_max)  # rounding must not leave [λ_min, λ_max]


def t3_batch_lambda(lambdas: Tensor) -> Tensor:
    """T^3_B: one λ_B = mean of the per-sample λ, broadcast to the input's shape."""
    lambdas = torch.as_tensor(lambdas)
    if lambdas.numel() == 0:
        raise ValueError("t3_batch_lambda needs at least one per-sample lambda")
    _check_finite("lambdas", lambdas)
    lambdas = lambdas.to(_compute_dtype(lambdas))
    return lambdas.mean().expand(lambdas.shape).clone()


def dawin_offset_stats(
    p_gen: Tensor, p_exp: Tensor, *, dim: int = -1, eps: float = 1e-12
) -> tuple[float, float]:
    """DaWin's domain-wise offset statistics (c, w) over all samples given (see ``dawin_lambda``).

    c = (std(H_gen)/mean(H_gen) + std(H_exp)/mean(H_exp)) / 2 (unbiased std, as torch's default),
    w = (mean(H_gen) + mean(H_exp)) / mean(H_gen).
    """
    p_gen = torch.as_tensor(p_gen)
    p_exp = torch.as_tensor(p_exp)
    if p_gen.shape != p_exp.shape:
        raise ValueError(
            f"p_gen and p_exp must have the same shape, got {tuple(p_gen.shape)} and {tuple(p_exp.shape)}"
        )
    h_gen = entropy(p_gen, eps=eps, dim=dim).reshape(-1)
    h_exp = entropy(p_exp, eps=eps, dim=dim).reshape(-1)
    if h_gen.numel() < 2:
        raise ValueError("DaWin offset adjustment needs at least 2 samples (it uses a std)")
    mg, me = h_gen.mean(), h_exp.mean()
    if float(mg) <= 0 or float(me) <= 0:
        raise ValueError("DaWin offset adjustment is undefined when a model's mean entropy is 0")
    c = (h_gen.std() / mg + h_exp.std() / me) / 2
    w = (mg + me) / mg
    return float(c), float(w)


def dawin_lambda(
    p_gen: Tensor,
    p_exp: Tensor,
    *,
    offset: bool | tuple[float, float] | None = None,
    dim: int = -1,
    eps: float = 1e-12,
) -> Tensor:
    """DaWin (Oh et al., ICLR 2025) per-sample λ (weight on the generalist) from prediction entropies.

    Expert weight e^{−H_exp}/(e^{−H_gen}+e^{−H_exp}); returned λ = 1 − that = σ(H_exp − H_gen).
    ``offset``: None/False = plain rule; True = official offset adjustment with (c, w) computed over
    the samples given; or a precomputed ``(c, w)`` from :func:`dawin_offset_stats`.
    """
    # Offset adjustment as in the official code (naver-ai/dawin, dawin_rft/main_dawin.py,
    # "domain-wise offset adjustment", --offset-adjustment): expert weight becomes
    # (e^{−H_exp} + c/w) / (e^{−H_gen} + e^{−H_exp} + c), with (c, w) from dawin_offset_stats.
    p_gen = torch.as_tensor(p_gen)
    p_exp = torch.as_tensor(p_exp)
    if p_gen.shape != p_exp.shape:
        raise ValueError(
            f"p_gen and p_exp must have the same shape, got {tuple(p_gen.shape)} and {tuple(p_exp.shape)}"
        )
    h_gen = entropy(p_gen, eps=eps, dim=dim)
    h_exp = entropy(p_exp, eps=eps, dim=dim)
    if offset is None or offset is False:
        return torch.sigmoid(h_exp - h_gen)
    if offset is True:
        c, w = dawin_offset_stats(p_gen, p_exp, dim=dim, eps=eps)
    else:
        try:
            c, w = (float(v) for v in offset)  # type: ignore[union-attr]
        except (TypeError, ValueError) as err:
            raise ValueError(f"offset must be None, a bool or a (c, w) pair, got {offset!r}") from err
        if not (math.isfinite(c) and math.isfinite(w)) or c < 0 or w == 0:
            raise ValueError(f"offset (c, w) must be finite with c >= 0 and w != 0, got {(c, w)}")
    e_gen = torch.exp(-h_gen)  # entropies are in [0, ln C], so these lie in [1/C, 1]: no overflow
    e_exp = torch.exp(-h_exp)
    w_exp = (e_exp + c / w) / (e_gen + e_exp + c)
    return 1.0 - w_exp

