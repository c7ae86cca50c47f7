"""Zero-shot heads: prompts -> tokens -> normalized class embeddings."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES: tuple[str, ...] = ("a medical image showing {}.", "an image of {}.")


def build_prompts(classnames: Sequence[str], templates: Sequence[str] | None = None) -> list[str]:
    """Class-major list of prompts: prompt[c * T + t] = templates[t].format(classnames[c])."""
    templates = tuple(templates) if templates else DEFAULT_TEMPLATES
    if not classnames:
        raise ValueError("classnames is empty: give one name per class (index = label)")
    if any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a '{{}}' placeholder for the class name, got {templates}")
    return [t.format(c) for c in classnames for t in templates]


def tokenize_prompts(tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str] | None = None):
    """Token ids [C*T, L] plus (C, T)."""
    templates = tuple(templates) if templates else DEFAULT_TEMPLATES
    tokens = tokenizer(build_prompts(classnames, templates))
    return tokens, (len(classnames), len(templates))


def head_from_text_features(features: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """[..., C*T, E] text features -> [..., C, E] head: normalize, mean over templates, normalize."""
    feats = F.normalize(features.float(), dim=-1)
    feats = feats.unflatten(-2, (n_classes, n_templates)).mean(dim=-2)
    return F.normalize(feats, dim=-1)


def hf_pad_id(text) -> int | None:
    """Pad id of a Hugging Face text tower whose pooled output ignores padding, else None.

    Such a tower masks padding keys and pools the first (CLS) token or a masked mean/max, so dropping
    padding columns after the longest prompt leaves its output unchanged (BiomedCLIP pads to 256).
    """
    from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MaxPooler, MeanPooler

    if not isinstance(text, HFTextEncoder):
        return None
    pooler = text.pooler
    front = isinstance(pooler, (ClsPooler, ClsLastHiddenStatePooler)) and pooler.cls_token_position == 0
    return text.config.pad_token_id if front or isinstance(pooler, (MeanPooler, MaxPooler)) else None


def trim_padding(tokens: torch.Tensor, pad: int | None) -> torch.Tensor:
    """Tokens [N, L] without the columns after the longest prompt (pad None: unchanged)."""
    if pad is None or tokens.ndim != 2 or tokens.shape[1] <= 1:
        return tokens
    used = (tokens != pad).any(0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return tokens if length == tokens.shape[1] else tokens[:, :length]


@torch.no_grad()
def zero_shot_head(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str] | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """Head [C, E] of one plain open_clip model."""
    tokens, (c, t) = tokenize_prompts(tokenizer, classnames, templates)
    # open_clip's own text towers need the full context length; Hugging Face towers ignore padding
    tokens = trim_padding(tokens, hf_pad_id(getattr(model, "text", None)))
    device = next(model.parameters()).device
    feats = torch.cat([model.encode_text(chunk.to(device)) for chunk in tokens.split(batch_size)])
    return head_from_text_features(feats, c, t)
