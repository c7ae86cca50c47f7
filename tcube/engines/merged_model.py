"""Engines that materialize merged weights: naive (per sample, the reference), batch and bucket."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.merging import interpolate
from ..models.heads import hf_pad_id, trim_padding
from .base import Engine


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

    def _groups(self, lam: torch.Tensor):
        values, inverse = torch.unique(lam, return_inverse=True)
        return [(float(v), (inverse == k).nonzero().squeeze(1)) for k, v in enumerate(values)]

    @torch.no_grad()
    def _grouped(self, encode: str, inputs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        out = None
        for value, index in self._groups(lam):
            feats = getattr(self.merged(value), encode)(inputs[index])
            if out is None:
                out = feats.new_empty((inputs.shape[0], feats.shape[-1]))
            out[index] = feats
        return out

    def text_features(self, tokens, lam):
        # Hugging Face towers (BiomedCLIP's BERT, padded to 256) ignore padding: drop it, exactly
        return self._grouped("encode_text", trim_padding(tokens, hf_pad_id(getattr(self.work, "text", None))), lam)


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
