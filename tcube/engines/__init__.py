"""Engines: naive (reference), batch, bucket and fused — one interface (base.Engine); multi-expert engines (multi.py)."""
from __future__ import annotations

from torch import nn

from .base import Engine, merged_logits
from .fused import FusedCLIP, FusedEngine, FusedModel
from .heads import HEAD_MODES, TextHeads
from .merged_model import BatchEngine, BucketEngine, NaiveEngine
from .multi import (
    MULTI_ENGINES,
    FusedMultiEngine,
    MultiEngine,
    MultiTextHeads,
    NaiveMultiEngine,
    make_multi_engine,
    multi_merged_logits,
)

ENGINES: dict[str, type[Engine]] = {e.name: e for e in (NaiveEngine, BatchEngine, BucketEngine, FusedEngine)}


def make_engine(name: str, generalist: nn.Module, expert: nn.Module, **options) -> Engine:
    """Build an engine by name; options go to its constructor (e.g. num_buckets for bucket)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine '{name}'; choose one of {sorted(ENGINES)}")
    return ENGINES[name](generalist, expert, **options)


__all__ = ["ENGINES", "MULTI_ENGINES", "BatchEngine", "BucketEngine", "Engine", "FusedCLIP", "FusedEngine",
           "FusedModel", "FusedMultiEngine", "HEAD_MODES", "MultiEngine", "MultiTextHeads", "NaiveEngine",
           "NaiveMultiEngine", "TextHeads", "make_engine", "make_multi_engine", "merged_logits",
           "multi_merged_logits"]
