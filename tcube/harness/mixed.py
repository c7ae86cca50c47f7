"""The mixed protocol in the harness: one generalist, the run's K experts, one interleaved stream per view.

Planned beside the pair protocols' cells (`plan_mixed`), evaluated after them (`evaluate_mixed`), one row of
results.jsonl per (stream view, multi-expert method variant), resumable like every other cell. The stream's
dataset of each image goes only to the `oracle_route*` ceilings (MultiMerger.predict's `domain`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..methods.registry import Kind, get_method, methods
from ..protocols.base import Variant, make_variant
from ..protocols.mixed import MixedSet, mixed_sets, stream_order
from ..reporting.results import cell_key
from ..reporting.scores import balanced_accuracy, top1

log = logging.getLogger("tcube.eval")


@dataclass(frozen=True)
class MixedCell:
    view: MixedSet
    variant: Variant
    key: str
    identity: dict


def mixed_variants(s: dict[str, Any], n_experts: int) -> list[Variant]:
    """protocol.methods (null: every multi-expert method), `multi_expert` once per expert; parameters from
    method.params.<method> when the method config is `all`."""
    names = list(s["protocol"].get("methods") or [m.name for m in methods(multi=True)])
    per_method = dict(s["method"].get("params") or {}) if s["method"].get("name") == "all" else {}
    out = []
    for name in dict.fromkeys(["multi_generalist", *names]):  # the generalist heads every table
        m = get_method(name)
        if not m.multi:
            raise ValueError(f"protocol.methods: '{name}' merges a pair; the mixed protocol takes multi-expert "
                             f"methods: {[x.name for x in methods(multi=True)]}")
        params = dict(per_method.get(name) or {})
        if name == "multi_expert":
            out += [make_variant(name, {**params, "index": k}) for k in range(n_experts)]
        else:
            out.append(make_variant(name, params))
    return out


def plan_mixed(s: dict[str, Any], parts: Sequence[Any], expert_specs: Sequence[str]) -> list[MixedCell]:
    """Every cell of the mixed protocol; `parts` give the stream's datasets (one expert each)."""
    datasets = [p.primary for p in parts]
    zoo = parts[0].zoo if parts else None
    cells = []
    for view in mixed_sets(s["protocol"], datasets):
        for v in mixed_variants(s, len(datasets)):
            ident = mixed_identity(view, v, s, expert_specs, zoo.key if zoo is not None else None)
            cells.append(MixedCell(view, v, cell_key(ident), ident))
    return cells


def mixed_identity(view: MixedSet, v: Variant, s: dict[str, Any], experts: Sequence[str],
                   zoo_key: str | None) -> dict[str, Any]:
    engine = s["engine"]
    ident = {**view.describe(), "method": v.method, "config_params": v.kwargs, "engine": engine["name"],
             "engine_options": {k: engine[k] for k in sorted(engine) if k != "name" and engine[k] is not None},
             "seed": s["seed"], "limit": view.limit, "generalist": s["model"]["generalist"], "experts": list(experts),
             "prompts": cell_key({"prompts": [d.prompts() for d in view.datasets]})[:12]}
    if any(str(x).startswith("zoo:") for x in [s["model"]["generalist"], *experts]):
        ident["zoo_profile"] = s["model"]["zoo_profile"]
        if zoo_key is not None:
            ident["zoo_datasets"] = zoo_key
    if s["precision"] != "fp32":
        ident["precision"] = s["precision"]
    if v.kind is Kind.TUNED:
        ident["tuning_limit"] = s["tuning_limit"]
    return ident


# -- evaluation ---------------------------------------------------------------------------------------
class MixedRunner:
    """Loads the generalist and the K experts once, builds each stream view, scores each variant on it."""

    def __init__(self, s: dict[str, Any], parts: Sequence[Any], expert_specs: Sequence[str], device: str):
        from ..methods.multi_merger import MultiMerger
        from ..models import load_pair
        from .evaluate import resolve_model_spec
        from .views import DataViews

        self.s, self.datasets = s, [p.primary for p in parts]
        zoo = parts[0].zoo
        pair = load_pair(resolve_model_spec(s["model"]["generalist"], zoo),
                         [resolve_model_spec(x, p.zoo) for x, p in zip(expert_specs, parts)], device=device)
        self.preprocess = pair.preprocess
        tasks, templates = zip(*(d.prompts() for d in self.datasets))
        engine = s["engine"]
        self.merger = MultiMerger(pair.generalist, pair.experts, pair.tokenizer, list(tasks), list(templates),
                                  engine=engine["name"], precision=s["precision"])
        self.sizes = [len(t) for t in tasks]
        self.offsets = np.cumsum([0, *self.sizes[:-1]])
        self.views = DataViews(limit=s["limit"], seed=s["seed"])
        self.batch, self.progress = int(s["batch_size"]), bool(s["progress"])
        self._tuned = False
        log.info("mixed stream: %d experts over %s (%d union classes)", len(self.datasets),
                 [d.name for d in self.datasets], sum(self.sizes))

    def stream(self, view: MixedSet, split: str | None = None, limit: int | None = None):
        """(images [N, 3, H, W], union labels [N], dataset index [N]) of one stream view, interleaved."""
        parts = [self.views.load_view(d, split or view.data_split, None, self.preprocess, view.corruption, view.severity,
                                      limit if limit is not None else view.limit, reading=view.reading)
                 for d in self.datasets]
        domain, position = stream_order([len(y) for _, y in parts], self.s["seed"])
        images = torch.stack([parts[k][0][i] for k, i in zip(domain, position)])
        labels = torch.tensor([int(parts[k][1][i]) + int(self.offsets[k]) for k, i in zip(domain, position)])
        return images, labels, torch.as_tensor(domain)

    def _endpoints(self, images: torch.Tensor):
        gen, exps = [], []
        for x in tqdm(images.split(self.batch), desc="endpoints", leave=False, disable=not self.progress):
            gen.append(self.merger.generalist_logits(x).float().cpu())
            exps.append(self.merger.expert_logits(x).float().cpu())
        return torch.cat(gen), torch.cat(exps, dim=1)

    def tune(self) -> None:
        """Validation tuning of the `*_cal` multi-expert methods on the clean val stream (once per run)."""
        if not self._tuned:
            images, labels, _ = self.stream(MixedSet(tuple(self.datasets)), "val", self.s["tuning_limit"])
            log.info("mixed: tuned %s on %d val images", self.merger.tune(images, labels, self.batch), len(labels))
            self._tuned = True

    def run(self, view: MixedSet, variants: Sequence[Variant]):
        """Yield (variant, metrics) for each variant on one stream view."""
        images, labels, domain = self.stream(view)
        start = time.perf_counter()
        gen, exps = self._endpoints(images)
        endpoint_seconds = time.perf_counter() - start
        for v in variants:
            if v.kind is Kind.TUNED:
                self.tune()
            start = time.perf_counter()
            preds, weights = [], []
            for b in tqdm(range(0, len(labels), self.batch), desc=v.method, leave=False, disable=not self.progress):
                sl = slice(b, b + self.batch)
                out = self.merger.predict(images[sl], v.method, domain=domain[sl],
                                          endpoint_logits=(gen[sl], exps[:, sl]), **v.kwargs)
                preds.append(out.preds.cpu())
                weights.append(None if out.weights is None else out.weights.float().cpu())
                used = out.params
            seconds = time.perf_counter() - start
            yield v, self.metrics(torch.cat(preds), labels, domain, weights, used, seconds, endpoint_seconds, v)

    def metrics(self, preds, labels, domain, weights, used, seconds, endpoint_seconds, v: Variant) -> dict[str, Any]:
        names = [d.name for d in self.datasets]
        per = {n: top1(preds[domain == k], labels[domain == k]) for k, n in enumerate(names) if (domain == k).any()}
        w = torch.cat(weights) if weights and weights[0] is not None else None
        return {
            "n": int(labels.numel()), "num_classes": int(sum(self.sizes)),
            "top1": top1(preds, labels), "balanced_acc": balanced_accuracy(preds, labels, int(sum(self.sizes))),
            "per_dataset_top1": per, "macro_top1": float(np.mean(list(per.values()))),
            "lambda_mean": None if w is None else float((1 - w.sum(-1)).mean()),
            "weights_mean": None if w is None else [round(float(x), 6) for x in w.mean(0)],
            # share of images whose largest expert weight is their own dataset's expert
            "route_accuracy": None if w is None or v.kind is Kind.MULTI_PER_BATCH
            else float((w.argmax(-1) == domain).float().mean() * 100),
            "seconds": seconds, "endpoint_seconds": endpoint_seconds, "params": used,
            "correct": "".join("1" if c else "0" for c in (preds == labels).tolist()),
            "labels": labels.tolist(), "domain": "".join(map(str, domain.tolist())) if len(names) <= 10
            else domain.tolist(),
            "method_kind": v.kind.value if v.kind is not Kind.TUNED else [v.kind.value, "multi_static"],
        }


def evaluate_mixed(cells: Sequence[MixedCell], done: set[str], s: dict[str, Any], parts: Sequence[Any],
                   expert_specs: Sequence[str], emit, device: str) -> None:
    """Compute the pending mixed cells (grouped by view), calling emit(cell, metrics) as each finishes."""
    pending = [c for c in cells if c.key not in done]
    if not pending:
        return
    runner = MixedRunner(s, parts, expert_specs, device)
    by_view: dict[int, list[MixedCell]] = {}
    for c in pending:
        by_view.setdefault(id(c.view), []).append(c)
    for group in by_view.values():
        by_variant = {c.variant: c for c in group}
        for variant, metrics in runner.run(group[0].view, list(by_variant)):
            emit(by_variant[variant], metrics)
