"""Multi-expert engines: exact per-sample merging of one generalist with K experts.

θ(x_i) = θ_gen + Σ_k w_ik·(θ_k − θ_gen), with w [B, K] the weights on the experts (any finite values).
Every parameter of both towers is merged, logit_scale included (in log space, like any parameter).
`naive` builds each sample's model with `merging.combine` (the reference); `fused` runs one batched
forward with per-row coefficients (fused.FusedModel, base = generalist, others = experts) or, when a batch
has few distinct rows (hard routing gives at most K + 1, repeating across batches), one plain forward per
row through cached materialized merged models.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import ClassVar

import torch
from torch import nn

from ..core.merging import combine
from ..models.checkpoints import check_compatible
from ..models.heads import head_from_prompt_features
from .base import logits_at
from .fused import FusedModel
from .heads import TextHeads, encode_prompts
from .merged_model import plain_tokens, run_grouped


def row_key(row: torch.Tensor) -> tuple[str, bytes]:
    """Cache key of one row of weights: its dtype and exact bytes (equal keys, identical merged models)."""
    row = row.detach().contiguous().cpu()
    return str(row.dtype), row.view(torch.uint8).numpy().tobytes()


class LRU:
    """A small least-recently-used map; `get` refreshes an entry, `put` evicts the oldest beyond `size`."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"cache size must be ≥ 1, got {size}")
        self.size = size
        self.items: OrderedDict[Hashable, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: Hashable):
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key]

    def put(self, key: Hashable, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def pop_oldest(self):
        return self.items.popitem(last=False)[1]


class MergedModels:
    """Materialized merged models θ_gen + Σ_k w_k·τ_k by row of weights, at most `size` kept (LRU).

    Each is a deep copy of the generalist loaded with `merging.combine`; an evicted one is reloaded for the
    next row instead of copying the generalist again. `loads` counts the merges done.
    """

    def __init__(self, generalist: nn.Module, experts: Sequence[nn.Module], size: int):
        self.generalist = generalist
        self.gen_state, self.expert_states = generalist.state_dict(), [e.state_dict() for e in experts]
        self.cache = LRU(size)
        self.loads = 0

    def has(self, row: torch.Tensor) -> bool:
        return row_key(row) in self.cache.items

    def __call__(self, row: torch.Tensor) -> nn.Module:
        key = row_key(row)
        model = self.cache.get(key)
        if model is None:
            full = len(self.cache) >= self.cache.size
            model = self.cache.pop_oldest() if full else copy.deepcopy(self.generalist).eval()
            model.load_state_dict(combine(self.gen_state, self.expert_states, row.tolist()))
            self.cache.put(key, model)
            self.loads += 1
        return model


class MultiEngine:
    """One generalist, K experts; w [R, K] = per-row weights on the experts. Engines differ in cost, never in meaning."""

    name: ClassVar[str] = ""

    def __init__(self, generalist: nn.Module, experts: Sequence[nn.Module]):
        experts = list(experts)
        if not experts:
            raise ValueError("a multi-expert engine needs at least one expert")
        reference = generalist.state_dict()
        for k, expert in enumerate(experts):
            check_compatible(reference, expert.state_dict(), f"generalist and expert {k}")
        self.generalist, self.experts = generalist.eval(), [e.eval() for e in experts]

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def check_weights(self, w: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """w as a floating [rows, K] tensor; ValueError for another shape or a non-finite weight."""
        w = torch.as_tensor(w)
        k = self.num_experts
        if w.ndim != 2 or w.shape[1] != k or (rows is not None and w.shape[0] != rows):
            raise ValueError(f"weights on the experts must be [B, K] = [{'B' if rows is None else rows}, {k}], "
                             f"got shape {tuple(w.shape)}")
        w = w if w.is_floating_point() else w.float()
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights on the experts must be finite (got NaN or ±inf)")
        return w

    def image_features(self, images: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [B, E]
        raise NotImplementedError

    def text_features(self, tokens: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [R, E]
        raise NotImplementedError

    def logit_scale(self, w: torch.Tensor) -> torch.Tensor:
        """[B] exp of the merged log-scale (merged in log space like any parameter)."""
        return self._merged_scalar("logit_scale", w).exp()

    def logit_bias(self, w: torch.Tensor) -> torch.Tensor | None:
        if getattr(self.generalist, "logit_bias", None) is None:
            return None
        return self._merged_scalar("logit_bias", w)

    def _merged_scalar(self, name: str, w: torch.Tensor) -> torch.Tensor:
        w = self.check_weights(w).float()
        gen = getattr(self.generalist, name).detach().float().reshape(-1)[0]
        tau = torch.stack([getattr(e, name).detach().float().reshape(-1)[0] for e in self.experts]) - gen
        return gen + w @ tau.to(w.device)


class NaiveMultiEngine(MultiEngine):
    """The reference oracle: build θ(x_i) with merging.combine into a work copy and run it on x_i alone."""

    name = "naive"

    def __init__(self, generalist: nn.Module, experts: Sequence[nn.Module]):
        super().__init__(generalist, experts)
        self.models = MergedModels(self.generalist, self.experts, size=1)  # one work copy, reloaded per new row

    @torch.no_grad()
    def image_features(self, images, w):
        w = self.check_weights(w, images.shape[0])
        return torch.cat([self.models(w[i]).encode_image(images[i:i + 1]) for i in range(images.shape[0])])

    def text_features(self, tokens, w):
        w = self.check_weights(w, tokens.shape[0])
        return run_grouped(self.models, "encode_text", plain_tokens(self.generalist, tokens), w)


class FusedMultiEngine(MultiEngine):
    """Exact per-sample merging: one fused forward with per-row coefficients, or cached merged models.

    A batch with at most `materialize_below` distinct rows of w, each repeated in the batch or already merged,
    runs each group of identical rows through a materialized merged model (one plain forward per group),
    `cache_models` of them kept (LRU, default K + 1:
    hard routing's one-hot rows and the generalist), each a full copy of the model in memory. Other batches
    run the fused forward (fused.FusedModel; `fused_options` go to it, e.g. chunked_min_tokens).
    """

    name = "fused"

    def __init__(self, generalist: nn.Module, experts: Sequence[nn.Module], *, materialize_below: int = 8,
                 cache_models: int | None = None, **fused_options):
        super().__init__(generalist, experts)
        if materialize_below < 0:
            raise ValueError(f"materialize_below must be ≥ 0, got {materialize_below}")
        self.materialize_below = materialize_below
        self.fused = FusedModel(self.generalist, self.experts, **fused_options)
        size = self.num_experts + 1 if cache_models is None else cache_models
        self.models = MergedModels(self.generalist, self.experts, size)

    def image_features(self, images, w):
        return self._features("encode_image", images, images, w)

    def text_features(self, tokens, w):  # each path drops the padding where that is exact for it
        return self._features("encode_text", tokens, plain_tokens(self.generalist, tokens), w)

    def _features(self, encode: str, inputs: torch.Tensor, plain_inputs: torch.Tensor, w: torch.Tensor):
        w = self.check_weights(w, inputs.shape[0])
        if self._materialize(w):
            return run_grouped(self.models, encode, plain_inputs, w)
        return getattr(self.fused, encode)(inputs, w)

    def _materialize(self, w: torch.Tensor) -> bool:
        """Few distinct rows, each either already merged or shared by several rows: a merge (a pass over K + 1
        models' weights) pays only when it is reused; a batch of distinct soft rows runs fused instead, and so
        does a batch sharing one new row (the fused ops then merge each weight once, as a copy would)."""
        rows, counts = torch.unique(w, dim=0, return_counts=True)
        if rows.shape[0] > self.materialize_below:
            return False
        if rows.shape[0] == 1 and not self.models.has(rows[0]):
            return False  # one new row (a batch-wise rule): the fused ops merge each weight once, without a copy
        return all(int(c) > 1 or self.models.has(row) for row, c in zip(rows, counts))


MULTI_ENGINES: dict[str, type[MultiEngine]] = {e.name: e for e in (NaiveMultiEngine, FusedMultiEngine)}


def make_multi_engine(name: str, generalist: nn.Module, experts: Sequence[nn.Module], **options) -> MultiEngine:
    """Build a multi-expert engine by name; options go to its constructor (e.g. materialize_below for fused)."""
    if name not in MULTI_ENGINES:
        raise ValueError(f"unknown multi-expert engine '{name}'; choose one of {sorted(MULTI_ENGINES)}")
    return MULTI_ENGINES[name](generalist, experts, **options)


def multi_merged_logits(engine: MultiEngine, images: torch.Tensor, w: torch.Tensor, heads) -> torch.Tensor:
    """Logits [B, C] of each sample's merged model: exp(scale(w_i))·normalize(img_i)·head_iᵀ (+ merged bias).

    heads(w, img) -> [B, C, E], e.g. MultiTextHeads.
    """
    return logits_at(engine, images, engine.check_weights(w, images.shape[0]), heads)


class _Ray:
    """The multi-expert engine along one expert's direction as a pair engine: λ ↦ w = (1 − λ)·e_k (λ is the weight
    on the generalist), so the pair's adaptive heads interpolate head(w) in one variable."""

    def __init__(self, engine: MultiEngine, k: int):
        self.engine, self.k = engine, k

    def _w(self, lam: torch.Tensor) -> torch.Tensor:
        w = lam.new_zeros(lam.shape[0], self.engine.num_experts)
        w[:, self.k] = 1 - lam
        return w

    def text_features(self, tokens, lam):
        return self.engine.text_features(tokens, self._w(lam))

    def logit_scale(self, lam):
        return self.engine.logit_scale(self._w(lam))


class MultiTextHeads:
    """Heads [B, C, E] of each row's merged model: `heads(w, images=None)`, within the engines' 1e-4 contract.

    Rows with one nonzero weight (each image merged with one expert: hard routing, the oracle, T^3 with a hard
    task guess) lie on that expert's ray, w = s·e_k; there head(w) is the pair's head at λ = 1 − s, and the pair's
    adaptive heads (heads.TextHeads: error measured on the batch's own image features, ≤ 5e-5 in logits) serve
    it, one per expert, kept across batches (`rays=False`: exact instead). Other rows are encoded exactly:
    one encode of the prompts per distinct row of w, kept in an LRU cache (`cache_size` heads) keyed by the
    row's exact bytes, so repeated rows (hard routing: K distinct rows) are encoded once. tokens [P, L] are
    the prompts of a label space whose classes may have different numbers of templates: `prompt_class` [P]
    is the class (0 … C − 1) of each prompt row (models.heads.tokenize_tasks gives both); a class head is
    normalize(mean over its prompts of normalize(text features)). `stats` counts rows encoded and rows served
    from the cache.
    """

    def __init__(self, engine: MultiEngine, tokens: torch.Tensor, prompt_class: torch.Tensor, *,
                 cache_size: int = 64, chunk_rows: int = 512, rays: bool = True):
        prompt_class = torch.as_tensor(prompt_class, dtype=torch.long, device=tokens.device)
        if prompt_class.ndim != 1 or prompt_class.shape[0] != tokens.shape[0] or not prompt_class.numel():
            raise ValueError(f"prompt_class must give one class per prompt row: [{tokens.shape[0]}] (≥ 1 prompt), "
                             f"got shape {tuple(prompt_class.shape)}")
        if int(prompt_class.min()) < 0:
            raise ValueError("prompt_class values must be class indices ≥ 0")
        empty = (torch.bincount(prompt_class) == 0).nonzero().flatten().tolist()
        if empty:  # a class index no prompt has: its head would be 0/0
            raise ValueError(f"classes without any prompt: {empty[:10]}")
        self.engine, self.tokens, self.prompt_class = engine, tokens, prompt_class
        self.chunk_rows = chunk_rows
        self._cache = LRU(cache_size)
        self.rays = [TextHeads(_Ray(engine, k), tokens, int(prompt_class.max()) + 1, 1, prompt_class=prompt_class,
                               chunk_rows=chunk_rows) for k in range(engine.num_experts)] if rays else None
        self.stats = {"encodes": 0, "cache_hits": 0, "ray_rows": 0}

    def __call__(self, w: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Heads at each row of w [B, K]; `images` [B, E] (the rows' image features) lets the ray heads measure
        their error where they are used."""
        w = self.engine.check_weights(w)
        on_ray = (w != 0).sum(-1) == 1
        if self.rays is None or images is None or not bool(on_ray.any()):
            return self.exact(w)
        out = None
        k_of = w.abs().argmax(-1)
        for k in k_of[on_ray].unique().tolist():
            index = (on_ray & (k_of == k)).nonzero().squeeze(1)
            heads = self.rays[k](1 - w[index, k], images[index])
            out = heads.new_empty(w.shape[0], *heads.shape[1:]) if out is None else out
            out[index] = heads.to(out.dtype)
        self.stats["ray_rows"] += int(on_ray.sum())
        if not bool(on_ray.all()):
            rest = (~on_ray).nonzero().squeeze(1)
            out[rest] = self.exact(w[rest]).to(out.dtype)
        return out

    def exact(self, w: torch.Tensor) -> torch.Tensor:
        """Exact heads: one encode per distinct row (LRU-cached)."""
        rows, inverse = torch.unique(w, dim=0, return_inverse=True)
        keys = [row_key(r) for r in rows]
        found = [self._cache.get(k) for k in keys]
        missing = [i for i, head in enumerate(found) if head is None]
        self.stats["cache_hits"] += len(keys) - len(missing)
        if missing:
            for i, head in zip(missing, self.encode(rows[missing])):
                found[i] = head
                self._cache.put(keys[i], head)
        return torch.stack(found)[inverse]

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """Heads [U, C, E] of the merged models at each row of weights [U, K]."""
        self.stats["encodes"] += rows.shape[0]
        feats = encode_prompts(self.engine, self.tokens, rows, self.chunk_rows)
        return head_from_prompt_features(feats, self.prompt_class)
