"""The fused engine: exact per-sample merging in one batched forward.

`FusedModel(base, others)` runs row r with θ_r = θ_base + Σ_k c_rk·(θ_k − θ_base): it deep-copies the
base, swaps every weight-bearing module for its fused twin (fused_ops.py) and handles the parameters that
towers use directly (class/positional embeddings, projections, logit_scale) here, per supported tower:
open_clip VisionTransformer / text transformer, timm ViT (BiomedCLIP's image tower) and Hugging Face text
encoders (BiomedCLIP's BERT). `FusedCLIP` is the pair (base = expert, other = generalist, c = λ); the
multi-expert engine (multi.py) uses base = generalist, others = the experts. Models carrying LoRA factors
(models.lora.factors_of) give their linear layers low-rank deltas, run at a plain forward's cost plus the
low-rank terms (`delta_forms` counts them).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..models.heads import hf_pad_id, trim_padding
from ..models.lora import factors_of
from .base import Engine
from .fused_ops import (
    FusedConv2d,
    FusedEmbedding,
    FusedLayerNorm,
    FusedLayerScale,
    FusedLinear,
    FusedMultiheadAttention,
    RowCoefficients,
    Sides,
    add_mixed,
    as_matrix,
    columns,
    per_row,
    stack_deltas,
)

CHUNK_BYTES = 64 * 2**20


class FusedModel(nn.Module):
    """A merged open_clip model whose every row r runs with θ_r = θ_base + Σ_k c_rk·(θ_k − θ_base).

    Coefficients c are [R, K] (K = len(others)), or [R] when there is one other model.
    """

    def __init__(self, base: nn.Module, others: Sequence[nn.Module], *, chunked_min_tokens: int | None = None,
                 chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        others = list(others)
        if not others:
            raise ValueError("fused model needs at least one other model to take deltas against")
        self.num_others = len(others)
        self.rows = RowCoefficients()
        self.model = copy.deepcopy(base).eval()
        self.model.__dict__.pop("tcube_lora", None)  # the copy is the fused model, not the LoRA expert it started from
        linear_kw = dict(chunked_min_tokens=chunked_min_tokens, chunk_bytes=chunk_bytes)
        _check_buffers(base, others)
        other_modules = [dict(o.named_modules()) for o in others]
        lora = _lora_sides(base, others)
        fused_params: set[str] = set()
        replaced: list[str] = []
        for name, module in list(self.model.named_modules()):
            if any(name.startswith(r + ".") for r in replaced):
                continue  # inside a module already fused as a whole (e.g. attention's out_proj)
            twin = _fuse_module(module, [m[name] for m in other_modules], self.rows, linear_kw,
                                lambda param, prefix=f"{name}." if name else "": lora(prefix + param))
            if twin is not None:
                fused_params.update(f"{name}.{p}" for p, _ in module.named_parameters())
                _replace(self.model, name, twin)
                replaced.append(name)
        other_params = [dict(o.named_parameters()) for o in others]
        # name -> (base parameter, its nonzero deltas [m, ...] or None, their indices k)
        self.direct = {n: (p.detach(), *stack_deltas(p, [o[n] for o in other_params]))
                       for n, p in self.model.named_parameters()}
        self._check_supported(fused_params)

    def delta_forms(self) -> dict[str, int]:
        """How the linear layers' weight deltas (one per matrix and other model) are stored: `factored` (low
        rank, from LoRA factors), `dense`, or `zero` (the matrix is equal in both models: no cost)."""
        linears = [m for m in self.modules() if isinstance(m, FusedLinear)]
        factored = sum(len(m.factored_index) for m in linears)
        dense = sum(len(m.weight_index) for m in linears)
        return {"factored": factored, "dense": dense, "zero": len(linears) * self.num_others - factored - dense}

    def coefficients(self, coef: torch.Tensor) -> torch.Tensor:
        """coef as [R, K], checked against the number of other models."""
        coef = as_matrix(coef)
        if coef.shape[1] != self.num_others:
            raise ValueError(f"fused model has {self.num_others} deltas but the coefficients are {tuple(coef.shape)}")
        return coef

    def _check_supported(self, fused_params: set[str]) -> None:
        visual, text = _visual_kind(self.model), _text_kind(self.model)
        handled = set(fused_params) | {"logit_scale", "logit_bias"} | _DIRECT[visual] | _DIRECT[text]
        unhandled = [n for n in self.direct if n not in handled and not _prefixed(n, handled)]
        if unhandled:
            raise ValueError(
                f"fused engine: unsupported parameters {unhandled[:5]} (towers: {visual}, {text}); "
                "use engine='naive' or 'batch' for this architecture"
            )
        self.visual_kind, self.text_kind = visual, text

    # -- per-row parameters used directly by the towers --------------------------------------------
    def param(self, name: str, coef: torch.Tensor) -> torch.Tensor:
        """[R, *shape] per-row merged parameter, or the shared base parameter when every Δ = 0."""
        base, deltas, index = self.direct[name]
        return per_row(base, deltas, columns(coef, index))

    def _has_delta(self, name: str) -> bool:
        return self.direct[name][1] is not None

    def _matmul(self, x: torch.Tensor, name: str, coef: torch.Tensor) -> torch.Tensor:
        """x [R, D] @ (P_base + Σ_k c_rk ΔP_k) without forming R matrices."""
        base, deltas, index = self.direct[name]
        y = x @ base
        if deltas is None:
            return y
        parts = (x @ deltas.permute(1, 0, 2).flatten(1)).unflatten(-1, (-1, base.shape[-1]))  # [R, m, E]
        return add_mixed(y, columns(coef, index).to(y.dtype), parts, -2)

    # -- public per-row API --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        coef = self.coefficients(coef)
        with self.rows.set(coef):
            if self.visual_kind == "open_clip_vit":
                return self._open_clip_vit(self.model.visual, images, coef)
            trunk = self.model.visual.trunk  # timm ViT: per-row cls/reg tokens and positional embedding
            overrides = {f"trunk.{n}": self.param(f"visual.trunk.{n}", coef).squeeze(1)
                         for n in ("cls_token", "reg_token", "pos_embed")
                         if getattr(trunk, n, None) is not None and self._has_delta(f"visual.trunk.{n}")}
            return torch.func.functional_call(self.model.visual, overrides, (images,), strict=False)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        coef = self.coefficients(coef)
        tokens = self.trim_padding(tokens)
        with self.rows.set(coef):
            if self.text_kind == "hf_text":
                return self.model.text(tokens)
            return self._open_clip_text(tokens, coef)

    def trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the padding columns after the longest prompt, where that leaves the pooled output unchanged.

        Prompts are a few tokens but tokenizers pad to the context length (BiomedCLIP's BERT: 256, ~20×
        the prompt). Exact when no kept position can see a dropped one: BERT masks padding keys and pools
        the CLS token (or a masked mean/max); open_clip text towers are causal (or mask padding) and pool
        the EOT/EOS/first token. Other poolings keep the full length.
        """
        return trim_padding(tokens, self._pad_id())

    def _pad_id(self) -> int | None:
        m = self.model
        if self.text_kind == "hf_text":
            return hf_pad_id(m.text)
        tower, pool = (m.text, m.text.pool_type) if self.text_kind == "open_clip_text_tower" else (m, m.text_pool_type)
        masked = tower.attn_mask is not None or getattr(tower, "use_pad_mask", False)
        return getattr(tower, "pad_id", 0) if masked and pool in ("argmax", "eos", "first") else None

    def logit_scale(self, coef: torch.Tensor) -> torch.Tensor:
        return self._scalar("logit_scale", coef).exp()

    def logit_bias(self, coef: torch.Tensor) -> torch.Tensor | None:
        if getattr(self.model, "logit_bias", None) is None:
            return None
        return self._scalar("logit_bias", coef)

    def _scalar(self, name: str, coef: torch.Tensor) -> torch.Tensor:
        """[R] per-row merged scalar parameter (in float32)."""
        base, deltas, index = self.direct[name]
        base, coef = base.reshape(-1)[0].float(), self.coefficients(coef).float()
        if deltas is None:
            return base + coef[:, 0] * 0.0  # still one value per row
        if len(index) == 1:  # the pair engines' expression
            return base + coef[:, index[0]] * deltas.reshape(-1)[0].float()
        return base + columns(coef, index) @ deltas.reshape(-1).float()

    # -- tower forwards mirroring open_clip, with per-row parameters ----------------------------------
    def _open_clip_vit(self, v, images, coef):
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.param("visual.class_embedding", coef).expand(x.shape[0], -1).unsqueeze(1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
        x = x + self.param("visual.positional_embedding", coef).to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        x = v.transformer(x)
        pooled, _ = v._pool(x)
        return pooled if v.proj is None else self._matmul(pooled, "visual.proj", coef)

    def _open_clip_text(self, text, coef):
        m = self.model
        tower, prefix = (m.text, "text.") if self.text_kind == "open_clip_text_tower" else (m, "")
        seq_len = text.shape[1]
        x = tower.token_embedding(text)
        x = x + self.param(prefix + "positional_embedding", coef)[..., :seq_len, :].to(x.dtype)
        attn_mask = tower.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:seq_len, :seq_len]  # prompts trimmed of padding are shorter than the context
        if prefix and tower.use_pad_mask:
            pad = tower._build_additive_mask(text, seq_len, x.dtype)
            attn_mask = pad if attn_mask is None else attn_mask.unsqueeze(0) + pad
        x = tower.transformer(x, attn_mask=attn_mask)
        x = tower.ln_final(x)
        from open_clip.transformer import text_global_pool

        pool_type = tower.pool_type if prefix else m.text_pool_type
        eos = getattr(tower, "eos_id" if prefix else "text_eos_id", None)
        pooled = text_global_pool(x, text, pool_type, eos_token_id=eos)
        proj = tower.text_projection
        if proj is None or isinstance(proj, nn.Module):
            return pooled if proj is None else proj(pooled)
        return self._matmul(pooled, prefix + "text_projection", coef)


class FusedCLIP(FusedModel):
    """The pair: every row r runs with θ_r = θ_exp + λ_r·(θ_gen − θ_exp) (base = expert, other = generalist)."""

    def __init__(self, generalist: nn.Module, expert: nn.Module, **kw):
        super().__init__(expert, [generalist], **kw)


_DIRECT = {
    "open_clip_vit": {"visual.class_embedding", "visual.positional_embedding", "visual.proj"},
    "timm_vit": {"visual.trunk.cls_token", "visual.trunk.reg_token", "visual.trunk.pos_embed"},
    "open_clip_text": {"positional_embedding", "text_projection"},
    "open_clip_text_tower": {"text.positional_embedding", "text.text_projection"},
    "hf_text": set(),
}


def _check_buffers(base: nn.Module, others: Sequence[nn.Module]) -> None:
    for other in others:
        other_buffers = dict(other.named_buffers())
        for name, buf in base.named_buffers():
            if buf.is_floating_point() and name in other_buffers and not torch.equal(buf, other_buffers[name]):
                raise ValueError(f"fused engine: float buffer '{name}' differs between the models and its merge "
                                 "is not affine in the coefficients (e.g. BatchNorm statistics); use engine='naive'")


def _lora_sides(base: nn.Module, others: Sequence[nn.Module]):
    """name -> (base's LoRA factors of that matrix, each other model's), or None when no model has any."""
    found = [factors_of(m) for m in (base, *others)]
    tables = [{} if f is None else f.factors for f in found]

    def sides(name: str) -> Sides | None:
        per_model = [t.get(name) for t in tables]
        return None if all(f is None for f in per_model) else (per_model[0], per_model[1:])

    return sides


def _prefixed(name: str, handled: set[str]) -> bool:
    return any(name.startswith(h + ".") for h in handled)


def _visual_kind(model: nn.Module) -> str:
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None:
            raise ValueError("fused engine: attentional pooling (CoCa-style) image towers are not supported")
        return "open_clip_vit"
    if isinstance(visual, TimmModel):
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        trunk = visual.trunk
        if not isinstance(trunk, TimmViT) or getattr(trunk, "dynamic_img_size", False):
            raise ValueError(f"fused engine: timm trunk {type(trunk).__name__} is not supported (timm ViT only)")
        return "timm_vit"
    raise ValueError(f"fused engine: image tower {type(visual).__name__} is not supported "
                     "(open_clip VisionTransformer or timm ViT); use engine='naive' or 'batch'")


def _text_kind(model: nn.Module) -> str:
    from open_clip.hf_model import HFTextEncoder
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if text is None and hasattr(model, "token_embedding"):
        return "open_clip_text"
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None:
            raise ValueError("fused engine: text towers with a class token (CoCa) are not supported")
        return "open_clip_text_tower"
    if isinstance(text, HFTextEncoder):
        return "hf_text"
    raise ValueError(f"fused engine: text tower {type(text).__name__} is not supported")


def _fuse_module(module: nn.Module, others: list[nn.Module], rows: RowCoefficients,
                 linear_kw: dict, lora=lambda param: None) -> nn.Module | None:
    """The fused twin of a weight-bearing leaf module, or None for modules without own parameters.
    `lora(param)`: the models' LoRA factors of the module's matrix `param` (_lora_sides)."""
    from open_clip.transformer import LayerNormFp32
    from open_clip.transformer import LayerScale as OCLayerScale

    try:
        from timm.layers import LayerScale as TimmLayerScale
    except ImportError:  # pragma: no cover - timm is a dependency
        TimmLayerScale = OCLayerScale
    if isinstance(module, nn.MultiheadAttention):
        return FusedMultiheadAttention(module, others, rows, in_factors=lora("in_proj_weight"),
                                       out_factors=lora("out_proj.weight"), **linear_kw)
    if isinstance(module, nn.Linear):
        return FusedLinear.from_modules(module, others, rows, factors=lora("weight"), **linear_kw)
    if isinstance(module, nn.Conv2d):
        return FusedConv2d(module, others, rows)
    if isinstance(module, nn.LayerNorm):
        return FusedLayerNorm(module, others, rows, fp32=isinstance(module, LayerNormFp32))
    if isinstance(module, nn.Embedding):
        return FusedEmbedding(module, others, rows)
    if isinstance(module, (OCLayerScale, TimmLayerScale)):
        return FusedLayerScale(module, others, rows)
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if own and isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.Conv1d, nn.Conv3d)):
        raise ValueError(f"fused engine: module {type(module).__name__} is not supported; use engine='naive'")
    return None


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class FusedEngine(Engine):
    """Exact per-sample merging in one batched forward per tower."""

    name = "fused"

    def __init__(self, generalist: nn.Module, expert: nn.Module, **kw):
        super().__init__(generalist, expert)
        self.fused = FusedCLIP(generalist, expert, **kw)

    def image_features(self, images, lam):
        return self.fused.encode_image(images, lam)

    def text_features(self, tokens, lam):
        return self.fused.encode_text(tokens, lam)  # padding columns trimmed where exact (FusedCLIP.trim_padding)

    def logit_scale(self, lam):
        return self.fused.logit_scale(lam)

    def logit_bias(self, lam):
        return self.fused.logit_bias(lam)
