"""Training augmentation on whole batches, in torch, drawn from one `torch.Generator`.

These are ordinary training augmentations (zoom crop, shift, flip, brightness, contrast, light
noise, blur). They deliberately do not reuse `tcube.data.corruptions`: the corruption benchmark
must measure robustness to shifts the models never trained on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .recipe import Augment

_BINOMIAL = torch.tensor([1.0, 2.0, 1.0])


def augment_batch(pixels: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Augment float pixels [B, 3, H, W] in [0, 1]; same generator state → same output."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels [B, 3, H, W], got {tuple(pixels.shape)}")
    b = pixels.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    # Geometry: one affine grid per image (crop side s, crop position, extra shift, flips).
    side = uniform(*aug.zoom)
    shift = (1 - side).unsqueeze(1) * uniform(-1, 1, 2) + 2 * aug.translate * uniform(-1, 1, 2)
    flip_x = torch.where(torch.rand(b, generator=generator) < aug.hflip, -1.0, 1.0)
    flip_y = torch.where(torch.rand(b, generator=generator) < aug.vflip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip_x, side * flip_y
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    x = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Photometry: per-image brightness and contrast (grey images stay grey).
    bright = uniform(1 - aug.brightness, 1 + aug.brightness).view(b, 1, 1, 1)
    contrast = uniform(*aug.contrast).view(b, 1, 1, 1)
    x = x * bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean

    # Light noise, shared across channels so grey images get no colour noise.
    sigma = uniform(0.0, aug.noise_std).view(b, 1, 1, 1)
    x = x + sigma * torch.randn(b, 1, *x.shape[2:], generator=generator)

    # Occasional 3x3 blur.
    blur = (torch.rand(b, generator=generator) < aug.blur_p).view(b, 1, 1, 1)
    kernel = (torch.outer(_BINOMIAL, _BINOMIAL) / 16).to(x.dtype).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = torch.where(blur, blurred, x)
    return x.clamp(0.0, 1.0)
