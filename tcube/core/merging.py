"""Static merges of state dicts (``dict[str, Tensor]``), FusionBench style: pure functions.

Conventions (all functions):
- λ / α is the **weight on the generalist** (tcube's one convention), ``slerp`` included.
- Method coefficients (``scale``, ``density``, ``drop``, ``seed``, ``alpha``) have no defaults here:
  the defaults live in one place, the method registry (``tcube.methods``).
- Arithmetic in float32 (float64 if any input of that key is float64); each result is cast back
  to the dtype of the first (base) state dict's tensor.
- Non-floating tensors (int/bool buffers) are copied from the first (base) state dict, never merged.
- All inputs must have identical keys and shapes (else ``ValueError``); inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "interpolate",
    "weight_average",
    "wise_ft",
    "task_vector",
    "task_arithmetic",
    "combine",
    "ties",
    "dare",
    "slerp",
]

StateDict = Mapping[str, Tensor]

_MAX_LISTED = 5


# ----------------------------------------------------------------------------- helpers
def _finite(name: str, v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _in_unit(name: str, v: float) -> float:
    v = _finite(name, v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    return v


def _as_list(finetuned: StateDict | Sequence[StateDict], name: str) -> list[StateDict]:
    sds = [finetuned] if isinstance(finetuned, Mapping) else list(finetuned)
    if not sds:
        raise ValueError(f"{name} must contain at least one state dict")
    return sds


def _fmt_keys(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}]{more}"


def _validate(sds: Sequence[StateDict]) -> None:
    """Same keys, same shapes, same floating-ness; else ValueError listing the first few keys."""
    if not sds:
        raise ValueError("need at least one state dict")
    for i, sd in enumerate(sds):
        if not isinstance(sd, Mapping):
            raise TypeError(f"state dict #{i} must be a mapping str -> Tensor, got {type(sd).__name__}")
        bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"state dict #{i} has non-tensor values for keys {_fmt_keys(bad)}")
        cplx = [k for k, v in sd.items() if v.is_complex()]
        if cplx:
            raise ValueError(f"state dict #{i} has complex tensors (unsupported): {_fmt_keys(cplx)}")
    ref = sds[0]
    ref_keys = list(ref.keys())
    ref_set = set(ref_keys)
    problems: list[str] = []
    for i, sd in enumerate(sds[1:], start=1):
        missing = [k for k in ref_keys if k not in sd]
        extra = [k for k in sd.keys() if k not in ref_set]
        if missing:
            problems.append(f"keys missing from state dict #{i}: {_fmt_keys(missing)}")
        if extra:
            problems.append(f"unexpected keys in state dict #{i}: {_fmt_keys(extra)}")
        shape_bad = [
            f"{k!r} {tuple(ref[k].shape)} vs {tuple(sd[k].shape)}"
            for k in ref_keys
            if k in sd and ref[k].shape != sd[k].shape
        ]
        if shape_bad:
            more = f" (+{len(shape_bad) - _MAX_LISTED} more)" if len(shape_bad) > _MAX_LISTED else ""
            problems.append(
                f"shape mismatch with state dict #{i}: " + "; ".join(shape_bad[:_MAX_LISTED]) + more
            )
        kind_bad = [
            k
            for k in ref_keys
            if k in sd and ref[k].is_floating_point() != sd[k].is_floating_point()
        ]
        if kind_bad:
            problems.append(
                f"floating/non-floating dtype mismatch with state dict #{i}: {_fmt_keys(kind_bad)}"
            )
    if problems:
        raise ValueError("incompatible state dicts: " + " | ".join(problems))


def _merge(
    sds: Sequence[StateDict],
    fn: Callable[[str, list[Tensor]], Tensor],
    *,
    sorted_keys: bool = False,
) -> dict[str, Tensor]:
    """Validate, then per floating key call ``fn(key, tensors_in_compute_dtype)``; cast back.

    ``sorted_keys``: visit keys in sorted order (for RNG-consuming ``fn``); the output keeps the
    first state dict's key order either way.
    """
    _validate(sds)
    ref = sds[0]
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for k in sorted(ref.keys()) if sorted_keys else ref.keys():
            r = ref[k]
            if not r.is_floating_point():
                out[k] = r.detach().clone()
                continue
            dt = torch.float32
            for sd in sds:
                dt = torch.promote_types(dt, sd[k].dtype)
            ts = [sd[k].detach().to(device=r.device, dtype=dt) for sd in sds]
            res = fn(k, ts)
            res = res.to(r.dtype)
            if any(res.data_ptr() == sd[k].data_ptr() for sd in sds if sd[k].numel()):
                res = res.clone()  # never alias an input
            out[k] = res
    return {k: out[k] for k in ref.keys()}


# ----------------------------------------------------------------------------- linear merges
def interpolate(sd_gen: StateDict, sd_exp: StateDict, lam: float) -> dict[str, Tensor]:
    """λ·θ_gen + (1 − λ)·θ_exp; λ = weight on the generalist (any finite λ: extrapolation allowed)."""
    lam = _finite("lam", lam)
    return _merge([sd_gen, sd_exp], lambda _k, t: lam * t[0] + (1.0 - lam) * t[1])


def weight_average(state_dicts: Sequence[StateDict]) -> dict[str, Tensor]:
    """Plain (uniform) mean of the state dicts (FusionBench's ``simple_average``; mergekit's ``linear``
    with equal weights)."""
    sds = _as_list(state_dicts, "state_dicts")
    n = len(sds)

    def fn(_k: str, t: list[Tensor]) -> Tensor:
        return torch.stack(t).sum(dim=0) / n

    return _merge(sds, fn)


def wise_ft(sd_gen: StateDict, sd_exp: StateDict, alpha: float) -> dict[str, Tensor]:
    """WiSE-FT: α·θ_gen + (1 − α)·θ_exp, α ∈ [0, 1] = weight on the **generalist** (tcube's rule).

    The WiSE-FT paper's α weights the fine-tuned model instead: paper α = 1 − tcube α.
    mergekit's ``linear``: ``weight`` α on the generalist and 1 − α on the expert.
    """
    alpha = _in_unit("alpha", alpha)
    return interpolate(sd_gen, sd_exp, alpha)


# ----------------------------------------------------------------------------- task vectors
def task_vector(base: StateDict, finetuned: StateDict) -> dict[str, Tensor]:
    """τ = θ_ft − θ_base (non-floating buffers are copied from ``base``)."""
    return _merge([base, finetuned], lambda _k, t: t[1] - t[0])


def task_arithmetic(
    base: StateDict, finetuned: StateDict | Sequence[StateDict], scale: float
) -> dict[str, Tensor]:
    """θ_base + s·Σ_k τ_k with τ_k = θ_k − θ_base (``finetuned``: one state dict or a sequence).

    Same as FusionBench's ``task_arithmetic_merge`` (``scaling_factor`` = s) and mergekit's
    ``task_arithmetic`` (``weight`` = s per model, or ``lambda`` = s with weight 1).
    """
    scale = _finite("scale", scale)
    fts = _as_list(finetuned, "finetuned")

    def fn(_k: str, t: list[Tensor]) -> Tensor:
        b = t[0]
        total = torch.zeros_like(b)
        for x in t[1:]:
            total = total + (x - b)
        return b + scale * total

    return _merge([base, *fts], fn)


def combine(sd_gen: StateDict, sd_experts: Sequence[StateDict], weights: Sequence[float]) -> dict[str, Tensor]:
    """θ_gen + Σ_k w_k·(θ_k − θ_gen): one weight per expert on its task vector (any finite values).

    The multi-expert merge (several experts fine-tuned from one generalist); with one expert and
    w = 1 − λ it is ``interpolate(sd_gen, sd_exp, λ)``.
    """
    experts = _as_list(sd_experts, "sd_experts")
    ws = [_finite(f"weights[{k}]", w) for k, w in enumerate(weights)]
    if len(ws) != len(experts):
        raise ValueError(f"need one weight per expert: {len(experts)} experts, {len(ws)} weights")

    def fn(_k: str, t: list[Tensor]) -> Tensor:
        out = t[0]
        for w, x in zip(ws, t[1:]):
            out = out + w * (x - t[0])
        return out

    return _merge([sd_gen, *experts], fn)


def _topk_mask(x: Tensor, density: float) -> Tensor:
    """Keep-mask of the k = ⌈density·numel⌉ largest |x|; ties broken by lower flat index."""
    n = x.numel()
    k = min(n, max(1, math.ceil(round(density * n, 6))))
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    flat = x.reshape(-1).abs()
    # stable descending sort keeps equal magnitudes in index order -> deterministic tie-break
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros(n, dtype=torch.bool, device=x.device)
    mask[order] = True
    return mask.reshape(x.shape)


def ties(
    base: StateDict,
    finetuned: StateDict | Sequence[StateDict],
    *,
    density: float,
    scale: float,
) -> dict[str, Tensor]:
    """TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean; θ = θ_base + s·merged.

    Trim: per task vector and per tensor keep the k = ⌈density·numel⌉ largest magnitudes; ties at
    the threshold go to the lower flat index (stable sort), so exactly k entries are kept.
    Elect: sign of the sum of trimmed values. Merge: mean over the nonzero trimmed entries whose
    sign equals the elected one; entries with no agreeing value (incl. sum exactly 0) get 0.

    Coming from other tools (checked against their code, ``scripts/compare_merges.py``):
    - FusionBench 0.2.33 (``TiesMergingAlgorithm``; ``threshold`` = density, values > 1 read as
      percent; ``scaling_factor`` = scale): trims over the whole flattened model, not per tensor;
      keeps ⌊d·n⌋ + 1 entries (plus threshold ties), so it matches ⌈d·n⌉ only when d·n is not an
      integer (and ``threshold=1`` fails); sums the agreeing values by default (``merge_func=sum``;
      ``mean`` is this); a zero-sum entry gets the sign of the majority over the whole model.
    - mergekit 0.1.5 (``ties``; ``density`` = density, ``lambda`` = scale with ``weight`` 1):
      per tensor, but keeps max(1, ⌊d·n⌋) entries (threshold ties in no set order); a zero-sum
      entry is elected + (mean of its positive values).
    With those mapped (one tensor, d·n chosen so the counts coincide, no zero sums) both agree to
    float32 rounding.
    """
    density = _finite("density", density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    scale = _finite("scale", scale)
    fts = _as_list(finetuned, "finetuned")

    def fn(_k: str, t: list[Tensor]) -> Tensor:
        b = t[0]
        if b.numel() == 0:
            return b.clone()
        trimmed = []
        for x in t[1:]:
            tau = x - b
            trimmed.append(torch.where(_topk_mask(tau, density), tau, torch.zeros_like(tau)))
        stacked = torch.stack(trimmed)  # [K, ...]
        elected = torch.sign(stacked.sum(dim=0))
        agree = (torch.sign(stacked) == elected) & (stacked != 0)
        selected = torch.where(agree, stacked, torch.zeros_like(stacked))
        count = agree.sum(dim=0).clamp_min(1).to(b.dtype)
        merged = selected.sum(dim=0) / count
        return b + scale * merged

    return _merge([base, *fts], fn)


def dare(
    base: StateDict,
    finetuned: StateDict | Sequence[StateDict],
    *,
    drop: float,
    scale: float,
    seed: int,
) -> dict[str, Tensor]:
    """DARE (Yu et al., 2024): drop each task-vector entry w.p. ``drop``, rescale kept by 1/(1−drop).

    θ = θ_base + s·Σ_k τ̃_k. Masks come from a CPU ``torch.Generator`` seeded with ``seed``
    (global RNG untouched), drawn key by key in sorted order (tasks in order within a key):
    deterministic and independent of dict order and device.

    Coming from other tools (checked against their code, ``scripts/compare_merges.py``):
    - FusionBench 0.2.33 (``DareTaskArithmetic``): ``drop`` = ``sparsity_ratio``, s =
      ``scaling_factor``, same 1/(1−p) rescale; it draws from the global RNG, and after
      ``torch.manual_seed(seed)`` with keys in sorted order it draws this mask (one expert).
    - mergekit 0.1.5 (``dare_linear`` / ``dare_ties``): ``drop`` = 1 − ``density``, and its default
      rescale (``rescale: true``) restores each tensor's L1 norm, ‖τ‖₁/‖τ̃‖₁, a factor that varies
      per tensor, instead of 1/(1−p); with ``rescale: false`` and ``weight`` = s/(1−p) it is this.
    """
    drop = _finite("drop", drop)
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    scale = _finite("scale", scale)
    fts = _as_list(finetuned, "finetuned")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    keep_scale = 1.0 / (1.0 - drop)

    def fn(_k: str, t: list[Tensor]) -> Tensor:
        b = t[0]
        total = torch.zeros_like(b)
        for x in t[1:]:
            keep = torch.rand(b.shape, generator=gen, dtype=torch.float32) >= drop
            keep = keep.to(b.device)
            total = total + torch.where(keep, (x - b) * keep_scale, torch.zeros_like(b))
        return b + scale * total

    return _merge([base, *fts], fn, sorted_keys=True)


# ----------------------------------------------------------------------------- SLERP
_DOT_THRESHOLD = 0.9995
_NORM_EPS = 1e-8


def slerp(sd_gen: StateDict, sd_exp: StateDict, *, alpha: float) -> dict[str, Tensor]:
    """Per-tensor spherical interpolation; ``alpha`` ∈ [0, 1] = weight on the **generalist**.

    alpha = 1 → generalist, alpha = 0 → expert (as ``wise_ft``). With Ω the angle between the
    flattened tensors, θ = sin(αΩ)/sin Ω·θ_gen + sin((1−α)Ω)/sin Ω·θ_exp: the original tensors
    are combined, only the angle uses normalised ones. Linear interpolation α·θ_gen + (1−α)·θ_exp
    when nearly colinear or antiparallel (|cos Ω| > 0.9995) or when either norm is ≤ 1e-8.

    Coming from FusionBench (``slerp(t, v0, v1)``) or mergekit (``slerp`` with ``t``), both with
    the generalist as the first/base model: their ``t`` weights the *expert*, so t = 1 − alpha.
    With that mapping the results agree to float32 rounding, except for a zero-norm tensor:
    both references then use the slerp formula with Ω = π/2 (e.g. cos(tπ/2)·v0 for v1 = 0) where
    tcube interpolates linearly.
    """
    alpha = _in_unit("alpha", alpha)
    t = 1.0 - alpha  # weight on the expert

    def fn(_k: str, ts: list[Tensor]) -> Tensor:
        a, b = ts
        if alpha == 1.0:
            return a.clone()
        if alpha == 0.0:
            return b.clone()
        na = torch.linalg.vector_norm(a)
        nb = torch.linalg.vector_norm(b)
        if float(na) <= _NORM_EPS or float(nb) <= _NORM_EPS:
            return alpha * a + t * b
        dot = float(((a / na) * (b / nb)).sum().clamp(-1.0, 1.0))
        if abs(dot) > _DOT_THRESHOLD:
            return alpha * a + t * b
        omega = math.acos(dot)
        sin_omega = math.sin(omega)
        s_gen = math.sin(alpha * omega) / sin_omega
        s_exp = math.sin(t * omega) / sin_omega
        return s_gen * a + s_exp * b

    return _merge([sd_gen, sd_exp], fn)
