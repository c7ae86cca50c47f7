"""A user's own methods, registered from outside tcube: the README's "Adding a method" example, verbatim."""
from dataclasses import dataclass

import torch

from tcube import Kind, register_method


@dataclass(frozen=True)
class MixParams:
    weight: float = 0.3  # weight on the generalist

    def __post_init__(self):  # range checks: a bad value fails with the method's name
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {self.weight}")


@register_method("linear_mix", Kind.STATIC, params=MixParams, weight=lambda p: p.weight)
def linear_mix(gen, exp, p):  # a state-dict merge: θ = w·θ_gen + (1 − w)·θ_exp
    return {k: p.weight * gen[k] + (1 - p.weight) * exp[k] if gen[k].is_floating_point() else exp[k] for k in gen}


@dataclass(frozen=True)
class StepParams:
    threshold: float = 0.01  # JS (nats) above which the two models disagree
    high: float = 0.8        # λ where they disagree (lean on the generalist)
    low: float = 0.2         # λ where they agree (lean on the expert)


@register_method("js_step", Kind.PER_SAMPLE, params=StepParams)
def js_step(p_gen, p_exp, js, p):  # a per-sample λ rule (weight on the generalist)
    return torch.where(js > p.threshold, torch.full_like(js, p.high), torch.full_like(js, p.low))
