"""The shared cell runner: score every method variant on one EvalSet.

Per EvalSet: select the images (class subset, seeded `limit` subset), corrupt them at native size,
preprocess with the pair's open_clip transform, get the two endpoints' logits (from the cache, or
one pass of each model, then cached), tune on validation data if a variant needs it (cached too), and run each
variant's merged pass with `Merger.predict(..., endpoint_logits=(g, e))` batch by batch.
"""
from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..core.temperature import temperature_report
from ..data.corruptions import corrupt
from ..data.files import file_md5
from ..data.npz import load_npz_split, select_view
from ..io import json_safe
from ..methods.merger import Merger
from ..methods.registry import Kind, effective, method_names
from ..methods.tuning import TUNING_VERSION
from ..models.loading import ModelPair
from ..protocols.base import DataRef, EvalSet, Variant, cap_limit
from ..reporting.diagnostics import routing_diagnostics
from ..reporting.scores import balanced_accuracy, top1
from ..reporting.stats import majority_baseline
from ..runtime.device import pin
from .cache import LogitCache, cache_key, model_fingerprint
from .distributed import SINGLE, Dist

log = logging.getLogger(__name__)



@dataclass
class PairInfo:
    """A loaded pair, the specs that named it and its weights' fingerprints."""

    pair: ModelPair
    specs: tuple[str, str]
    fingerprints: tuple[str, str]


def _tuning_fingerprint() -> str:
    """Tuned states depend on the tuning code and on which methods are tuned: both go into the cache key."""
    return cache_key({"tuning_version": TUNING_VERSION, "tuned": method_names(Kind.TUNED)})


class CellRunner:
    """Evaluates EvalSets; one instance per run (it keeps loaded arrays and a few Mergers)."""

    def __init__(self, pairs: Callable[[str], PairInfo], *, cache: LogitCache, engine: str,
                 engine_options: dict[str, Any] | None = None, text_heads: str = "exact", grid_size: int = 33,
                 batch_size: int = 64, limit: int | None = None, seed: int = 0, tuning_data: str = "expert",
                 tuning_limit: int | None = None, primary: DataRef | None = None, progress: bool = True,
                 max_mergers: int = 2, precision: str = "fp32", dist: Dist = SINGLE):
        if tuning_data not in ("own", "expert"):
            raise ValueError(f"tuning_data must be 'own' or 'expert', got {tuning_data!r}")
        self.pairs, self.cache = pairs, cache
        self.engine, self.engine_options = engine, dict(engine_options or {})
        self.text_heads, self.grid_size = text_heads, grid_size
        self.batch_size, self.limit, self.seed = int(batch_size), limit, int(seed)
        self.tuning_limit = tuning_limit
        self.tuning_data, self.primary, self.progress = tuning_data, primary, progress and dist.is_main
        self.precision, self.dist = precision, dist  # dist: which block of each cell's batches is ours
        self._arrays: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._mergers: OrderedDict[tuple, tuple[Merger, set]] = OrderedDict()
        self._max_mergers = max_mergers
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- data -------------------------------------------------------------------------------------
    def _split_arrays(self, data: DataRef, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = (str(data.path), split)
        if key not in self._arrays:
            self._arrays[key] = load_npz_split(data.path, split)
        return self._arrays[key]

    def cap(self, limit: int | None) -> int | None:
        """The run-wide `limit` combined with a narrower one (a protocol's, or calibration's)."""
        return cap_limit(self.limit, limit)

    def load_view(self, data: DataRef, split: str, classes: Sequence[int] | None, preprocess: Callable,
                  corruption: str | None = None, severity: int = 0, limit: int | None = None,
                  positions: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images [N, 3, H, W] and labels in the label space of `classes` (at most cap(limit)).

        `positions` keeps only that block of the selected images (a data-parallel rank's share).
        """
        images, labels = self._split_arrays(data, split)
        n_classes = data.spec.num_classes
        if labels.max(initial=0) >= n_classes:
            raise ValueError(f"{data.path} has label {labels.max()} but {data.name} lists {n_classes} classes "
                             "(data.classes); give one class name per label")
        idx, y = select_view(labels, classes, self.cap(limit), self.seed)
        if len(idx) == 0:
            raise ValueError(f"{data.name} {split}: no images of classes {classes}")
        if positions is not None:
            idx, y = idx[positions], y[positions]
        out = []
        for i in idx:
            img = images[i]
            if corruption is not None:  # native size, before preprocessing; seeded by the image's own index
                img = corrupt(img, corruption, severity, seed=self.seed, index=int(i), dataset=data.spec)
            out.append(preprocess(Image.fromarray(img).convert("RGB")))
        return (torch.stack(out) if out else torch.empty(0)), torch.as_tensor(y.reshape(-1), dtype=torch.long)

    def view_size(self, data: DataRef, split: str, classes: Sequence[int] | None, limit: int | None = None) -> int:
        """How many images load_view selects (without loading them)."""
        return len(select_view(self._split_arrays(data, split)[1], classes, self.cap(limit), self.seed)[0])

    # -- models -----------------------------------------------------------------------------------
    def _merger(self, role: str, info: PairInfo, data: DataRef, classes) -> tuple[Merger, set]:
        descriptions, templates = data.prompts(classes)
        key = (role, data.name, tuple(descriptions), tuple(templates))
        if key in self._mergers:
            self._mergers.move_to_end(key)
            return self._mergers[key]
        p = info.pair
        merger = Merger(p.generalist, p.expert, p.tokenizer, descriptions, templates, engine=self.engine,
                        text_heads=self.text_heads, grid_size=self.grid_size, engine_options=self.engine_options,
                        precision=self.precision)
        self._mergers[key] = (merger, set())  # the set remembers which calibration state is loaded
        while len(self._mergers) > self._max_mergers:
            self._mergers.popitem(last=False)
        return self._mergers[key]

    def _view_fields(self, info: PairInfo, data: DataRef, split: str, classes, corruption, severity,
                     limit: int | None = None) -> dict:
        descriptions, templates = data.prompts(classes)
        return {"kind": "endpoint_logits", "generalist": info.fingerprints[0], "expert": info.fingerprints[1],
                "dataset": data.name, "file_md5": file_md5(data.path), "split": split,
                "classes": list(classes) if classes is not None else None, "corruption": corruption,
                "severity": severity, "descriptions": descriptions, "templates": templates, "limit": self.cap(limit),
                "seed": self.seed, "preprocess": repr(info.pair.preprocess),
                **({"precision": self.precision} if self.precision != "fp32" else {})}  # fp32 keys unchanged

    @torch.no_grad()
    def _endpoints(self, merger: Merger, images: torch.Tensor, fields: dict, n_total: int):
        """(generalist logits, expert logits, seconds spent computing them, cache hit?) on CPU, all n_total rows.

        `images` is this rank's block; the blocks' logits are gathered. Every rank must agree on the
        cache hit (else some would wait in the gather forever), and only rank 0 writes the file.
        """
        key = cache_key(fields)
        hit = self.cache.load_logits(key)
        if self.dist.all_true(hit is not None and hit[0].shape[0] == n_total):
            return hit[0], hit[1], 0.0, True
        start = time.perf_counter()
        gen, exp = [], []
        batches = images.split(self.batch_size) if len(images) else []
        for x in tqdm(batches, desc="endpoints", leave=False, disable=not self.progress):
            g, e = merger.endpoint_logits(x)
            gen.append(g.float().cpu())
            exp.append(e.float().cpu())
        blocks = self.dist.gather((gen, exp))
        gen = torch.cat([g for rank_gen, _ in blocks for g in rank_gen])
        exp = torch.cat([e for _, rank_exp in blocks for e in rank_exp])
        seconds = max(self.dist.gather(time.perf_counter() - start))
        if self.dist.is_main:
            self.cache.save_logits(key, gen, exp, fields)
        return gen, exp, seconds, False

    def _tune(self, es: EvalSet, info: PairInfo, merger: Merger, loaded: set) -> dict[str, Any]:
        """Load (or compute and cache) the validation-tuned state into `merger`; never touches test data.

        `calibration` (expert | own) is the tuning data source: the expert's val split or the evaluated set's.
        """
        data, classes = es.data, es.classes
        if self.tuning_data == "expert" and self.primary is not None:
            data = self.primary
            if es.expert == "expert_base":  # the base-class expert knows the base classes only
                from ..data.splits import base_novel_classes

                classes = tuple(base_novel_classes(data.spec.num_classes)[0])
            elif data.name != es.data.name:
                classes = None
        fields = {**self._view_fields(info, data, "val", classes, None, 0, self.tuning_limit), "kind": "tuning",
                  "engine": self.engine, "engine_options": self.engine_options, "text_heads": self.text_heads,
                  "grid_size": self.grid_size, "code": _tuning_fingerprint()}
        key = cache_key(fields)
        if key in loaded and not self.dist.active:
            return fields

        def choose() -> dict[str, Any]:  # on rank 0 only: the other ranks receive its choice
            if key in loaded:
                return merger.tuning_state()
            state = self.cache.load_json(key)
            if state is None:
                images, labels = self.load_view(data, "val", classes, info.pair.preprocess,
                                                limit=self.tuning_limit)
                same_space = data.name == es.data.name and classes == es.classes
                source = merger if same_space else self._merger(es.expert, info, data, classes)[0]
                source.tune(images, labels, batch_size=self.batch_size)
                state = source.tuning_state()
                self.cache.save_json(key, json_safe(state), fields)
            return state

        merger.load_tuning_state(self.dist.from_main(choose))
        loaded.clear()
        loaded.add(key)
        return fields

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

    # -- the cells --------------------------------------------------------------------------------
    def run(self, es: EvalSet, variants: Sequence[Variant]) -> Iterator[tuple[Variant, dict[str, Any]]]:
        """Yield (variant, metrics) for each variant on `es`, as each finishes."""
        info = self.pairs(es.expert)
        merger, loaded = self._merger(es.expert, info, es.data, es.classes)
        n_total = self.view_size(es.data, "test", es.classes, es.limit)
        block = self.dist.batch_block(n_total, self.batch_size)  # everything when not distributed
        images, labels = self.load_view(es.data, "test", es.classes, info.pair.preprocess, es.corruption,
                                        es.severity, es.limit, positions=block)
        images = pin(images, merger.device)  # batches split from it stay pinned for non-blocking copies
        labels = torch.cat(self.dist.gather(labels))
        fields = self._view_fields(info, es.data, "test", es.classes, es.corruption, es.severity, es.limit)
        gen, exp, endpoint_seconds, cache_hit = self._endpoints(merger, images, fields, n_total)
        n_classes = gen.shape[1]
        calibration = None
        # per eval set, from labels and endpoints only: the floor to beat and who is right where (diagnostics)
        majority = majority_baseline(labels.numpy())
        gen_ok, exp_ok = (gen.argmax(-1) == labels).numpy(), (exp.argmax(-1) == labels).numpy()
        same_weights: dict[str, tuple] = {}  # merged weights' fingerprint -> (preds, λ, JS) already computed
        for variant in variants:
            if variant.needs_tuning:
                calibration = self._tune(es, info, merger, loaded)
            static = merger.static_model(variant.method, **variant.kwargs)
            weights = self._weights_fingerprint(static[0]) if static else None
            shared_with = None
            if weights in same_weights:  # identical weights predict identically: skip the pass
                (preds, lam, js, shared_with), used, seconds = same_weights[weights], static[1], 0.0
            else:
                preds, lam, js, used, seconds = self._merged_pass(merger, variant, images, gen[block], exp[block])
                if weights is not None:
                    same_weights[weights] = (preds, lam, js, variant.method)
            finite = lam[torch.isfinite(lam)]
            metrics = {
                "n": int(labels.numel()), "num_classes": int(n_classes),
                "top1": top1(preds, labels), "balanced_acc": balanced_accuracy(preds, labels, n_classes),
                "lambda_mean": float(finite.mean()) if finite.numel() else None,
                "lambda_std": float(finite.std(unbiased=False)) if finite.numel() else None,
                "js_mean": float(js.mean()),
                "majority_top1": majority,
                "diagnostics": routing_diagnostics(js.numpy(), lam.numpy(), gen_ok, exp_ok),
                "seconds": seconds, "endpoint_seconds": endpoint_seconds,
                "same_weights_as": shared_with,  # a method merging to bit-identical weights ran the pass
                "cached_endpoints": cache_hit,
                "params": json_safe(used),
                "calibration": ({"dataset": calibration["dataset"], "split": "val", "classes": calibration["classes"],
                                 **{k: json_safe(getattr(merger, k)) for k in ("temperatures",)
                                    if getattr(merger, k, None) is not None},
                                 "ece": _ece(merger, gen, exp, labels)}
                                if variant.needs_tuning else None),
                "fingerprints": list(info.fingerprints),
                "correct": "".join("1" if c else "0" for c in (preds == labels).tolist()),
                # per image, so reports can bootstrap and diagnose after the fact (tcube.reporting.stats, tcube.reporting.diagnostics)
                "labels": _compact_labels(labels, n_classes),
                "js_per_image": [round(v, 6) for v in js.tolist()],
                "lambda_per_image": ([round(v, 6) for v in lam.tolist()]
                                     if effective(variant.method).kind in (Kind.PER_SAMPLE, Kind.PER_BATCH) else None),
                # so readers of results need no tcube.methods; a tuned method also names how it predicts
                "method_kind": ([variant.kind.value, effective(variant.method).kind.value]
                                if variant.kind is Kind.TUNED else variant.kind.value),
            }
            yield variant, metrics


def _compact_labels(labels: torch.Tensor, n_classes: int) -> str | list[int]:
    """One digit per image when the classes fit in digits (as compact as `correct`), else a list."""
    values = labels.tolist()
    return "".join(map(str, values)) if n_classes <= 10 else values


def _ece(merger: Merger, gen: torch.Tensor, exp: torch.Tensor, labels: torch.Tensor) -> dict[str, Any] | None:
    """ECE before/after temperature scaling: on val (where T was fitted) and on this eval set's test images."""
    if merger.temperatures is None:
        return None
    temps = dict(zip(("generalist", "expert"), merger.temperatures))
    return {"val": json_safe(merger.temperature_report),
            "test": temperature_report({"generalist": gen, "expert": exp}, labels, temps)}


def _merge_blocks(blocks: list[tuple]) -> tuple:
    """Rank-ordered (preds, λ, JS) batch lists concatenated; `params` of the last batch, as one process reports;
    the slowest rank's seconds."""
    preds = [p for b in blocks for p in b[0]]
    lams = [x for b in blocks for x in b[1]]
    jss = [x for b in blocks for x in b[2]]
    used = next((b[3] for b in reversed(blocks) if b[0]), {})
    return preds, lams, jss, used, max(b[4] for b in blocks)


