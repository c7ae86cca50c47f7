"""On-disk cache of endpoint logits (and calibration choices), keyed by what produced them.

A sweep over γ / λ_min / λ_max / α changes only the merged pass: the generalist's and the expert's
logits on a given image set do not move, so they are computed once and read back afterwards
(`Merger.predict(..., endpoint_logits=(g, e))`).

Layout: ``<cache_dir>/<key[:2]>/<key>.safetensors`` (tensors ``generalist``, ``expert``; the key's
fields as JSON metadata) and ``<key>.json`` for small JSON entries. Every write is atomic (temp file
+ ``os.replace``), so a killed run leaves either a whole entry or none; an unreadable entry is a miss.

Models are named by content (`tcube.models.fingerprint`), not by spec or path.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write, tcube_home

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what a cached entry means changes




def default_cache_dir() -> Path:
    return tcube_home() / "cache" / "logits"


def cache_key(fields: dict[str, Any]) -> str:
    """Stable hash of JSON-able fields (order-independent)."""
    blob = json.dumps({"v": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]




class LogitCache:
    """Endpoint logits and small JSON entries under one folder; `enabled=False` makes every lookup a miss."""

    def __init__(self, folder: str | os.PathLike | None = None, *, enabled: bool = True):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()
        self.enabled = enabled
        self.hits = self.misses = 0

    def _path(self, key: str, suffix: str) -> Path:
        return self.folder / key[:2] / f"{key}{suffix}"

    def load_logits(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(key, ".safetensors")
        if not (self.enabled and path.is_file()):
            self.misses += self.enabled
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
            out = t["generalist"], t["expert"]
        except Exception as err:  # a damaged entry is recomputed, never trusted
            log.warning("ignoring unreadable cache entry %s (%s)", path, err)
            self.misses += 1
            return None
        self.hits += 1
        return out

    def save_logits(self, key: str, gen: torch.Tensor, exp: torch.Tensor, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from safetensors.torch import save_file

        tensors = {"generalist": gen.detach().float().cpu().contiguous(),
                   "expert": exp.detach().float().cpu().contiguous()}
        meta = {"fields": json.dumps(fields, sort_keys=True, default=str)}
        atomic_write(self._path(key, ".safetensors"), lambda tmp: save_file(tensors, tmp, metadata=meta))

    def load_json(self, key: str) -> Any | None:
        path = self._path(key, ".json")
        if not (self.enabled and path.is_file()):
            return None
        try:
            return json.loads(path.read_text())["value"]
        except Exception as err:
            log.warning("ignoring unreadable cache entry %s (%s)", path, err)
            return None

    def save_json(self, key: str, value: Any, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = json.dumps({"fields": fields, "value": value}, sort_keys=True, default=str)
        atomic_write(self._path(key, ".json"), lambda tmp: Path(tmp).write_text(text))
