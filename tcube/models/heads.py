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


def tokenize_tasks(tokenizer: Callable, tasks: Sequence[Sequence[str]],
                   templates: Sequence[Sequence[str] | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The union label space of several tasks: token ids [P, L] and each prompt's union class index [P].

    Classes are numbered task by task (task 0's first, ...); each task keeps its own templates
    (`templates[k]`, or the default ones), so tasks may differ in their number of templates.
    """
    if not tasks:
        raise ValueError("tasks is empty: give one list of class names per expert")
    templates = list(templates) if templates is not None else [None] * len(tasks)
    if len(templates) != len(tasks):
        raise ValueError(f"templates: {len(templates)} lists for {len(tasks)} tasks; give one per task (or None)")
    prompts, prompt_class, offset = [], [], 0
    for names, tmpl in zip(tasks, templates):
        tmpl = tuple(tmpl) if tmpl else DEFAULT_TEMPLATES
        prompts += build_prompts(names, tmpl)
        prompt_class += [offset + c for c in range(len(names)) for _ in tmpl]
        offset += len(names)
    return tokenizer(prompts), torch.tensor(prompt_class)


def head_from_prompt_features(features: torch.Tensor, prompt_class: torch.Tensor) -> torch.Tensor:
    """[..., P, E] prompt features -> [..., C, E] head: normalize, mean over each class's prompts, normalize.

    Equals head_from_text_features when every class has the same templates; here their number may differ.
    """
    feats = F.normalize(features.float(), dim=-1)
    index = prompt_class.to(feats.device)
    n_classes = int(index.max()) + 1
    sums = feats.new_zeros(*feats.shape[:-2], n_classes, feats.shape[-1]).index_add_(-2, index, feats)
    counts = torch.bincount(index, minlength=n_classes).to(feats.dtype).unsqueeze(-1)
    return F.normalize(sums / counts, dim=-1)


def union_head(model, tokens: torch.Tensor, prompt_class: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Head [C, E] of one plain model over a union label space (tokenize_tasks)."""
    tokens = trim_padding(tokens, hf_pad_id(getattr(model, "text", None)))
    device = next(model.parameters()).device
    feats = torch.cat([model.encode_text(chunk.to(device)) for chunk in tokens.split(batch_size)])
    return head_from_prompt_features(feats, prompt_class)


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
