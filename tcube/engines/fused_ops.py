"""Per-row merged ops: op(h; W_exp + λ_r·ΔW) for every row r of a batch, exactly, in one call.

Every weight-bearing op is affine in its own weights given its input, so a merged op equals the
expert's op plus λ_r times the op of ΔW = W_gen − W_exp on the merged network's own activations.
`RowLambda` carries the per-row λ (weight on the generalist) that all fused modules of one model read.
"""
from __future__ import annotations

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


class RowLambda:
    """The per-row λ [R] of the forward in progress; shared by every fused module of a model."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.shared: torch.Tensor | None = None  # λ [1] when every row has the same one (T^3_B, static)

    @contextmanager
    def set(self, lam: torch.Tensor):
        previous = self.value, self.shared
        # one check per forward: with a single λ, ops merge their weight once instead of per row
        self.value, self.shared = lam, lam[:1] if lam.numel() and bool((lam == lam[0]).all()) else None
        try:
            yield
        finally:
            self.value, self.shared = previous

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """λ shaped to broadcast over x's non-batch dims."""
        lam = self.value
        if lam is None:
            raise RuntimeError("fused module called outside RowLambda.set(...)")
        if x.shape[0] != lam.shape[0] and x.shape[0] != 1:  # 1 row: shared input (e.g. position ids), broadcast
            raise RuntimeError(f"fused op got {x.shape[0]} rows but λ has {lam.shape[0]}")
        return lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def delta_or_none(gen: torch.Tensor | None, exp: torch.Tensor | None) -> torch.Tensor | None:
    """ΔW = W_gen − W_exp, or None when exactly zero (frozen towers, LoRA experts): that op then costs 1×."""
    if gen is None or exp is None:
        return None
    delta = gen.detach() - exp.detach()
    return None if not torch.any(delta) else delta


def per_row(base: torch.Tensor, delta: torch.Tensor | None, lam: torch.Tensor) -> torch.Tensor:
    """base + λ_r·Δ for every row: [R, *base.shape] (or base itself when Δ is None)."""
    if delta is None:
        return base
    return torch.addcmul(base.unsqueeze(0), lam.to(base.dtype).view(-1, *([1] * base.ndim)), delta.unsqueeze(0))


class FusedLinear(nn.Module):
    """Linear layer with per-row merged weights.

    Two exact forms: `dual` runs one GEMM against [W_exp; ΔW] (2× FLOPs); `chunked` forms each row's
    weight W_exp + λ_r·ΔW and runs a batched matmul over chunks of rows (≈1× FLOPs plus one weight-sized
    write per row). Chunked wins once a row has enough tokens to amortize that write.
    """

    def __init__(self, w_exp, b_exp, w_gen, b_gen, rows: RowLambda, *, chunked_min_tokens: int | None = None,
                 chunk_bytes: int = 64 * 2**20):
        super().__init__()
        self.rows = rows
        self.out_features, self.in_features = w_exp.shape
        dw, db = delta_or_none(w_gen, w_exp), delta_or_none(b_gen, b_exp)
        self.has_delta_w = dw is not None
        weight = torch.cat([w_exp.detach(), dw]) if dw is not None else w_exp.detach().clone()
        self.register_buffer("weight", weight)  # rows [:out] = W_exp, rows [out:] = ΔW
        self.register_buffer("bias", None if b_exp is None else b_exp.detach().clone())
        self.register_buffer("delta_bias", db)
        if chunked_min_tokens is None:  # the measured rule above
            small = w_exp.numel() * w_exp.element_size() <= CACHE_RESIDENT_BYTES
            chunked_min_tokens = CHUNKED_MIN_TOKENS_SMALL if small else CHUNKED_MIN_TOKENS_LARGE
        self.chunked_min_tokens = chunked_min_tokens
        self.chunk_bytes = chunk_bytes

    @classmethod
    def from_modules(cls, exp: nn.Linear, gen: nn.Linear, rows: RowLambda, **kw) -> "FusedLinear":
        return cls(exp.weight, exp.bias, gen.weight, gen.bias, rows, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features
        if not self.has_delta_w:
            y = F.linear(x, self.weight, self.bias)
        elif self.rows.shared is not None:  # one λ for all rows: one merged weight, one plain GEMM
            lam = self.rows.shared.to(x.dtype)
            y = F.linear(x, torch.addcmul(self.weight[:out], lam, self.weight[out:]), self.bias)
        else:
            tokens = x.numel() // max(1, x.shape[0] * self.in_features)
            if tokens >= self.chunked_min_tokens:
                y = self._chunked(x)
            else:
                y2 = F.linear(x, self.weight)
                y = torch.addcmul(y2[..., :out], self.rows.like(x), y2[..., out:])
                if self.bias is not None:
                    y = y + self.bias
        if self.delta_bias is not None:
            y = y + self.rows.like(y) * self.delta_bias
        return y

    def _chunked(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features
        w_exp, dw = self.weight[:out], self.weight[out:]
        lam = self.rows.value.to(x.dtype)
        flat = x.reshape(x.shape[0], -1, self.in_features)
        step = max(1, self.chunk_bytes // max(1, dw.numel() * dw.element_size()))
        parts = []
        for start in range(0, flat.shape[0], step):
            lam_c = lam[start:start + step].view(-1, 1, 1)
            w = torch.addcmul(w_exp.unsqueeze(0), lam_c, dw.unsqueeze(0))  # [c, out, in]
            if self.bias is not None:
                parts.append(torch.baddbmm(self.bias.view(1, 1, -1), flat[start:start + step], w.transpose(1, 2)))
            else:
                parts.append(torch.bmm(flat[start:start + step], w.transpose(1, 2)))
        return torch.cat(parts).reshape(*x.shape[:-1], out)


class FusedConv2d(nn.Module):
    """Conv2d (patch embedding) with per-row merged weights, dual form: one conv against [W_exp; ΔW]."""

    def __init__(self, exp: nn.Conv2d, gen: nn.Conv2d, rows: RowLambda):
        super().__init__()
        if exp.groups != 1 or exp.padding_mode != "zeros":
            raise ValueError(f"fused engine supports only plain Conv2d (groups=1, zero padding), got {exp}")
        self.rows = rows
        self.out_channels = exp.out_channels
        self.stride, self.padding, self.dilation = exp.stride, exp.padding, exp.dilation
        dw = delta_or_none(gen.weight, exp.weight)
        self.has_delta_w = dw is not None
        self.register_buffer("weight", torch.cat([exp.weight.detach(), dw]) if dw is not None else exp.weight.detach().clone())
        self.register_buffer("bias", None if exp.bias is None else exp.bias.detach().clone())
        self.register_buffer("delta_bias", delta_or_none(gen.bias, exp.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.out_channels
        if self.has_delta_w and self.rows.shared is not None:  # one λ: one merged kernel
            weight = torch.addcmul(self.weight[:c], self.rows.shared.to(x.dtype), self.weight[c:])
            y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)
        else:
            y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        if self.has_delta_w and self.rows.shared is None:
            y = torch.addcmul(y[:, :c], self.rows.like(y), y[:, c:])
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        if self.delta_bias is not None:
            y = y + self.rows.like(y) * self.delta_bias.view(1, -1, 1, 1)
        return y


class FusedLayerNorm(nn.Module):
    """LayerNorm: normalize once, then per-row affine (γ_exp + λΔγ, β_exp + λΔβ). Keeps fp32 upcasting if asked."""

    def __init__(self, exp: nn.LayerNorm, gen: nn.LayerNorm, rows: RowLambda, *, fp32: bool = False):
        super().__init__()
        self.rows = rows
        self.normalized_shape, self.eps, self.fp32 = exp.normalized_shape, exp.eps, fp32
        self.register_buffer("weight", None if exp.weight is None else exp.weight.detach().clone())
        self.register_buffer("bias", None if exp.bias is None else exp.bias.detach().clone())
        self.register_buffer("delta_weight", delta_or_none(gen.weight, exp.weight))
        self.register_buffer("delta_bias", delta_or_none(gen.bias, exp.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float() if self.fp32 else x
        if self.delta_weight is None and self.delta_bias is None:
            return F.layer_norm(h, self.normalized_shape, self.weight, self.bias, self.eps).to(dtype)
        y = F.layer_norm(h, self.normalized_shape, None, None, self.eps)
        lam = self.rows.like(y)
        if self.weight is not None:
            w = self.weight if self.delta_weight is None else self.weight + lam * self.delta_weight
            y = y * w
        if self.bias is not None:
            b = self.bias if self.delta_bias is None else self.bias + lam * self.delta_bias
            y = y + b
        return y.to(dtype)


class FusedEmbedding(nn.Module):
    """Token/position embeddings: E_exp[ids] + λ_r·ΔE[ids] (a gather, so no extra matmul)."""

    def __init__(self, exp: nn.Embedding, gen: nn.Embedding, rows: RowLambda):
        super().__init__()
        self.rows = rows
        self.register_buffer("weight", exp.weight.detach().clone())
        self.register_buffer("delta_weight", delta_or_none(gen.weight, exp.weight))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = F.embedding(ids, self.weight)
        if self.delta_weight is not None:
            y = torch.addcmul(y, self.rows.like(y), F.embedding(ids, self.delta_weight))
        return y


class FusedLayerScale(nn.Module):
    """open_clip / timm LayerScale: x·(γ_exp + λΔγ)."""

    def __init__(self, exp: nn.Module, gen: nn.Module, rows: RowLambda):
        super().__init__()
        self.rows = rows
        self.register_buffer("gamma", exp.gamma.detach().clone())
        self.register_buffer("delta_gamma", delta_or_none(gen.gamma, exp.gamma))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta_gamma is None:
            return x * self.gamma
        return x * (self.gamma + self.rows.like(x) * self.delta_gamma)


class FusedMultiheadAttention(nn.Module):
    """Drop-in for a batch-first, self-attention nn.MultiheadAttention with per-row merged projections."""

    def __init__(self, exp: nn.MultiheadAttention, gen: nn.MultiheadAttention, rows: RowLambda, **linear_kw):
        super().__init__()
        if not exp.batch_first or not exp._qkv_same_embed_dim or exp.bias_k is not None or exp.add_zero_attn:
            raise ValueError(
                "fused engine supports batch-first self-attention nn.MultiheadAttention without bias_k/add_zero_attn"
            )
        self.num_heads, self.batch_first = exp.num_heads, True
        self.in_proj = FusedLinear(exp.in_proj_weight, exp.in_proj_bias, gen.in_proj_weight, gen.in_proj_bias,
                                   rows, **linear_kw)
        self.out_proj = FusedLinear.from_modules(exp.out_proj, gen.out_proj, rows, **linear_kw)

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
