"""One generalist and K experts behind one call: `MultiMerger.predict(images, method, **params)`.

The label space is the union of the experts' tasks (task k's classes are expert k's); no method is told
which task an image comes from, except the `oracle_route` ceilings (`needs_domain`), which get `domain`.
θ(x) = θ_gen + Σ_k w_k(x)·τ_k runs exactly per sample on a multi-expert engine (tcube.engines.multi).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..core import multi as rules
from ..engines.multi import MultiTextHeads, make_multi_engine, multi_merged_logits
from ..models.checkpoints import check_compatible
from ..models.heads import tokenize_tasks, union_head
from ..runtime.device import to_device
from ..runtime.precision import autocast, check_precision
from .merger import MergeOutput, _plain_logits, check_images
from .registry import Kind, Method, effective, get_method, methods


@dataclasses.dataclass(eq=False)
class MultiView:
    """What a multi-expert method sees for one batch. Model outputs are computed on first use, so a method that
    reads only the generalist (the router) costs no expert forward, and a static merge no endpoint forward."""

    generalist_fn: Callable[[], torch.Tensor]       # -> the generalist's logits [B, C]
    blocks: list[torch.Tensor]                      # union class indices of each expert's task
    experts_fn: Callable[[], torch.Tensor]          # -> logits of every expert [K, B, C]
    domain: torch.Tensor | None = None              # each image's task, only for methods that declare needs_domain

    @property
    def num_experts(self) -> int:
        return len(self.blocks)

    @cached_property
    def logits_gen(self) -> torch.Tensor:
        return self.generalist_fn()

    @cached_property
    def p_gen(self) -> torch.Tensor:
        return self.logits_gen.float().softmax(-1)

    @cached_property
    def logits_exps(self) -> torch.Tensor:
        return self.experts_fn()

    @cached_property
    def p_exps(self) -> torch.Tensor:
        return self.logits_exps.float().softmax(-1)

    @cached_property
    def task_js(self) -> torch.Tensor:
        """[B, K]: JS(p_gen ‖ p_k) within expert k's task (nats)."""
        return rules.task_js(self.p_gen, self.p_exps, self.blocks)

    @property
    def experts_ran(self) -> bool:
        return "logits_exps" in self.__dict__


class MultiMerger:
    """Merged inference for one generalist, K experts and the union of their tasks' classes.

    `tasks[k]`: expert k's class names (its task); `templates`: one template list for every task, or one per
    task (None: the defaults).
    """

    def __init__(self, generalist: nn.Module, experts: Sequence[nn.Module], tokenizer: Callable,
                 tasks: Sequence[Sequence[str]], templates: Sequence[str] | Sequence[Sequence[str]] | None = None, *,
                 engine: str = "fused", engine_options: dict[str, Any] | None = None, precision: str = "fp32"):
        experts = list(experts)
        if not experts:
            raise ValueError("experts is empty: give at least one expert fine-tuned from the generalist")
        if len(tasks) != len(experts):
            raise ValueError(f"{len(experts)} experts but {len(tasks)} tasks: give each expert its task's class "
                             "names (tasks[k] = expert k's classes)")
        for k, e in enumerate(experts):
            check_compatible(generalist.state_dict(), e.state_dict(), f"generalist and expert {k}")
        self.generalist, self.experts = generalist.eval(), [e.eval() for e in experts]
        self.device = next(generalist.parameters()).device
        self.precision = check_precision(precision, self.device)
        self.tokenizer, self.tasks = tokenizer, [list(t) for t in tasks]
        per_task = _per_task(templates, len(tasks))
        tokens, self.prompt_class = tokenize_tasks(tokenizer, self.tasks, per_task)
        self.tokens = tokens.to(self.device)
        sizes = [len(t) for t in self.tasks]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        self.blocks = rules.check_blocks([torch.arange(s, s + n) for s, n in zip(starts, sizes)], sum(sizes))
        with self._autocast():
            self.head_gen = union_head(generalist, self.tokens, self.prompt_class)
            self.heads_exp = [union_head(e, self.tokens, self.prompt_class) for e in self.experts]
        self.engine_name = engine
        self.engine = make_multi_engine(engine, generalist, self.experts, **(engine_options or {}))
        self.heads = MultiTextHeads(self.engine, self.tokens, self.prompt_class)
        self._static: dict[tuple, tuple[nn.Module, torch.Tensor]] = {}
        self.tuned: dict[str, dict[str, Any]] = {}

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def classnames(self) -> list[str]:
        return [c for t in self.tasks for c in t]

    def _autocast(self):
        return autocast(self.device, self.precision)

    # -- endpoints ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generalist_logits(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return _plain_logits(self.generalist, self.head_gen, to_device(images, self.device))

    @torch.no_grad()
    def expert_logits(self, images: torch.Tensor) -> torch.Tensor:
        """[K, B, C]: each expert alone over the union classes."""
        images = to_device(images, self.device)
        with self._autocast():
            return torch.stack([_plain_logits(e, h, images) for e, h in zip(self.experts, self.heads_exp)])

    # -- one call for every multi-expert method ---------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, method: str = "multi_t3", *, domain: torch.Tensor | None = None,
                endpoint_logits: tuple[torch.Tensor, torch.Tensor | None] | None = None, **params) -> MergeOutput:
        """Merged predictions for a batch. `domain` [B]: each image's task index, read only by the ceilings
        (`oracle_route*`). `endpoint_logits`: cached (generalist [B, C], experts [K, B, C] or None)."""
        m, p, used = self._resolve(method, params)
        check_images(images)
        images = to_device(images, self.device)
        gen, exps = endpoint_logits if endpoint_logits is not None else (None, None)
        view = MultiView((lambda: self.generalist_logits(images)) if gen is None else (lambda: gen.to(self.device)),
                         self.blocks, (lambda: self.expert_logits(images)) if exps is None
                         else (lambda: exps.to(self.device)), self._domain(m, domain, images.shape[0]))
        weights = None
        if m.kind in (Kind.MULTI_PER_SAMPLE, Kind.MULTI_PER_BATCH):
            weights = m.fn(view, p).float()
            if m.kind is Kind.MULTI_PER_BATCH:
                weights = weights.mean(0, keepdim=True).expand_as(weights).contiguous()
            with self._autocast():
                logits = multi_merged_logits(self.engine, images, weights, self.heads)
        elif m.kind is Kind.MULTI_OUTPUT:
            logits = m.fn(view, p)
        else:  # MULTI_STATIC: merged in fp32, outside autocast
            model, head = self._static_model(m, p)
            with self._autocast():
                logits = _plain_logits(model, head, images)
        logits = logits.float()
        probs = logits.softmax(-1)
        lam = 1.0 - weights.sum(-1) if weights is not None else torch.full((images.shape[0],), float("nan"),
                                                                             device=logits.device)
        js = view.task_js if view.experts_ran else torch.full((images.shape[0], self.num_experts), float("nan"),
                                                               device=logits.device)
        return MergeOutput(logits, probs, probs.argmax(-1), lam, js, used, None, weights)

    def _domain(self, m: Method, domain: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not m.needs_domain:
            return None  # never shown to a method that does not declare it
        if domain is None:
            raise ValueError(f"method '{m.name}' is a ceiling that reads each image's true task: pass "
                             "domain=<task index per image> (the mixed protocol does)")
        domain = torch.as_tensor(domain, device=self.device).long().reshape(-1)
        if domain.numel() != batch or int(domain.min()) < 0 or int(domain.max()) >= self.num_experts:
            raise ValueError(f"domain must hold one task index in [0, {self.num_experts}) per image")
        return domain

    def _resolve(self, method: str, params: dict[str, Any]) -> tuple[Method, Any, dict[str, Any]]:
        m = get_method(method)
        if not m.multi:
            raise ValueError(f"method '{method}' merges a generalist with one expert; with K experts use one of "
                             f"{[n.name for n in methods(multi=True)]} (or pass a single expert)")
        p = m.make_params(**params)
        if m.kind is not Kind.TUNED:
            return m, p, {k: getattr(p, k) for k in m.coefficients}
        if method not in self.tuned:
            raise ValueError(f"method '{method}' chooses its coefficients on validation data: call "
                             "MultiMerger.tune(val_images, val_labels) first")
        base = get_method(m.base)
        return base, base.make_params(**self.tuned[method]), dict(self.tuned[method])

    # -- static merges ------------------------------------------------------------------------------------
    def static_model(self, method: str, **params) -> tuple[nn.Module, dict[str, Any]] | None:
        """(merged model, parameters used) of a static multi-expert merge; None for the other methods."""
        if effective(method).kind is not Kind.MULTI_STATIC:
            return None
        m, p, used = self._resolve(method, params)
        return self._static_model(m, p)[0], used

    def _static_model(self, m: Method, p: Any) -> tuple[nn.Module, torch.Tensor]:
        key = (m.name, p)
        if key not in self._static:
            state = m.fn(self.generalist.state_dict(), [e.state_dict() for e in self.experts], p)
            model = copy.deepcopy(self.generalist)
            model.load_state_dict(state)
            with self._autocast():
                head = union_head(model, self.tokens, self.prompt_class)
            self._static[key] = (model.eval(), head)
        return self._static[key]

    # -- validation tuning ---------------------------------------------------------------------------------
    @torch.no_grad()
    def tune(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict[str, dict[str, Any]]:
        """Choose every tuned multi-expert method's coefficients by top-1 on validation images (union labels);
        the first best in grid order wins."""
        labels = labels.to(self.device)
        batches = list(zip(images.split(batch_size), labels.split(batch_size)))
        gen = [self.generalist_logits(x) for x, _ in batches]

        def accuracy(method: str, grid_point: dict) -> float:
            hits = sum(int((self.predict(x, method, endpoint_logits=(g, None), **grid_point).preds == y).sum())
                       for (x, y), g in zip(batches, gen))
            return hits / max(1, labels.numel())

        self.tuned = {}
        for m in methods(Kind.TUNED, multi=True):
            grid = m.grid(None)
            self.tuned[m.name] = max(grid, key=lambda g: (accuracy(m.base, g), -grid.index(g)))
            self._static.clear()  # the candidates' merges are not needed again
        return self.tuned


def _per_task(templates, n_tasks: int) -> list[Sequence[str] | None]:
    """One template list per task: None, one list shared by every task, or a list of lists."""
    if templates is None:
        return [None] * n_tasks
    templates = list(templates)
    if templates and all(isinstance(t, str) for t in templates):
        return [templates] * n_tasks
    if len(templates) != n_tasks:
        raise ValueError(f"templates: {len(templates)} lists for {n_tasks} tasks; give one list for every task "
                         "or one per task")
    return templates
