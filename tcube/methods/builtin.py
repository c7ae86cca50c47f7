"""The built-in methods (the README's "What it does"), registered once at import (the only list of their names).

Each coefficient is the weight on the generalist (λ). The maths is in tcube.core; every argument
is passed explicitly, so the defaults below are the only ones.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core import coefficients as coef
from ..core import merging
from .registry import Kind, Method, NoParams, register, register_method


def _unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} (weight on the generalist) must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class Alpha:
    alpha: float = 0.5  # weight on the generalist (the WiSE-FT paper's α is 1 − alpha)

    def __post_init__(self):
        _unit("alpha", self.alpha)


@dataclass(frozen=True)
class TaskArithmetic:
    scale: float = 0.5  # θ_gen + s·τ


@dataclass(frozen=True)
class Ties:
    density: float = 0.2  # fraction of τ kept (largest magnitudes)
    scale: float = 1.0    # scale of the merged task vector

    def __post_init__(self):
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")


@dataclass(frozen=True)
class Dare:
    drop: float = 0.5   # drop probability p
    scale: float = 1.0  # scale of the merged task vector
    seed: int = 0       # drop mask seed (the harness passes the run seed)

    def __post_init__(self):
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"drop must be in [0, 1), got {self.drop}")


@dataclass(frozen=True)
class TemperatureScaling:
    temperature_scaling: bool = False  # JS / entropies from temperature-scaled probabilities (fit on val)


@dataclass(frozen=True)
class DaWin:
    offset: bool = False               # the official offset adjustment
    temperature_scaling: bool = False


@dataclass(frozen=True)
class T3:
    gamma: float = 0.5       # γ (paper default)
    lambda_min: float = 0.0
    lambda_max: float = 1.0
    tau: float = 0.0         # centre of the sigmoid, σ(γ·(JS − τ)); 0 = the paper's rule
    temperature_scaling: bool = False

    def __post_init__(self):
        if self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min ({self.lambda_min}) must not exceed lambda_max ({self.lambda_max})")
        if self.gamma < 0:
            raise ValueError(f"gamma must be ≥ 0, got {self.gamma}")


# -- endpoints and the output ensemble -----------------------------------------------------------
register_method("generalist", Kind.ENDPOINT, weight=lambda p: 1.0)(lambda gen, exp, p: gen.float())
register_method("expert", Kind.ENDPOINT, weight=lambda p: 0.0)(lambda gen, exp, p: exp.float())


@register_method("ensemble", Kind.ENSEMBLE, weight=lambda p: 0.5)
def ensemble(p_gen, p_exp, p):
    """Mean of the two models' class probabilities (as log-probabilities)."""
    return ((p_gen + p_exp) / 2).clamp_min(1e-30).log()


# -- static weight merges (λ reported: NaN where no single one exists) ---------------------------
@register_method("weight_average", Kind.STATIC, weight=lambda p: 0.5)
def weight_average(gen, exp, p):
    return merging.weight_average([gen, exp])


@register_method("wise_ft", Kind.STATIC, params=Alpha, weight=lambda p: p.alpha)
def wise_ft(gen, exp, p):
    return merging.wise_ft(gen, exp, p.alpha)


@register_method("task_arithmetic", Kind.STATIC, params=TaskArithmetic, weight=lambda p: 1.0 - p.scale)
def task_arithmetic(gen, exp, p):
    return merging.task_arithmetic(gen, [exp], p.scale)


@register_method("ties", Kind.STATIC, params=Ties, weight=lambda p: float("nan"))
def ties(gen, exp, p):
    return merging.ties(gen, [exp], density=p.density, scale=p.scale)


@register_method("dare", Kind.STATIC, params=Dare, weight=lambda p: float("nan"))
def dare(gen, exp, p):
    return merging.dare(gen, [exp], drop=p.drop, scale=p.scale, seed=p.seed)


@register_method("slerp", Kind.STATIC, params=Alpha, weight=lambda p: p.alpha)
def slerp(gen, exp, p):
    return merging.slerp(gen, exp, alpha=p.alpha)


# -- λ rules ----------------------------------------------------------------------------------------
@register_method("dawin", Kind.PER_SAMPLE, params=DaWin)
def dawin(p_gen, p_exp, js, p):
    """DaWin: weight on the expert = e^{−H_exp} / (e^{−H_gen} + e^{−H_exp})."""
    return coef.dawin_lambda(p_gen, p_exp, offset=p.offset)


@register_method("t3", Kind.PER_SAMPLE, params=T3)
def t3(p_gen, p_exp, js, p):
    """T^3: λ(x) = λ_min + (λ_max − λ_min)·σ(γ·(JS − τ))."""
    return coef.t3_lambda(js, gamma=p.gamma, lambda_min=p.lambda_min, lambda_max=p.lambda_max, tau=p.tau)


register_method("t3_batch", Kind.PER_BATCH, params=T3)(t3)  # T^3_B: the batch mean of T^3's λ

# -- validation-tuned (Merger.tune): the defaults first, so ties keep them ---------------------------
T3_GRID = [dict(gamma=g, lambda_min=lo, lambda_max=hi) for g in (0.5, 2.0, 8.0, 32.0)
           for lo, hi in ((0.0, 1.0), (0.25, 0.75), (0.0, 0.5), (0.5, 1.0))]
WISE_FT_GRID = [dict(alpha=a / 10) for a in (5, 4, 6, 3, 7, 2, 8, 1, 9, 0, 10)]


def t3_grid(js_val):
    """T^3's (γ, λ range) grid, centred at τ = 0 and at the median validation JS."""
    return [dict(g, tau=tau) for tau in (0.0, round(float(js_val.median()), 6)) for g in T3_GRID]


register(Method("t3_cal", Kind.TUNED, params=TemperatureScaling, base="t3", grid=t3_grid))
register(Method("wise_ft_cal", Kind.TUNED, params=NoParams, base="wise_ft", grid=lambda js_val: WISE_FT_GRID))
