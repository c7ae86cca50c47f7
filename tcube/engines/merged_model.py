"""Engines that materialize merged weights: naive (per sample, the reference), batch and bucket."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.merging import interpolate
from ..models.heads import hf_pad_id, trim_padding
from .base import Engine


@torch.no_grad()
def run_grouped(model_for, encode: str, inputs: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Each group of rows with equal coefficients (λ [R] or w [R, K]) through `model_for(row)`'s `encode`,
    one plain forward per group; features [R, E] back in input order."""
    values, inverse = torch.unique(coef, dim=0, return_inverse=True)
    out = None
    for k, value in enumerate(values):
        index = (inverse == k).nonzero().squeeze(1)
        feats = getattr(model_for(value), encode)(inputs[index])
        if out is None:
            out = feats.new_empty((inputs.shape[0], feats.shape[-1]))
        out[index] = feats
    return out


def plain_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens for a plain model's encode_text: Hugging Face towers (BiomedCLIP's BERT, padded to 256) ignore
    padding, so it is dropped, exactly; open_clip's own towers add the full-context positional embedding."""
    return trim_padding(tokens, hf_pad_id(getattr(model, "text", None)))


class _MaterializingEngine(Engine):
    """Loads θ(λ) = λ·θ_gen + (1 − λ)·θ_exp into a work copy of the model, one λ at a time."""

    def __init__(self, generalist: nn.Module, expert: nn.Module):
        super().__init__(generalist, expert)
        self.work = copy.deepcopy(expert).eval()
        self._gen_state, self._exp_state = generalist.state_dict(), expert.state_dict()
        self._loaded: float | None = None

    def merged(self, lam: float) -> nn.Module:
        if self._loaded != lam:
            self.work.load_state_dict(interpolate(self._gen_state, self._exp_state, lam))
            self._loaded = lam
        return self.work

    def _grouped(self, encode: str, inputs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return run_grouped(lambda value: self.merged(float(value)), encode, inputs, lam)

    def text_features(self, tokens, lam):
        return self._grouped("encode_text", plain_tokens(self.work, tokens), lam)


class NaiveEngine(_MaterializingEngine):
    """The reference oracle: build θ(x_i) for every sample and run it on x_i alone."""

    name = "naive"

    @torch.no_grad()
    def image_features(self, images, lam):
        return torch.cat([self.merged(float(v)).encode_image(images[i:i + 1]) for i, v in enumerate(lam)])


class BatchEngine(_MaterializingEngine):
    """One merged model per batch (how T^3_B runs): every sample must share one λ."""

    name = "batch"

    def image_features(self, images, lam):
        if torch.unique(lam).numel() > 1:
            raise ValueError(
                "engine 'batch' merges one model per batch, but the samples have different λ; use "
                "method='t3_batch', engine='fused' (exact per sample) or engine='bucket' (approximate)"
            )
        return self._grouped("encode_image", images, lam)


class BucketEngine(_MaterializingEngine):
    """Approximate: λ quantized to the centres of K equal bins over the batch's λ range, one model per bin."""

    name = "bucket"

    def __init__(self, generalist: nn.Module, expert: nn.Module, num_buckets: int = 8):
        super().__init__(generalist, expert)
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be ≥ 1, got {num_buckets}")
        self.num_buckets = num_buckets

    def effective_lambdas(self, lam):
        low, high = lam.min(), lam.max()
        if high == low:
            return lam
        width = (high - low) / self.num_buckets
        index = ((lam - low) / width).floor().clamp(0, self.num_buckets - 1)
        return low + (index + 0.5) * width

    def image_features(self, images, lam):
        return self._grouped("encode_image", images, lam)
