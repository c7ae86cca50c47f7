"""The engine interface: per-row merged image/text features for θ_r = λ_r·θ_gen + (1 − λ_r)·θ_exp."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Engine:
    """How a per-sample merged forward is computed. Subclasses differ in cost, never in meaning."""

    name: ClassVar[str] = ""

    def __init__(self, generalist: nn.Module, expert: nn.Module):
        self.generalist, self.expert = generalist.eval(), expert.eval()

    def effective_lambdas(self, lam: torch.Tensor) -> torch.Tensor:
        """The λ each sample is actually merged with (bucket quantizes; everything else is exact)."""
        return lam

    def image_features(self, images: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:  # [B, E]
        raise NotImplementedError

    def text_features(self, tokens: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:  # [R, E]
        raise NotImplementedError

    def logit_scale(self, lam: torch.Tensor) -> torch.Tensor:
        """exp of the merged log-scale (logit_scale is merged in log space like any parameter)."""
        return _interp_param(self.generalist.logit_scale, self.expert.logit_scale, lam).exp()

    def logit_bias(self, lam: torch.Tensor) -> torch.Tensor | None:
        if getattr(self.expert, "logit_bias", None) is None:
            return None
        return _interp_param(self.generalist.logit_bias, self.expert.logit_bias, lam)


def _interp_param(gen: torch.Tensor, exp: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    lam = lam.float()
    return lam * gen.detach().float().reshape(-1)[0] + (1 - lam) * exp.detach().float().reshape(-1)[0]


def merged_logits(engine: Engine, images: torch.Tensor, lam: torch.Tensor, heads) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, C] of each sample's merged model, and the λ actually used.

    logits_i = exp(logit_scale(λ_i)) · normalize(img(x_i; λ_i)) · head(λ_i)ᵀ (+ merged logit_bias).
    """
    lam = engine.effective_lambdas(lam)
    return logits_at(engine, images, lam, heads), lam


def logits_at(engine, images: torch.Tensor, coef: torch.Tensor, heads) -> torch.Tensor:
    """Logits [B, C] of each sample's merged model at its coefficients (λ [B], or w [B, K] for several experts).

    Any engine with image_features / logit_scale / logit_bias taking those coefficients; heads(coef, img) [B, C, E].
    """
    img = F.normalize(engine.image_features(images, coef).float(), dim=-1)
    head = heads(coef, img).float()  # [B, C, E]; adaptive heads check their error on these features
    with torch.autocast(img.device.type, enabled=False):  # the cosine logits stay fp32 under mixed precision
        logits = engine.logit_scale(coef).float().unsqueeze(1) * torch.einsum("be,bce->bc", img, head)
    bias = engine.logit_bias(coef)
    if bias is not None:
        logits = logits + bias.float().unsqueeze(1)
    return logits
