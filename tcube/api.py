"""The library call: `merge_and_predict`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .methods.merger import MergeOutput, Merger, check_images
from .methods.registry import Kind, get_method


def merge_and_predict(generalist: nn.Module, expert: nn.Module | Sequence[nn.Module], images: torch.Tensor,
                      classnames: Sequence[str] | Sequence[Sequence[str]], *,
                      tokenizer: Callable | None = None, templates: Sequence[str] | None = None, method: str = "t3",
                      engine: str = "fused", gamma: float | None = None, lambda_min: float | None = None,
                      lambda_max: float | None = None, text_heads: str = "adaptive",
                      validation: tuple[torch.Tensor, torch.Tensor] | None = None,
                      **method_params: Any) -> MergeOutput:
    """Predict `images` [B, 3, H, W] with `method` merging the generalist and the expert.

    λ is always the weight on the generalist. `method_params` are the method's own parameters; None
    for gamma / lambda_min / lambda_max means the method's default. For repeated calls on one pair, build
    a `tcube.Merger` once: it caches heads and merged weights.

    `text_heads`: "adaptive" (default; per-sample heads from piecewise Chebyshev interpolation in λ
    whose error is measured against exact encodes on these images and kept ≤ 5e-5 in logits, within
    the engines' 1e-4 contract), "exact" (one text encode per distinct λ, the reference) or "grid"
    (**approximate**, opt-in: linear interpolation on a fixed λ grid, error not bounded by 1e-4).

    **K experts**: pass `expert` as a list and `classnames` as one list of class names per expert (its task);
    the classes are then their union, `method` a multi-expert one (default "multi_t3"; see
    `tcube.method_names(multi=True)`), `templates` one list for every task or one per task, and `domain` [B]
    (each image's task index) is read only by the `oracle_route*` ceilings. `out.weights` [B, K] holds the
    weights on the experts' task vectors; `validation=(images, union labels)` tunes `*_cal` methods.
    """
    if tokenizer is None:
        raise ValueError("tokenizer is required (e.g. pair.tokenizer from load_pair, or open_clip.get_tokenizer)")
    if isinstance(expert, (list, tuple)):
        return _merge_many(generalist, list(expert), images, classnames, tokenizer=tokenizer, templates=templates,
                           method="multi_t3" if method == "t3" else method, engine=engine, validation=validation,
                           **{k: v for k, v in dict(gamma=gamma, lambda_min=lambda_min, lambda_max=lambda_max,
                                                    **method_params).items() if v is not None})
    named = {"gamma": gamma, "lambda_min": lambda_min, "lambda_max": lambda_max}
    params = {**{k: v for k, v in named.items() if v is not None}, **method_params}
    m = get_method(method)
    scaled = getattr(m.make_params(**params), "temperature_scaling", False)  # fail before building the Merger
    check_images(images)
    merger = Merger(generalist, expert, tokenizer, classnames, templates, engine=engine, text_heads=text_heads)
    if m.kind is Kind.TUNED or scaled:
        if validation is None:
            raise ValueError(f"method '{method}' needs validation=(images, labels) to choose its coefficients "
                             "(or to fit the temperatures of temperature_scaling=True)")
        merger.tune(*validation)
    return merger.predict(images, method, **params)


def _merge_many(generalist: nn.Module, experts: list[nn.Module], images: torch.Tensor, tasks, *, tokenizer, templates,
                method: str, engine: str, validation, domain: torch.Tensor | None = None, **params) -> MergeOutput:
    from .methods.multi_merger import MultiMerger

    if not tasks or isinstance(tasks[0], str):
        raise ValueError("with a list of experts, classnames must hold one list of class names per expert "
                         "(its task), e.g. [['normal', 'pneumonia'], ['benign', 'malignant']]")
    m = get_method(method)
    m.make_params(**params)  # fail before building the engine
    check_images(images)
    merger = MultiMerger(generalist, experts, tokenizer, tasks, templates, engine=engine)
    if m.kind is Kind.TUNED:
        if validation is None:
            raise ValueError(f"method '{method}' needs validation=(images, union labels) to choose its coefficients")
        merger.tune(*validation)
    return merger.predict(images, method, domain=domain, **params)
