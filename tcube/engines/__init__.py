"""Engines: naive (reference), batch, bucket and fused — one interface (base.Engine)."""
from __future__ import annotations

from torch import nn

from .base import Engine, merged_logits
from .fused import FusedCLIP, FusedEngine
from .heads import HEAD_MODES, TextHeads
from .merged_model import BatchEngine, BucketEngine, NaiveEngine

ENGINES: dict[str, type[Engine]] = {e.name: e for e in (NaiveEngine, BatchEngine, BucketEngine, FusedEngine)}


def make_engine(name: str, generalist: nn.Module, expert: nn.Module, **options) -> Engine:
    """Build an engine by name; options go to its constructor (e.g. num_buckets for bucket)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine '{name}'; choose one of {sorted(ENGINES)}")
    return ENGINES[name](generalist, expert, **options)


__all__ = ["ENGINES", "BatchEngine", "BucketEngine", "Engine", "FusedCLIP", "FusedEngine", "HEAD_MODES",
           "NaiveEngine", "TextHeads", "make_engine", "merged_logits"]
