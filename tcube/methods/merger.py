"""Every registered method behind one call: `Merger.predict(images, method, **params)`.

A Merger holds what is costly to rebuild for a generalist/expert pair and one label space: the
two endpoint heads, the engine (e.g. fused copies of the weights), per-λ merged heads and
static merged models. It dispatches on the method's kind (registry.py); the methods' maths is in
builtin.py and tcube.core.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import coefficients as coef
from ..engines import TextHeads, make_engine, merged_logits
from ..models.checkpoints import check_compatible
from ..models.heads import tokenize_prompts, zero_shot_head
from ..runtime.device import to_device
from ..runtime.precision import autocast, check_precision
from .registry import TEMPERATURE_SCALING, Kind, Method, effective, get_method
from .tuning import tune


@dataclass
class MergeOutput:
    logits: torch.Tensor   # [B, C]
    probs: torch.Tensor    # [B, C]
    preds: torch.Tensor    # [B]
    lambdas: torch.Tensor  # [B] weight on the generalist actually used (NaN where no single one exists)
    js: torch.Tensor       # [B] JS(p_gen ‖ p_exp) in nats
    params: dict[str, Any] = field(default_factory=dict)  # coefficients used (chosen ones for *_cal)
    # per-sample/per-batch merges: how the merged heads were made ({"mode", "approximate", "max_error"}:
    # max_error is adaptive's largest measured |Δlogit|); None where one merged model's head is exact
    text_heads: dict[str, Any] | None = None
    # K experts (MultiMerger): [B, K] weights on the experts' task vectors; `lambdas` is then 1 − their sum and
    # `js` [B, K] is JS(p_gen ‖ p_k) within each expert's task (NaN where a method ran no expert, e.g. router)
    weights: torch.Tensor | None = None


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
        self.tuned: dict[str, dict[str, Any]] = {}  # tuned method -> chosen coefficients of its base
        self.temperatures: tuple[float, float] | None = None
        self.temperature_report: dict[str, float] = {}

    # -- the two endpoints (also the JS pass) ------------------------------------------------------
    @torch.no_grad()
    def endpoint_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_device(images, self.device)
        with self._autocast():
            return (_plain_logits(self.generalist, self.head_gen, images),
                    _plain_logits(self.expert, self.head_exp, images))

    def _autocast(self):
        return autocast(self.device, self.precision)

    # -- one call for every method: dispatch on the registered kind ---------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, method: str = "t3", *, endpoint_logits=None, **params) -> MergeOutput:
        """Merged predictions for a batch. `endpoint_logits` may pass cached (gen, exp) logits."""
        m, p, used = self._resolve(method, params)
        check_images(images)
        images = to_device(images, self.device)
        logits_gen, logits_exp = endpoint_logits if endpoint_logits is not None else self.endpoint_logits(images)
        p_gen, p_exp = self._probs(logits_gen, logits_exp, getattr(p, TEMPERATURE_SCALING, False))
        js = coef.js_divergence(p_gen, p_exp)
        if m.kind in (Kind.PER_SAMPLE, Kind.PER_BATCH):
            lam = m.fn(p_gen, p_exp, js, p)
            if m.kind is Kind.PER_BATCH:
                lam = coef.t3_batch_lambda(lam)
            with self._autocast():  # λ above was computed in fp32 from fp32 probabilities
                logits, lam = merged_logits(self.engine, images, lam.float(), self.heads)
            heads = self.heads.describe()
        else:
            heads = None
            if m.kind is Kind.ENDPOINT:
                logits = m.fn(logits_gen, logits_exp, p)
            elif m.kind is Kind.ENSEMBLE:
                logits = m.fn(p_gen, p_exp, p)
            else:  # STATIC: merged in fp32, outside autocast
                model, head = self._static_model(m, p)
                with self._autocast():
                    logits = _plain_logits(model, head, images)
            lam = torch.full((images.shape[0],), float(m.weight(p)), device=self.device)
        probs = logits.softmax(-1)
        return MergeOutput(logits, probs, probs.argmax(-1), lam, js, used, heads)

    def _resolve(self, method: str, params: dict[str, Any]) -> tuple[Method, Any, dict[str, Any]]:
        """(method that computes, its params, coefficients to report); a tuned method becomes its base with
        the chosen coefficients."""
        m = get_method(method)
        if m.multi:
            raise ValueError(f"method '{method}' merges a generalist with K experts: pass a list of experts to "
                             "merge_and_predict (or use tcube.methods.MultiMerger)")
        p = m.make_params(**params)
        if m.kind is not Kind.TUNED:
            return m, p, {k: getattr(p, k) for k in m.coefficients}
        chosen = self._tuned(method)
        base = get_method(m.base)
        return base, base.make_params(**{**dataclasses.asdict(p), **chosen}), dict(chosen)

    # -- static merges ------------------------------------------------------------------------------
    def static_model(self, method: str, **params) -> tuple[nn.Module, dict[str, Any]] | None:
        """(merged model, parameters used) of a method with one fixed merge; None for the others.

        Lets a caller notice that two methods merge to the same weights (e.g. weight_average and
        wise_ft at α = 0.5, bit for bit) and predict once.
        """
        if effective(method).kind is not Kind.STATIC:
            return None
        m, p, used = self._resolve(method, params)
        return self._static_model(m, p)[0], used

    def forget_static_merges(self) -> None:
        """Drop the static merges built so far (a model copy each); they are rebuilt when asked for again."""
        self._static.clear()

    def _static_model(self, m: Method, p: Any) -> tuple[nn.Module, torch.Tensor]:
        key = (m.name, p)  # params are frozen dataclasses: equal values, one merge
        if key not in self._static:
            state = m.fn(self.generalist.state_dict(), self.expert.state_dict(), p)
            model = copy.deepcopy(self.expert)
            model.load_state_dict(state)
            with self._autocast():
                head = zero_shot_head(model, self.tokenizer, self.classnames, self.templates)
            self._static[key] = (model.eval(), head)
        return self._static[key]

    def _probs(self, logits_gen, logits_exp, scaled: bool):
        t_gen, t_exp = 1.0, 1.0
        if scaled:
            if self.temperatures is None:
                raise ValueError("temperature_scaling=True needs temperatures fitted on validation data: "
                                 "call Merger.tune(val_images, val_labels) first")
            t_gen, t_exp = self.temperatures
        return (logits_gen.float() / t_gen).softmax(-1), (logits_exp.float() / t_exp).softmax(-1)

    # -- validation tuning (tuning.py) ---------------------------------------------------------------
    def tune(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict[str, dict]:
        """Fit both temperatures and choose every tuned method's coefficients on validation data."""
        return tune(self, images, labels, batch_size)

    def tuning_state(self) -> dict[str, Any]:
        """What tune() chose, as plain data (to cache it and skip tuning again)."""
        return {"tuned": self.tuned, "temperatures": self.temperatures, "temperature_report": self.temperature_report}

    def load_tuning_state(self, state: dict[str, Any]) -> None:
        self.tuned = dict(state.get("tuned") or {})
        temps = state.get("temperatures")
        self.temperatures = None if temps is None else (float(temps[0]), float(temps[1]))
        self.temperature_report = dict(state.get("temperature_report") or {})

    def _tuned(self, method: str) -> dict[str, Any]:
        if method not in self.tuned:
            raise ValueError(f"method '{method}' chooses its coefficients on validation data: call "
                             "Merger.tune(val_images, val_labels) first, or pass validation=(images, labels) "
                             "to merge_and_predict")
        return self.tuned[method]

def _plain_logits(model: nn.Module, head: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    img = F.normalize(model.encode_image(images).float(), dim=-1)
    with torch.autocast(img.device.type, enabled=False):  # the cosine logits stay fp32 under mixed precision
        logits = model.logit_scale.detach().float().exp() * img @ head.to(img.device).float().T
    bias = getattr(model, "logit_bias", None)
    return logits if bias is None else logits + bias.detach().float()
