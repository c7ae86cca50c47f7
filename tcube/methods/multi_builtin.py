"""The built-in methods for one generalist and K experts (the `mixed` protocol), registered once at import.

Each returns what its kind says (registry.Kind): the models' own outputs, one static merge, or w [B, K],
the per-sample weights on the experts' task vectors. The maths is in tcube.core.multi and tcube.core.merging.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import merging
from ..core import multi as rules
from .builtin import T3, Dare, TaskArithmetic, Ties, _unit
from .registry import Kind, Method, NoParams, register, register_method


@dataclass(frozen=True)
class Which:
    index: int = 0  # which expert (the harness scores each one)

    def __post_init__(self):
        if self.index < 0:
            raise ValueError(f"index must be an expert's position ≥ 0, got {self.index}")


@dataclass(frozen=True)
class Route:
    alpha: float = 0.5   # weight left on the generalist
    hard: bool = True    # one expert per image (at most K distinct merged models) or the generalist's task mass

    def __post_init__(self):
        _unit("alpha", self.alpha)


@dataclass(frozen=True)
class Oracle:
    alpha: float = 0.5   # weight left on the generalist (WiSE-FT's)

    def __post_init__(self):
        _unit("alpha", self.alpha)


@dataclass(frozen=True)
class MultiT3(T3):
    # π one-hot at the generalist's most likely task (default) or its task mass. Hard: each image is merged with
    # one expert, its heads come from that expert's one-variable adaptive heads (soft: an exact text encode per
    # image), and no image gets fractions of the other tasks' vectors, which every static merge shows to hurt
    hard: bool = True


# -- references: the models' own outputs ------------------------------------------------------------
@register_method("multi_generalist", Kind.MULTI_OUTPUT)
def multi_generalist(view, p):
    """The generalist alone over the union classes."""
    return view.logits_gen.float()


@register_method("multi_expert", Kind.MULTI_OUTPUT, params=Which)
def multi_expert(view, p):
    """One expert alone over the union classes."""
    if p.index >= view.logits_exps.shape[0]:
        raise ValueError(f"multi_expert: index={p.index} but there are {view.logits_exps.shape[0]} experts")
    return view.logits_exps[p.index].float()


@register_method("multi_ensemble", Kind.MULTI_OUTPUT)
def multi_ensemble(view, p):
    """Mean of the K + 1 models' class probabilities (as log-probabilities)."""
    return torch.cat([view.p_gen.unsqueeze(0), view.p_exps]).mean(0).clamp_min(1e-30).log()


# -- static merges of the K task vectors --------------------------------------------------------------
@register_method("multi_average", Kind.MULTI_STATIC)
def multi_average(gen, exps, p):
    """Uniform weight average of the generalist and the K experts."""
    return merging.weight_average([gen, *exps])


@register_method("multi_task_arithmetic", Kind.MULTI_STATIC, params=TaskArithmetic)
def multi_task_arithmetic(gen, exps, p):
    return merging.task_arithmetic(gen, exps, p.scale)


@register_method("multi_ties", Kind.MULTI_STATIC, params=Ties)
def multi_ties(gen, exps, p):
    return merging.ties(gen, exps, density=p.density, scale=p.scale)


@register_method("multi_dare", Kind.MULTI_STATIC, params=Dare)
def multi_dare(gen, exps, p):
    return merging.dare(gen, exps, drop=p.drop, scale=p.scale, seed=p.seed)


# -- the ceiling: each image with its own task's expert ------------------------------------------------
@register_method("oracle_route", Kind.MULTI_PER_SAMPLE, params=Oracle, needs_domain=True)
def oracle_route(view, p):
    """Ceiling (reads the true task): WiSE-FT(α) of each image's own expert."""
    return rules.oracle_weights(view.domain, view.num_experts, 1.0 - p.alpha)


@register_method("oracle_route_t3", Kind.MULTI_PER_SAMPLE, params=T3, needs_domain=True)
def oracle_route_t3(view, p):
    """Ceiling (reads the true task): the pair T^3 with each image's own expert."""
    lam = rules.t3_lambda(view.task_js, gamma=p.gamma, lambda_min=p.lambda_min, lambda_max=p.lambda_max, tau=p.tau)
    return rules.oracle_weights(view.domain, view.num_experts, 1.0 - lam)


# -- per-sample rules and their batch-wise variants (the batch mean of w) ------------------------------
@register_method("multi_t3", Kind.MULTI_PER_SAMPLE, params=MultiT3)
def multi_t3(view, p):
    """w_k = π_k·(1 − λ_k): the π-weighted average of the K pair T^3 merges (tcube.core.multi)."""
    return rules.multi_t3_weights(view.p_gen, view.p_exps, view.blocks, gamma=p.gamma, lambda_min=p.lambda_min,
                                  lambda_max=p.lambda_max, tau=p.tau, hard=p.hard)


@register_method("multi_dawin", Kind.MULTI_PER_SAMPLE)
def multi_dawin(view, p):
    """DaWin over K + 1 models: w_k = e^{−H_k} / (e^{−H_gen} + Σ_j e^{−H_j})."""
    return rules.multi_dawin_weights(view.p_gen, view.p_exps)


@register_method("router", Kind.MULTI_PER_SAMPLE, params=Route)
def router(view, p):
    """The generalist's own prediction picks the expert: 2 forwards per image (generalist, merged)."""
    return rules.route_weights(view.p_gen, view.blocks, alpha=p.alpha, hard=p.hard)


register_method("multi_t3_batch", Kind.MULTI_PER_BATCH, params=MultiT3)(multi_t3)
register_method("multi_dawin_batch", Kind.MULTI_PER_BATCH)(multi_dawin)
register_method("router_batch", Kind.MULTI_PER_BATCH, params=Route)(router)

# -- validation-tuned: task arithmetic's scale (the "scale chosen on validation") -------------
SCALE_GRID = [dict(scale=s / 10) for s in (3, 1, 2, 4, 5, 6, 8, 10)]
register(Method("multi_task_arithmetic_cal", Kind.TUNED, params=NoParams, base="multi_task_arithmetic",
                grid=lambda js_val: SCALE_GRID))
