"""Per-row merged ops: op(h; W_base + Σ_k c_rk·Δ_k) for every row r of a batch, exactly, in one call.

A fused model has a *base* model and K *other* models, with deltas Δ_k = W_other_k − W_base. Every
weight-bearing op is affine in its own weights given its input, so a merged op equals the base op plus
Σ_k c_rk times the op of Δ_k on the merged network's own activations. The pair engines use base = expert,
one other = generalist and c = λ (the weight on the generalist); the multi-expert engine uses base =
generalist, others = the K experts and c = w. `RowCoefficients` carries the per-row c [R, K] that all fused
modules of one model read.

Each op stores only the nonzero deltas with their indices k (an expert that left a layer untouched costs
nothing there). With a single stored delta an op runs the pair engines' elementwise form (addcmul), so
two-model results do not depend on this generalization. A linear layer keeps a delta that a LoRA expert's
factors give exactly (to rounding) as those factors, Δ_k = U_k·V_k, and adds Σ_k c_rk·U_k(V_k·x) to a plain
forward instead of paying a dense Δ (`factored_delta`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# When per-row weights beat the dual form, from benchmarks/bench_linear_forms.py (batch 32, 2 CPU threads):
# a weight that stays in cache (128→512, 256 KiB) is cheap to form per row: chunked 1.6× vs dual 2.3× a
# plain Linear at 65 tokens. A large one (768→3072, 9 MiB) is memory-bound to form: dual wins up to
# ~128 tokens (2.5× vs 2.9×), chunked wins at ViT-B/16's 197 (2.2× vs 2.6×).
CACHE_RESIDENT_BYTES = 2**20
CHUNKED_MIN_TOKENS_SMALL = 48   # weights ≤ CACHE_RESIDENT_BYTES
CHUNKED_MIN_TOKENS_LARGE = 160  # larger weights

Index = tuple[int, ...]
Factors = tuple[torch.Tensor, torch.Tensor]  # (U [out, r], V [r, in]): a low-rank offset U·V
# For one matrix: the base model's LoRA factors and each other model's (None where a model has none)
Sides = tuple[Factors | None, Sequence[Factors | None]]


class RowCoefficients:
    """The per-row coefficients c [R, K] of the forward in progress; shared by every fused module of a model."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.shared: torch.Tensor | None = None  # c [1, K] when every row has the same one (T^3_B, static)

    @contextmanager
    def set(self, coef: torch.Tensor):
        """coef [R, K], or [R] for one delta (the pair engines' λ)."""
        previous = self.value, self.shared
        coef = as_matrix(coef)
        # one check per forward: with one row of coefficients, ops merge their weight once instead of per row
        self.value = coef
        self.shared = coef[:1] if coef.shape[0] and bool((coef == coef[0]).all()) else None
        try:
            yield
        finally:
            self.value, self.shared = previous

    def of(self, index: Index, x: torch.Tensor) -> torch.Tensor:
        """c[:, index] [R, m] in x's dtype, for an op whose input/output x has R rows (or 1, broadcast)."""
        coef = self.value
        if coef is None:
            raise RuntimeError("fused module called outside RowCoefficients.set(...)")
        if x.shape[0] != coef.shape[0] and x.shape[0] != 1:  # 1 row: shared input (e.g. position ids), broadcast
            raise RuntimeError(f"fused op got {x.shape[0]} rows but the coefficients have {coef.shape[0]}")
        return columns(coef, index).to(x.dtype)

    def shared_of(self, index: Index, dtype: torch.dtype) -> torch.Tensor:
        """The one row of coefficients c[:1, index] [1, m] (only while `shared` is set)."""
        return columns(self.shared, index).to(dtype)


RowLambda = RowCoefficients  # the pair engines' name for it (λ [R] is c with K = 1)


def as_matrix(coef: torch.Tensor) -> torch.Tensor:
    """Coefficients as [R, K]: a 1-D λ [R] is one delta's column."""
    if coef.ndim == 1:
        return coef.unsqueeze(1)
    if coef.ndim != 2:
        raise ValueError(f"per-row coefficients must be [R] or [R, K], got shape {tuple(coef.shape)}")
    return coef


def columns(coef: torch.Tensor, index: Index) -> torch.Tensor:
    """coef[:, index]: a view when the indices are consecutive (every expert, or the pair's one delta), so
    no index tensor is built and copied to the device at every op."""
    if index and index == tuple(range(index[0], index[0] + len(index))):
        return coef[:, index[0]:index[0] + len(index)]
    return coef[:, list(index)]


def delta_or_none(other: torch.Tensor | None, base: torch.Tensor | None) -> torch.Tensor | None:
    """Δ = W_other − W_base, or None when exactly zero (frozen towers, LoRA experts): that op then costs 1×."""
    if other is None or base is None:
        return None
    delta = other.detach() - base.detach()
    return None if not torch.any(delta) else delta


def stack_deltas(base: torch.Tensor | None, others: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor | None, Index]:
    """The nonzero Δ_k = W_k − W_base stacked [m, *shape], with their indices k; (None, ()) when all are zero."""
    found = [(k, d) for k, d in enumerate(delta_or_none(o, base) for o in others) if d is not None]
    if not found:
        return None, ()
    return torch.stack([d for _, d in found]), tuple(k for k, _ in found)


def lowrank_of_delta(f_base: Factors | None, f_other: Factors | None) -> Factors | None:
    """(U, V) with U·V = f_other − f_base, each side's LoRA offset U·V (0 without factors): [U_o, −U_b], [V_o; V_b]."""
    sides = [(s * f[0], f[1]) for f, s in ((f_other, 1.0), (f_base, -1.0)) if f is not None]
    if not sides:
        return None
    return torch.cat([u for u, _ in sides], 1), torch.cat([v for _, v in sides], 0)


def lowrank_pays(shape: torch.Size, rank: int) -> bool:
    """A rank-r term costs r·(out + in) multiply-adds per token against out·in for a dense Δ."""
    out, inn = shape
    return rank * (out + inn) < out * inn


def agrees_to_rounding(w_base: torch.Tensor, w_other: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> bool:
    """max|(W_other − W_base) − U·V| within what float rounding leaves when each model was built as
    W = fl(W_gen + fl(U_M·V_M)) (lora.apply_factors / merge_lora), possibly cast to its dtype afterwards.

    Why this bound (u = eps/2 for fp32, u_d for the models' dtype d): per model, the fp32 product of rank r is
    off by ≤ (r + 1)·u·|U||V| elementwise (Higham's dot-product bound, +1 for the alpha/r scaling before or
    after it), its conversion to d by ≤ u_d·|U||V|, the addition and a later cast by ≤ u_d·|W| each. Over
    both sides (r the combined rank; |U||V| of the concatenated factors is the sum of the sides') that is
    ≤ eps·A, A = |W_base| + |W_other| + (r + 1)·|U||V| and eps the larger of fp32's and d's. The check runs in
    fp32 (or wider) and its own rounding is ≤ eps·A too, so 2·eps·A bounds what it can see, taken at the
    matrices' largest magnitudes (Σ_i max|U_:i|·max|V_i:| ≥ max |U||V|). Factors of another generalist, or
    edited weights, leave residuals of order |W| and fail it.
    """
    dtype = torch.promote_types(w_base.dtype, torch.float32)
    wb, wo = w_base.detach().to(dtype), w_other.detach().to(dtype)
    u, v = u.to(wb), v.to(wb)
    residual = _max_abs(torch.addmm(wo - wb, u, v, alpha=-1))
    eps = max(torch.finfo(w_base.dtype).eps, torch.finfo(torch.float32).eps)
    uv = (u.abs().amax(0) * v.abs().amax(1)).sum()
    return bool(residual <= 2 * eps * (_max_abs(wb) + _max_abs(wo) + (u.shape[1] + 1) * uv))


def _max_abs(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, float("inf"))


def factored_delta(w_base: torch.Tensor, w_other: torch.Tensor, f_base: Factors | None,
                   f_other: Factors | None) -> Factors | None:
    """Δ = W_other − W_base as (U, V) in the weights' dtype and device, from the two models' LoRA factors,
    when their combined rank pays and the weights agree with it to rounding; None: keep Δ dense."""
    uv = lowrank_of_delta(f_base, f_other)
    if uv is None:
        return None
    u, v = uv
    if (u.shape[0], v.shape[1]) != tuple(w_base.shape) or not lowrank_pays(w_base.shape, u.shape[1]):
        return None
    if not agrees_to_rounding(w_base, w_other, u, v):
        return None
    return u.to(w_base).contiguous(), v.to(w_base).contiguous()


def split_deltas(base: torch.Tensor, others: Sequence[torch.Tensor], sides: Sides | None
                 ) -> tuple[torch.Tensor | None, Index, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """stack_deltas, except that each nonzero Δ_k with a verified low-rank form (factored_delta) is kept as
    (k, U_k, V_k): (dense Δs [m, out, in] or None, their k, the factored ones)."""
    if sides is None:
        return (*stack_deltas(base, others), [])
    f_base, f_others = sides
    dense, factored = [], []
    for k, other in enumerate(others):
        delta = delta_or_none(other, base)
        if delta is None:
            continue
        uv = factored_delta(base, other, f_base, f_others[k])
        if uv is None:
            dense.append((k, delta))
        else:
            factored.append((k, *uv))
    stacked = torch.stack([d for _, d in dense]) if dense else None
    return stacked, tuple(k for k, _ in dense), factored


def add_lowrank(y: torch.Tensor, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, coef: torch.Tensor
                ) -> torch.Tensor:
    """y + Σ_j c_rj·U_j(V_j·x) for every row r, as ((x·Vᵀ) ⊙ c)·Uᵀ.

    u [out, Σr], v [Σr, in] (the deltas' factors side by side); coef [R or 1, Σr] (each rank column's
    coefficient) or [R or 1, 1] (one delta). y is the op's own fresh output: updated in place when it can be.
    """
    z = F.linear(x, v)
    z = z * coef.to(z.dtype).view(coef.shape[0], *([1] * (z.ndim - 2)), coef.shape[1])
    if y.shape[:-1] != z.shape[:-1] or not y.is_contiguous():  # e.g. one broadcast input row
        return y + F.linear(z, u)
    y.view(-1, y.shape[-1]).addmm_(z.reshape(-1, z.shape[-1]).to(y.dtype), u.t().to(y.dtype))
    return y


def per_row(base: torch.Tensor, deltas: torch.Tensor | None, coef: torch.Tensor) -> torch.Tensor:
    """base + Σ_j c_rj·Δ_j for every row: [R, *base.shape] (or base itself when there is no delta).

    deltas [m, *base.shape], coef [R, m]. Several deltas: one GEMM c @ Δ.view(m, −1), not m passes.
    """
    if deltas is None:
        return base
    coef = coef.to(base.dtype)
    if deltas.shape[0] == 1:  # one delta: the pair engines' elementwise form
        return torch.addcmul(base.unsqueeze(0), coef.view(-1, *([1] * base.ndim)), deltas)
    return torch.addmm(base.reshape(1, -1), coef, deltas.reshape(deltas.shape[0], -1)).view(-1, *base.shape)


def merged_once(base: torch.Tensor, deltas: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """base + Σ_j c_j·Δ_j for one row of coefficients coef [1, m]: one merged weight, shaped like base."""
    if deltas.shape[0] == 1:
        return torch.addcmul(base, coef[0], deltas[0])
    return per_row(base, deltas, coef)[0]


def offset(coef: torch.Tensor, deltas: torch.Tensor, ndim: int) -> torch.Tensor:
    """Σ_j c_rj·Δ_j [R, 1, …, *S] broadcasting over an ndim-dim tensor whose trailing dims are S (deltas [m, *S])."""
    if deltas.shape[0] == 1:
        return coef.view(-1, *([1] * (ndim - 1))) * deltas[0]
    shape = deltas.shape[1:]
    mixed = coef @ deltas.reshape(deltas.shape[0], -1)
    return mixed.view(coef.shape[0], *([1] * (ndim - 1 - len(shape))), *shape)


def add_mixed(y: torch.Tensor, coef: torch.Tensor, parts: torch.Tensor, dim: int) -> torch.Tensor:
    """y + Σ_j c_rj·parts_j, where parts holds the deltas' outputs stacked along `dim` (coef [R, m])."""
    if parts.shape[dim] == 1:  # one delta: the pair engines' elementwise form
        return torch.addcmul(y, coef.view(-1, *([1] * (y.ndim - 1))), parts.squeeze(dim))
    p = parts.movedim(dim, -2)  # [R or 1, …, m, n]: one small matmul per position weighs the m outputs
    w = coef.view(coef.shape[0], *([1] * (p.ndim - 3)), 1, coef.shape[1])
    return y + (w @ p).squeeze(-2)


def _as_list(others) -> list:
    return [others] if isinstance(others, (nn.Module, torch.Tensor)) or others is None else list(others)


class _FusedOp(nn.Module):
    """A fused op: base parameters as buffers, each with its stacked nonzero deltas and their indices."""

    def __init__(self, rows: RowCoefficients):
        super().__init__()
        self.rows = rows

    def _own(self, name: str, base: torch.Tensor | None, others: Sequence[torch.Tensor | None]) -> None:
        """Buffers `name` (the base's) and `delta_<name>` [m, …], attribute `<name>_index` (the k of each delta)."""
        deltas, index = stack_deltas(base, others)
        self.register_buffer(name, None if base is None else base.detach().clone())
        self.register_buffer("delta_" + name, deltas)
        setattr(self, name + "_index", index)

    def _add_bias_delta(self, y: torch.Tensor, deltas: torch.Tensor | None, index: Index) -> torch.Tensor:
        """y + Σ_k c_rk·Δb_k, with the bias deltas shaped to y's trailing dims."""
        if deltas is None:
            return y
        return y + offset(self.rows.of(index, y), deltas, y.ndim)


def _chunked_min_tokens(weight: torch.Tensor, m: int) -> int:
    """Tokens per row from which forming per-row weights beats the dual form, for m stored deltas.

    One delta: the measured rule above. With m deltas the dual form's extra work is m GEMMs against the
    input (m·T multiply-adds per weight element and row, so it grows with the tokens T), while the chunked
    form still writes and reads one weight per row (its m-term contraction is one small GEMM over a chunk,
    memory-bound like the single-delta form): the crossover moves to about 1/m of the measured one.
    """
    small = weight.numel() * weight.element_size() <= CACHE_RESIDENT_BYTES
    measured = CHUNKED_MIN_TOKENS_SMALL if small else CHUNKED_MIN_TOKENS_LARGE
    return math.ceil(measured / max(1, m))


class FusedLinear(_FusedOp):
    """Linear layer with per-row merged weights.

    Two exact forms for dense deltas: `dual` runs one GEMM against [W_base; Δ_1; …; Δ_m] ((m+1)× FLOPs) and
    combines the outputs; `chunked` forms each row's weight W_base + Σ_k c_rk·Δ_k and runs a batched matmul
    over chunks of rows (≈1× FLOPs plus one weight-sized write per row). Chunked wins once a row has enough
    tokens to amortize that write (`_chunked_min_tokens`). Deltas that LoRA factors give (`factors`: the
    models' (U, V) for this matrix) are kept factored instead (`factored_index`, `factored_ranks`) and add
    ((x·Vᵀ) ⊙ c)·Uᵀ to the output; with one shared row of coefficients and many tokens (≥ `fold_min_tokens`)
    U·V is folded into the one merged weight instead, which is then cheaper.
    """

    def __init__(self, weight, bias, other_weights: Sequence[torch.Tensor], other_biases: Sequence[torch.Tensor | None],
                 rows: RowCoefficients, *, factors: Sides | None = None, chunked_min_tokens: int | None = None,
                 chunk_bytes: int = 64 * 2**20):
        super().__init__(rows)
        self.out_features, self.in_features = weight.shape
        deltas, self.weight_index, factored = split_deltas(weight, _as_list(other_weights), factors)
        stacked = weight.detach().clone() if deltas is None else torch.cat([weight.detach(), *deltas])
        self.register_buffer("weight", stacked)  # rows [:out] = W_base, then each stored Δ_k's `out` rows
        self._own_factored(factored)
        self._own("bias", bias, _as_list(other_biases))
        if chunked_min_tokens is None:
            chunked_min_tokens = _chunked_min_tokens(weight, len(self.weight_index))
        self.chunked_min_tokens = chunked_min_tokens
        self.chunk_bytes = chunk_bytes
        # shared coefficients: forming U·V costs out·in·Σr multiply-adds, the low-rank term N·Σr·(out + in)
        # for N tokens in the batch; fold from the token count where forming is the cheaper
        self.fold_min_tokens = math.ceil(self.out_features * self.in_features / (self.out_features + self.in_features))

    def _own_factored(self, factored: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        """Buffers lora_U [out, Σr] and lora_V [Σr, in] (every factored delta's columns side by side) and
        lora_owner (the delta of each rank column, with several); attributes factored_index / factored_ranks."""
        self.factored_index: Index = tuple(k for k, _, _ in factored)
        self.factored_ranks: tuple[int, ...] = tuple(u.shape[1] for _, u, _ in factored)
        self.register_buffer("lora_U", torch.cat([u for _, u, _ in factored], 1) if factored else None)
        self.register_buffer("lora_V", torch.cat([v for _, _, v in factored], 0) if factored else None)
        owner = None
        if len(factored) > 1:
            owner = torch.repeat_interleave(torch.arange(len(factored)), torch.tensor(self.factored_ranks))
            owner = owner.to(self.lora_U.device)
        self.register_buffer("lora_owner", owner)

    @classmethod
    def from_modules(cls, base: nn.Linear, others: nn.Linear | Sequence[nn.Linear], rows: RowCoefficients,
                     **kw) -> FusedLinear:
        others = _as_list(others)
        return cls(base.weight, base.bias, [o.weight for o in others], [o.bias for o in others], rows, **kw)

    @property
    def has_delta_w(self) -> bool:
        return bool(self.weight_index or self.factored_index)

    def _split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_base [out, in] and the stored deltas [m, out, in] (views of one buffer)."""
        out = self.out_features
        return self.weight[:out], self.weight[out:].view(-1, out, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, index = self.out_features, self.weight_index
        shared = self.rows.shared is not None
        fold = bool(self.factored_index) and shared and x.numel() // self.in_features >= self.fold_min_tokens
        if not index and not fold:
            y = F.linear(x, self.weight, self.bias)
        elif shared:  # one row of coefficients: one merged weight, one plain GEMM
            y = F.linear(x, self._shared_weight(x.dtype, fold), self.bias)
        else:
            tokens = x.numel() // max(1, x.shape[0] * self.in_features)
            if tokens >= self.chunked_min_tokens:
                y = self._chunked(x)
            else:
                y2 = F.linear(x, self.weight)
                y = add_mixed(y2[..., :out], self.rows.of(index, x), y2[..., out:].unflatten(-1, (-1, out)), -2)
                if self.bias is not None:
                    y = y + self.bias
        if self.factored_index and not fold:
            coef = self.rows.shared_of(self.factored_index, x.dtype) if shared else self.rows.of(self.factored_index, x)
            y = add_lowrank(y, x, self.lora_U, self.lora_V, self._rank_columns(coef))
        return self._add_bias_delta(y, self.delta_bias, self.bias_index)

    def _rank_columns(self, coef: torch.Tensor) -> torch.Tensor:
        """The factored deltas' coefficients [R, m] as each rank column's [R, Σr] ([R, 1] for one delta: broadcast)."""
        return coef if self.lora_owner is None else coef.index_select(1, self.lora_owner)

    def _shared_weight(self, dtype: torch.dtype, fold: bool) -> torch.Tensor:
        """W_base + Σ_k c_k·Δ_k for the one shared row: dense deltas merged, factored ones folded in if `fold`."""
        w = self.weight[:self.out_features]
        if self.weight_index:
            w = merged_once(*self._split(), self.rows.shared_of(self.weight_index, dtype))
        if fold:
            coef = self._rank_columns(self.rows.shared_of(self.factored_index, self.lora_U.dtype))
            w = torch.addmm(w, self.lora_U * coef, self.lora_V)
        return w

    def _chunked(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features
        base, deltas = self._split()
        coef = self.rows.of(self.weight_index, x)
        flat = x.reshape(x.shape[0], -1, self.in_features)
        step = max(1, self.chunk_bytes // max(1, base.numel() * base.element_size()))
        parts = []
        for start in range(0, flat.shape[0], step):
            w = per_row(base, deltas, coef[start:start + step])  # [c, out, in]
            if self.bias is not None:
                parts.append(torch.baddbmm(self.bias.view(1, 1, -1), flat[start:start + step], w.transpose(1, 2)))
            else:
                parts.append(torch.bmm(flat[start:start + step], w.transpose(1, 2)))
        return torch.cat(parts).reshape(*x.shape[:-1], out)


class FusedConv2d(_FusedOp):
    """Conv2d (patch embedding) with per-row merged weights, dual form: one conv against [W_base; Δ_1; …; Δ_m]."""

    def __init__(self, base: nn.Conv2d, others: nn.Conv2d | Sequence[nn.Conv2d], rows: RowCoefficients):
        super().__init__(rows)
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError(f"fused engine supports only plain Conv2d (groups=1, zero padding), got {base}")
        others = _as_list(others)
        self.out_channels = base.out_channels
        self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
        deltas, self.weight_index = stack_deltas(base.weight, [o.weight for o in others])
        self.register_buffer("weight", base.weight.detach().clone() if deltas is None
                             else torch.cat([base.weight.detach(), *deltas]))
        self._own("bias", base.bias, [o.bias for o in others])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, index = self.out_channels, self.weight_index
        shared = index and self.rows.shared is not None
        if shared:  # one row of coefficients: one merged kernel
            base = self.weight[:c]
            weight = merged_once(base, self.weight[c:].view(-1, *base.shape), self.rows.shared_of(index, x.dtype))
            y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)
        else:
            y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        if index and not shared:
            y = add_mixed(y[:, :c], self.rows.of(index, y), y[:, c:].unflatten(1, (-1, c)), 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        deltas = None if self.delta_bias is None else self.delta_bias.view(-1, c, 1, 1)
        return self._add_bias_delta(y, deltas, self.bias_index)


class FusedLayerNorm(_FusedOp):
    """LayerNorm: normalize once, then per-row affine (γ + Σ c·Δγ, β + Σ c·Δβ). Keeps fp32 upcasting if asked."""

    def __init__(self, base: nn.LayerNorm, others: nn.LayerNorm | Sequence[nn.LayerNorm], rows: RowCoefficients, *,
                 fp32: bool = False):
        super().__init__(rows)
        others = _as_list(others)
        self.normalized_shape, self.eps, self.fp32 = base.normalized_shape, base.eps, fp32
        self._own("weight", base.weight, [o.weight for o in others])
        self._own("bias", base.bias, [o.bias for o in others])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float() if self.fp32 else x
        if self.delta_weight is None and self.delta_bias is None:
            return F.layer_norm(h, self.normalized_shape, self.weight, self.bias, self.eps).to(dtype)
        y = F.layer_norm(h, self.normalized_shape, None, None, self.eps)
        if self.weight is not None:
            w = self.weight
            if self.delta_weight is not None:
                w = w + offset(self.rows.of(self.weight_index, y), self.delta_weight, y.ndim)
            y = y * w
        if self.bias is not None:
            b = self.bias
            if self.delta_bias is not None:
                b = b + offset(self.rows.of(self.bias_index, y), self.delta_bias, y.ndim)
            y = y + b
        return y.to(dtype)


class FusedEmbedding(_FusedOp):
    """Token/position embeddings: E_base[ids] + Σ_k c_rk·Δ_k[ids] (a gather, so no extra matmul)."""

    def __init__(self, base: nn.Embedding, others: nn.Embedding | Sequence[nn.Embedding], rows: RowCoefficients):
        super().__init__(rows)
        self.register_buffer("weight", base.weight.detach().clone())
        deltas, self.weight_index = stack_deltas(base.weight, [o.weight for o in _as_list(others)])
        # [V, m·E]: one gather fetches every delta's row (for one delta, Δ itself)
        self.register_buffer("delta_weight", None if deltas is None else deltas.permute(1, 0, 2).flatten(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = F.embedding(ids, self.weight)
        if self.delta_weight is not None:
            parts = F.embedding(ids, self.delta_weight).unflatten(-1, (-1, y.shape[-1]))
            y = add_mixed(y, self.rows.of(self.weight_index, y), parts, -2)
        return y


class FusedLayerScale(_FusedOp):
    """open_clip / timm LayerScale: x·(γ + Σ_k c_rk·Δγ_k)."""

    def __init__(self, base: nn.Module, others: nn.Module | Sequence[nn.Module], rows: RowCoefficients):
        super().__init__(rows)
        self._own("gamma", base.gamma, [o.gamma for o in _as_list(others)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta_gamma is None:
            return x * self.gamma
        return x * (self.gamma + offset(self.rows.of(self.gamma_index, x), self.delta_gamma, x.ndim))


class FusedMultiheadAttention(nn.Module):
    """Drop-in for a batch-first, self-attention nn.MultiheadAttention with per-row merged projections."""

    def __init__(self, base: nn.MultiheadAttention, others: nn.MultiheadAttention | Sequence[nn.MultiheadAttention],
                 rows: RowCoefficients, *, in_factors: Sides | None = None, out_factors: Sides | None = None,
                 **linear_kw):
        super().__init__()
        if not base.batch_first or not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise ValueError(
                "fused engine supports batch-first self-attention nn.MultiheadAttention without bias_k/add_zero_attn"
            )
        others = _as_list(others)
        self.num_heads, self.batch_first = base.num_heads, True
        self.in_proj = FusedLinear(base.in_proj_weight, base.in_proj_bias, [o.in_proj_weight for o in others],
                                   [o.in_proj_bias for o in others], rows, factors=in_factors, **linear_kw)
        self.out_proj = FusedLinear.from_modules(base.out_proj, [o.out_proj for o in others], rows,
                                                 factors=out_factors, **linear_kw)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("fused attention supports self-attention only (query is key is value)")
        if need_weights:
            raise ValueError("fused attention does not return attention weights")
        batch, length, dim = query.shape
        heads = self.num_heads
        q, k, v = self.in_proj(query).view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        mask = _additive_mask(attn_mask, key_padding_mask, batch, heads, length, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim)), None


def _additive_mask(attn_mask, key_padding_mask, batch, heads, length, dtype):
    """nn.MultiheadAttention's masks (bool True = masked, or additive float) as one additive SDPA mask."""
    mask = None
    if attn_mask is not None:
        mask = torch.zeros_like(attn_mask, dtype=dtype).masked_fill(attn_mask, float("-inf")) \
            if attn_mask.dtype == torch.bool else attn_mask.to(dtype)
        if mask.ndim == 3:  # [B*heads, L, L]
            mask = mask.view(batch, heads, length, length)
    if key_padding_mask is not None:
        pad = key_padding_mask.view(batch, 1, 1, length)
        pad = torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill(pad, float("-inf")) \
            if pad.dtype == torch.bool else pad.to(dtype)
        mask = pad if mask is None else mask + pad
    return mask
