"""The cell runner: score every method variant on one EvalSet, from four small parts.

Per EvalSet: the data view (`views.DataViews`: class subset, seeded `limit` subset, corrupted in its
reading, preprocessed), the two endpoints' logits (`endpoints.EndpointStore`: computed once, cached), the
validation-tuned state if a variant needs one (`tuner.Tuner`, cached too), then each variant's merged
pass with `Merger.predict(..., endpoint_logits=(g, e))` batch by batch, and its row (`rows.cell_metrics`).
"""
from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from ..methods.merger import Merger
from ..models.fingerprint import model_fingerprint
from ..models.loading import ModelPair
from ..protocols.base import DataRef, EvalSet, Variant
from ..reporting.stats import majority_baseline
from ..runtime.device import pin
from .cache import LogitCache
from .distributed import SINGLE, Dist
from .endpoints import EndpointStore
from .rows import cell_metrics
from .tuner import Tuner
from .views import DataViews

log = logging.getLogger(__name__)


@dataclass
class PairInfo:
    """A loaded pair, the specs that named it and its weights' fingerprints."""

    pair: ModelPair
    specs: tuple[str, str]
    fingerprints: tuple[str, str]


class CellRunner:
    """Evaluates EvalSets; one instance per run (it keeps loaded arrays and a few Mergers)."""

    def __init__(self, pairs: Callable[[str], PairInfo], *, cache: LogitCache, engine: str,
                 engine_options: dict[str, Any] | None = None, text_heads: str = "adaptive", grid_size: int = 33,
                 batch_size: int = 64, limit: int | None = None, seed: int = 0, tuning_data: str = "expert",
                 tuning_limit: int | None = None, primary: DataRef | None = None, progress: bool = True,
                 max_mergers: int = 2, precision: str = "fp32", dist: Dist = SINGLE):
        self.pairs = pairs
        self.engine, self.engine_options = engine, dict(engine_options or {})
        self.text_heads, self.grid_size = text_heads, grid_size
        self.batch_size, self.progress = int(batch_size), progress and dist.is_main
        self.precision, self.dist = precision, dist  # dist: which block of each cell's batches is ours
        self.views = DataViews(limit=limit, seed=seed)
        self.endpoints = EndpointStore(cache, self.views, batch_size=batch_size, precision=precision, dist=dist,
                                       progress=self.progress)
        self.tuner = Tuner(self.endpoints, tuning_data=tuning_data, tuning_limit=tuning_limit, primary=primary,
                           engine_fields={"engine": engine, "engine_options": self.engine_options,
                                          "text_heads": text_heads, "grid_size": grid_size})
        self._mergers: OrderedDict[tuple, tuple[Merger, set]] = OrderedDict()
        self._max_mergers = max_mergers
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def merger_for(self, role: str, info: PairInfo, data: DataRef, classes) -> tuple[Merger, set]:
        descriptions, templates = data.prompts(classes)
        key = (role, data.name, tuple(descriptions), tuple(templates))
        if key in self._mergers:
            self._mergers.move_to_end(key)
            return self._mergers[key]
        p = info.pair
        merger = Merger(p.generalist, p.expert, p.tokenizer, descriptions, templates, engine=self.engine,
                        text_heads=self.text_heads, grid_size=self.grid_size, engine_options=self.engine_options,
                        precision=self.precision)
        self._mergers[key] = (merger, set())  # the set remembers which tuned state is loaded
        while len(self._mergers) > self._max_mergers:
            self._mergers.popitem(last=False)
        return self._mergers[key]

    def _weights_fingerprint(self, model: torch.nn.Module) -> str:
        if model not in self._fingerprints:  # weakly keyed: forgotten with the Merger that owns the model
            self._fingerprints[model] = model_fingerprint(model)
        return self._fingerprints[model]

    def _merged_pass(self, merger: Merger, variant: Variant, images: torch.Tensor, gen: torch.Tensor,
                     exp: torch.Tensor) -> tuple:
        """(preds, λ, JS, parameters used, seconds) of one method over this rank's block, gathered."""
        start = time.perf_counter()
        preds, lams, jss, used = [], [], [], {}
        batches = zip(images.split(self.batch_size), gen.split(self.batch_size),
                      exp.split(self.batch_size)) if len(images) else []
        for x, g, e in tqdm(batches, desc=variant.method, leave=False, disable=not self.progress,
                            total=-(-len(images) // self.batch_size)):
            out = merger.predict(x, variant.method, endpoint_logits=(g.to(merger.device), e.to(merger.device)),
                                 **variant.kwargs)
            preds.append(out.preds.cpu())
            lams.append(out.lambdas.float().cpu())
            jss.append(out.js.float().cpu())
            used = out.params
        preds, lams, jss, used, seconds = _merge_blocks(
            self.dist.gather((preds, lams, jss, used, time.perf_counter() - start)))
        return torch.cat(preds), torch.cat(lams), torch.cat(jss), used, seconds

    def run(self, es: EvalSet, variants: Sequence[Variant]) -> Iterator[tuple[Variant, dict[str, Any]]]:
        """Yield (variant, metrics) for each variant on `es`, as each finishes."""
        info = self.pairs(es.expert)
        merger, loaded = self.merger_for(es.expert, info, es.data, es.classes)
        n_total = self.views.view_size(es.data, "test", es.classes, es.limit)
        block = self.dist.batch_block(n_total, self.batch_size)  # everything when not distributed
        images, labels = self.views.load_view(es.data, "test", es.classes, info.pair.preprocess, es.corruption,
                                              es.severity, es.limit, positions=block, reading=es.reading)
        images = pin(images, merger.device)  # batches split from it stay pinned for non-blocking copies
        labels = torch.cat(self.dist.gather(labels))
        fields = self.endpoints.view_fields(info.fingerprints, info.pair.preprocess, es.data, "test", es.classes,
                                            es.corruption, es.severity, es.limit, reading=es.reading)
        gen, exp, endpoint_seconds, cache_hit = self.endpoints.logits(merger, images, fields, n_total)
        tuning = None
        majority = majority_baseline(labels.numpy())  # the floor to beat, from labels alone
        same_weights: dict[str, tuple] = {}  # merged weights' fingerprint -> (preds, λ, JS) already computed
        for variant in variants:
            if variant.needs_tuning:
                tuning = self.tuner.tune(es, info, merger, loaded, self.merger_for)
            static = merger.static_model(variant.method, **variant.kwargs)
            weights = self._weights_fingerprint(static[0]) if static else None
            shared_with = None
            if weights in same_weights:  # identical weights predict identically: skip the pass
                (preds, lam, js, shared_with), used, seconds = same_weights[weights], static[1], 0.0
            else:
                preds, lam, js, used, seconds = self._merged_pass(merger, variant, images, gen[block], exp[block])
                if weights is not None:
                    same_weights[weights] = (preds, lam, js, variant.method)
            yield variant, cell_metrics(variant, preds=preds, lam=lam, js=js, labels=labels, gen=gen, exp=exp,
                                        majority=majority, used=used, seconds=seconds,
                                        endpoint_seconds=endpoint_seconds, shared_with=shared_with,
                                        cache_hit=cache_hit, tuning=tuning, merger=merger,
                                        fingerprints=info.fingerprints)


def _merge_blocks(blocks: list[tuple]) -> tuple:
    """Rank-ordered (preds, λ, JS) batch lists concatenated; `params` of the last batch, as one process reports;
    the slowest rank's seconds."""
    preds = [p for b in blocks for p in b[0]]
    lams = [x for b in blocks for x in b[1]]
    jss = [x for b in blocks for x in b[2]]
    used = next((b[3] for b in reversed(blocks) if b[0]), {})
    return preds, lams, jss, used, max(b[4] for b in blocks)


