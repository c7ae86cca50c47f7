"""The endpoint store: the generalist's and the expert's logits on a view, computed once and cached on disk,
keyed by everything that produced them (model fingerprints, data file, view, prompts, preprocessing)."""
from __future__ import annotations

import time
from typing import Any

import torch
from tqdm import tqdm

from ..data.corruptions import DEFAULT_READING, severity_param
from ..data.files import file_md5
from ..io import json_safe
from ..methods.merger import Merger
from ..protocols.base import DataRef
from .cache import LogitCache, cache_key
from .distributed import Dist
from .views import DataViews


class EndpointStore:
    def __init__(self, cache: LogitCache, views: DataViews, *, batch_size: int, precision: str, dist: Dist,
                 progress: bool):
        self.cache, self.views, self.batch_size = cache, views, int(batch_size)
        self.precision, self.dist, self.progress = precision, dist, progress

    def view_fields(self, fingerprints: tuple[str, str], preprocess, data: DataRef, split: str, classes,
                    corruption, severity, limit: int | None = None, reading: str | None = None) -> dict:
        """What determines a view's endpoint logits (the cache key hashes it)."""
        descriptions, templates = data.prompts(classes)
        # the corruption protocol's views depend on the reading, corrupted ones on the parameter too (a data config
        # may name its own); other views keep the keys they had
        corrupted = {"corruption_reading": reading or DEFAULT_READING} if corruption or reading else {}
        if corruption:
            corrupted["corruption_param"] = json_safe(severity_param(corruption, severity, data.spec))
        return {"kind": "endpoint_logits", "generalist": fingerprints[0], "expert": fingerprints[1],
                "dataset": data.name, "file_md5": file_md5(data.path), "split": split,
                "classes": list(classes) if classes is not None else None, "corruption": corruption,
                "severity": severity, "descriptions": descriptions, "templates": templates,
                "limit": self.views.cap(limit), "seed": self.views.seed, "preprocess": repr(preprocess),
                **corrupted, **({"precision": self.precision} if self.precision != "fp32" else {})}  # fp32 keys unchanged

    @torch.no_grad()
    def logits(self, merger: Merger, images: torch.Tensor, fields: dict[str, Any], n_total: int):
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
