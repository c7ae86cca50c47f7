"""A model's fingerprint: sha256 over every state-dict entry's name, dtype and shape
plus a content digest of the tensor — all of its bytes when it has ≤ ``FULL_HASH_MAX_NUMEL`` elements
(every tensor of the tiny and zoo models, and most of a ViT-B), otherwise a strided sample of
``SAMPLE_NUMEL`` elements plus its float64 sum and absolute sum. Two models share a fingerprint only if
their weights are (for all practical purposes) identical; the spec or path naming them plays no part.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

FULL_HASH_MAX_NUMEL = 1 << 24
SAMPLE_NUMEL = 1 << 16


def _tensor_digest(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() <= FULL_HASH_MAX_NUMEL:
        return hashlib.sha256(t.view(-1).view(torch.uint8).numpy().tobytes()).digest()
    flat = t.view(-1)
    sample = flat[:: max(1, flat.numel() // SAMPLE_NUMEL)].contiguous()
    stats = torch.stack([flat.double().sum(), flat.double().abs().sum()])
    return hashlib.sha256(sample.view(torch.uint8).numpy().tobytes() + stats.numpy().tobytes()).digest()


def model_fingerprint(model: nn.Module) -> str:
    """Content hash of a model's state dict; 24 hex digits."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_digest(t))
    return h.hexdigest()[:24]
