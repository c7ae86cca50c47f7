"""Every T^3 method and baseline behind one call: `Merger.predict(images, method, **params)`.

A Merger holds what is costly to rebuild for a generalist/expert pair and one label space: the
two endpoint heads, the engine (e.g. fused copies of the weights), per-λ merged heads and
static merged models. Coefficient maths lives in coefficients.py, static merges in merging.py.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import coefficients as coef
from ..core import merging
from ..engines import TextHeads, make_engine, merged_logits
from ..models.checkpoints import check_compatible
from ..models.heads import tokenize_prompts, zero_shot_head
from ..runtime.device import to_device
from ..runtime.precision import autocast, check_precision

ENDPOINTS = ("generalist", "expert")
STATIC = ("weight_average", "wise_ft", "task_arithmetic", "ties", "dare", "slerp")
PER_SAMPLE = ("t3", "dawin", "t3_cal")
ADAPTIVE = ("t3", "t3_batch", "t3_cal", "dawin")  # λ computed from the test inputs (per sample or per batch)
METHODS = ENDPOINTS + ("ensemble",) + STATIC + ("dawin", "t3", "t3_batch", "t3_cal", "wise_ft_cal")

# Every coefficient is the weight on the generalist (λ), so lambdas are comparable across methods.
DEFAULT_PARAMS: dict[str, Any] = {
    "gamma": 0.5, "lambda_min": 0.0, "lambda_max": 1.0, "tau": 0.0,  # T^3 (paper defaults)
    "alpha": 0.5,          # wise_ft / slerp: weight on the generalist
    "scale": 0.5,          # task_arithmetic: θ_gen + s·τ;  ties/dare use `merge_scale`
    "density": 0.2,        # ties: fraction of τ kept
    "drop": 0.5,           # dare: drop probability
    "merge_scale": 1.0,    # ties/dare: scale of the merged task vector
    "seed": 0,             # dare
    "offset": False,       # dawin: official offset adjustment
    "calibrate_temperature": False,  # JS / DaWin entropies from temperature-scaled probabilities (fit on val)
}

# The parameters each method reads; callers key results on these only (a γ sweep never re-keys the
# generalist's cells).
_T3 = ("gamma", "lambda_min", "lambda_max", "tau", "calibrate_temperature")
METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "generalist": (), "expert": (), "ensemble": (), "weight_average": (),
    "wise_ft": ("alpha",), "slerp": ("alpha",), "task_arithmetic": ("scale",),
    "ties": ("density", "merge_scale"), "dare": ("drop", "merge_scale", "seed"),
    "dawin": ("offset", "calibrate_temperature"), "t3": _T3, "t3_batch": _T3,
    "t3_cal": ("calibrate_temperature",), "wise_ft_cal": (),
}
CALIBRATED = ("t3_cal", "wise_ft_cal")

# Validation grids for the calibrated variants: the paper's defaults first, so ties keep them.
T3_CAL_GRID = [dict(gamma=g, lambda_min=lo, lambda_max=hi) for g in (0.5, 2.0, 8.0, 32.0)
               for lo, hi in ((0.0, 1.0), (0.25, 0.75), (0.0, 0.5), (0.5, 1.0))]
WISE_FT_CAL_GRID = [dict(alpha=a / 10) for a in (5, 4, 6, 3, 7, 2, 8, 1, 9, 0, 10)]


@dataclass
class MergeOutput:
    logits: torch.Tensor   # [B, C]
    probs: torch.Tensor    # [B, C]
    preds: torch.Tensor    # [B]
    lambdas: torch.Tensor  # [B] weight on the generalist actually used (NaN where no single one exists)
    js: torch.Tensor       # [B] JS(p_gen ‖ p_exp) in nats
    params: dict[str, Any] = field(default_factory=dict)  # coefficients used (chosen ones for *_cal)


def check_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {list(METHODS)}")
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown method parameters {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **params}
    for key in ("gamma", "lambda_min", "lambda_max", "tau", "alpha", "scale"):
        if not math.isfinite(float(p[key])):
            raise ValueError(f"{key} must be finite, got {p[key]}")
    if p["lambda_min"] > p["lambda_max"]:
        raise ValueError(f"lambda_min ({p['lambda_min']}) must not exceed lambda_max ({p['lambda_max']})")
    if p["gamma"] < 0:
        raise ValueError(f"gamma must be ≥ 0, got {p['gamma']}")
    if not 0.0 <= p["alpha"] <= 1.0:
        raise ValueError(f"alpha (weight on the generalist) must lie in [0, 1], got {p['alpha']}")
    return p


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a preprocessed float tensor [B, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (preprocessed), got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf values; check the preprocessing or the data files")


class Merger:
    """Merged inference for one generalist/expert pair and one set of classes."""

    def __init__(self, generalist: nn.Module, expert: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                 templates: Sequence[str] | None = None, *, engine: str = "fused", text_heads: str = "adaptive",
                 grid_size: int = 33, engine_options: dict[str, Any] | None = None, precision: str = "fp32"):
        check_compatible(generalist.state_dict(), expert.state_dict(), "generalist and expert")
        self.generalist, self.expert = generalist.eval(), expert.eval()
        self.device = next(expert.parameters()).device
        # model forwards only; λ, JS and weight interpolation stay fp32 (tcube.runtime.precision)
        self.precision = check_precision(precision, self.device)
        self.tokenizer, self.classnames, self.templates = tokenizer, list(classnames), templates
        tokens, (n_classes, n_templates) = tokenize_prompts(tokenizer, classnames, templates)
        self.tokens = tokens.to(self.device)
        with self._autocast():
            self.head_gen = zero_shot_head(generalist, tokenizer, classnames, templates)
            self.head_exp = zero_shot_head(expert, tokenizer, classnames, templates)
        self.engine_name = engine
        self.engine = make_engine(engine, generalist, expert, **(engine_options or {}))
        self.heads = TextHeads(self.engine, self.tokens, n_classes, n_templates, mode=text_heads, grid_size=grid_size)
        self._static: dict[tuple, tuple[nn.Module, torch.Tensor]] = {}
        self.calibrated: dict[str, dict[str, Any]] = {}
        self.temperatures: tuple[float, float] | None = None
        self.calibration_report: dict[str, float] = {}

    # -- the two endpoints (also the JS pass) ------------------------------------------------------
    @torch.no_grad()
    def endpoint_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_device(images, self.device)
        with self._autocast():
            return (_plain_logits(self.generalist, self.head_gen, images),
                    _plain_logits(self.expert, self.head_exp, images))

    def _autocast(self):
        return autocast(self.device, self.precision)

    # -- one call for every method ------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, method: str = "t3", *, endpoint_logits=None, **params) -> MergeOutput:
        """Merged predictions for a batch. `endpoint_logits` may pass cached (gen, exp) logits."""
        p = check_params(method, params)
        check_images(images)
        images = to_device(images, self.device)
        logits_gen, logits_exp = endpoint_logits if endpoint_logits is not None else self.endpoint_logits(images)
        p_gen, p_exp = self._probs(logits_gen, logits_exp, p["calibrate_temperature"])
        js = coef.js_divergence(p_gen, p_exp)
        batch = images.shape[0]
        used: dict[str, Any] = {}

        def constant(value: float) -> torch.Tensor:
            return torch.full((batch,), float(value), device=self.device)

        if method == "generalist":
            logits, lam = logits_gen.float(), constant(1.0)
        elif method == "expert":
            logits, lam = logits_exp.float(), constant(0.0)
        elif method == "ensemble":
            logits, lam = ((p_gen + p_exp) / 2).clamp_min(1e-30).log(), constant(0.5)
        elif method in STATIC or method == "wise_ft_cal":
            (model, head), method, p, used = self._resolve_static(method, p)  # merged in fp32, outside autocast
            with self._autocast():
                logits = _plain_logits(model, head, images)
            lam = constant(_static_lambda(method, p))
        else:
            if method == "t3_cal":
                used = self._calibrated("t3_cal")
                p = {**p, **used}
            if method == "dawin":
                lam = coef.dawin_lambda(p_gen, p_exp, offset=p["offset"])
                used = {"offset": p["offset"]}
            else:
                lam = coef.t3_lambda(js, gamma=p["gamma"], lambda_min=p["lambda_min"], lambda_max=p["lambda_max"],
                                     tau=p["tau"])
                used = used or {k: p[k] for k in ("gamma", "lambda_min", "lambda_max", "tau")}
                if method == "t3_batch":
                    lam = coef.t3_batch_lambda(lam)
            with self._autocast():  # λ above was computed in fp32 from fp32 probabilities
                logits, lam = merged_logits(self.engine, images, lam.float(), self.heads)
        probs = logits.softmax(-1)
        return MergeOutput(logits, probs, probs.argmax(-1), lam, js, used)

    # -- static merges ------------------------------------------------------------------------------
    def static_model(self, method: str, **params) -> tuple[nn.Module, dict[str, Any]] | None:
        """(merged model, parameters used) of a method with one fixed merge; None for the others.

        Lets a caller notice that two methods merge to the same weights (e.g. weight_average and
        wise_ft at α = 0.5, bit for bit) and predict once.
        """
        if method not in STATIC and method != "wise_ft_cal":
            return None
        (model, _), _, _, used = self._resolve_static(method, check_params(method, params))
        return model, used

    def _resolve_static(self, method: str, p: dict[str, Any]):
        """((model, head), method merged, its parameters, parameters to report); wise_ft_cal is a wise_ft."""
        used = {}
        if method == "wise_ft_cal":
            used = self._calibrated("wise_ft_cal")
            method, p = "wise_ft", {**p, **used}
        return self._static_model(method, p), method, p, used or {k: p[k] for k in METHOD_PARAMS[method]}

    def _static_model(self, method: str, p: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
        key = (method,) + tuple(p[k] for k in METHOD_PARAMS[method])
        if key not in self._static:
            gen, exp = self.generalist.state_dict(), self.expert.state_dict()
            state = {
                "weight_average": lambda: merging.weight_average([gen, exp]),
                "wise_ft": lambda: merging.wise_ft(gen, exp, p["alpha"]),
                "task_arithmetic": lambda: merging.task_arithmetic(gen, [exp], p["scale"]),
                "ties": lambda: merging.ties(gen, [exp], density=p["density"], scale=p["merge_scale"]),
                "dare": lambda: merging.dare(gen, [exp], drop=p["drop"], scale=p["merge_scale"], seed=p["seed"]),
                "slerp": lambda: merging.slerp(gen, exp, alpha=p["alpha"]),
            }[method]()
            model = copy.deepcopy(self.expert)
            model.load_state_dict(state)
            with self._autocast():
                head = zero_shot_head(model, self.tokenizer, self.classnames, self.templates)
            self._static[key] = (model.eval(), head)
        return self._static[key]

    def _probs(self, logits_gen, logits_exp, calibrated: bool):
        t_gen, t_exp = 1.0, 1.0
        if calibrated:
            if self.temperatures is None:
                raise ValueError("calibrate_temperature=True needs temperatures fitted on validation data: "
                                 "call Merger.calibrate(val_images, val_labels) first")
            t_gen, t_exp = self.temperatures
        return (logits_gen.float() / t_gen).softmax(-1), (logits_exp.float() / t_exp).softmax(-1)

    # -- validation-tuned variants ------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict[str, dict]:
        """Fit each model's temperature, then choose t3_cal's (γ, λ_min, λ_max, τ) and wise_ft_cal's α by
        validation top-1 (first best in grid order wins, so the paper's defaults keep ties)."""
        from ..core.temperature import expected_calibration_error, fit_temperature

        labels = labels.to(self.device)
        batches = list(zip(images.split(batch_size), labels.split(batch_size)))
        cached = [(x, y, self.endpoint_logits(x)) for x, y in batches]
        all_gen = torch.cat([e[0] for _, _, e in cached])
        all_exp = torch.cat([e[1] for _, _, e in cached])
        self.temperatures = (fit_temperature(all_gen, labels), fit_temperature(all_exp, labels))
        self.calibration_report = {}
        for name, logits, t in (("generalist", all_gen, self.temperatures[0]), ("expert", all_exp, self.temperatures[1])):
            self.calibration_report[f"temperature_{name}"] = t
            self.calibration_report[f"ece_{name}_before"] = expected_calibration_error(logits.softmax(-1), labels)
            self.calibration_report[f"ece_{name}_after"] = expected_calibration_error((logits / t).softmax(-1), labels)
        js_val = coef.js_divergence(all_gen.softmax(-1), all_exp.softmax(-1))
        grid = [dict(g, tau=tau) for tau in (0.0, round(float(js_val.median()), 6)) for g in T3_CAL_GRID]

        def accuracy(method: str, params: dict) -> float:
            hits = sum(int((self.predict(x, method, endpoint_logits=e, **params).preds == y).sum()) for x, y, e in cached)
            return hits / max(1, labels.numel())

        self.calibrated = {
            "t3_cal": max(grid, key=lambda g: (accuracy("t3", g), -grid.index(g))),
            "wise_ft_cal": max(WISE_FT_CAL_GRID, key=lambda g: (accuracy("wise_ft", g), -WISE_FT_CAL_GRID.index(g))),
        }
        return self.calibrated

    def calibration_state(self) -> dict[str, Any]:
        """What calibrate() chose, as plain data (to cache it and skip recalibrating later)."""
        return {"calibrated": self.calibrated, "temperatures": self.temperatures,
                "calibration_report": self.calibration_report}

    def load_calibration_state(self, state: dict[str, Any]) -> None:
        self.calibrated = dict(state.get("calibrated") or {})
        temps = state.get("temperatures")
        self.temperatures = None if temps is None else (float(temps[0]), float(temps[1]))
        self.calibration_report = dict(state.get("calibration_report") or {})

    def _calibrated(self, method: str) -> dict[str, Any]:
        if method not in self.calibrated:
            raise ValueError(f"method '{method}' chooses its coefficients on validation data: call "
                             "Merger.calibrate(val_images, val_labels) first, or pass validation=(images, labels) "
                             "to merge_and_predict")
        return self.calibrated[method]


def _static_lambda(method: str, p: dict[str, Any]) -> float:
    """The weight on the generalist of a static merge; NaN where no single one exists (TIES, DARE)."""
    return {"weight_average": 0.5, "wise_ft": p["alpha"], "slerp": p["alpha"],
            "task_arithmetic": 1.0 - p["scale"]}.get(method, float("nan"))


def _plain_logits(model: nn.Module, head: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    img = F.normalize(model.encode_image(images).float(), dim=-1)
    with torch.autocast(img.device.type, enabled=False):  # the cosine logits stay fp32 under mixed precision
        logits = model.logit_scale.detach().float().exp() * img @ head.to(img.device).float().T
    bias = getattr(model, "logit_bias", None)
    return logits if bias is None else logits + bias.detach().float()
