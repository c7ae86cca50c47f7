"""Evaluation protocols (in_domain, base_to_novel, corruption) and the shared cell runner."""
from __future__ import annotations

from . import base_to_novel, corruption, in_domain, mixed
from .base import (
    PROTOCOL_NAMES,
    Context,
    DataRef,
    EvalSet,
    Skip,
    Variant,
    check_engine,
    make_variant,
    resolve_data,
    spec_from_config,
)

PROTOCOLS = {m.NAME: m.eval_sets for m in (in_domain, base_to_novel, corruption)}


def protocol_names(name: str, options) -> list[str]:
    """`all` expands to its `protocols` list (default: the three pair protocols)."""
    if name == "all":
        names = list(options.get("protocols") or PROTOCOL_NAMES)
    else:
        names = [name]
    bad = [n for n in names if n not in PROTOCOLS and n != mixed.NAME]
    if bad:
        raise ValueError(f"unknown protocol {bad}; choose protocol=in_domain|base_to_novel|corruption|mixed|all")
    return names


def eval_sets(name: str, ctx: Context) -> tuple[list[EvalSet], list[Skip]]:
    """Every EvalSet of protocol `name` (or of each protocol of `all`), plus what was skipped and why. The mixed
    protocol scores one generalist with every expert of the run, so it has no per-expert sets (harness/mixed.py)."""
    sets, skips = [], []
    for n in protocol_names(name, ctx.options):
        if n == mixed.NAME:
            continue
        s, k = PROTOCOLS[n](ctx)
        sets += s
        skips += k
    return sets, skips


__all__ = ["PROTOCOLS", "PROTOCOL_NAMES", "Context", "DataRef", "EvalSet", "Skip",
           "Variant", "check_engine", "eval_sets", "make_variant", "protocol_names", "resolve_data",
           "spec_from_config"]
