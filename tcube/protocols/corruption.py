"""corruption: MedMNIST-C corruptions × severities of the expert's test set, plus the clean set.

Each corruption is applied to the uint8 image before the model's preprocessing, in the run's reading
(`protocol.reading`: "224" = MedMNIST-C's 224-px definition, "native" = the file's size), with the
dataset's corruption list and parameters, deterministically per (seed, image index). The clean set is in
the same reading: under "224" the same 224-px images uncorrupted, so clean and corrupted differ by the
corruption alone (not by the extra resampling, about 1-1.7 grey levels at 28 px).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.corruptions import DEFAULT_READING, N_SEVERITIES, check_reading, corruptions_for
from .base import Context, EvalSet, Skip

NAME = "corruption"


def corruption_list(ctx: Context) -> list[str]:
    available = corruptions_for(ctx.data.spec)
    chosen = ctx.options.get("corruptions")
    if chosen is None:
        return available
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    bad = [c for c in chosen if c not in available]
    if bad or not chosen:
        raise ValueError(f"protocol.corruptions {bad or chosen} do not apply to {ctx.data.name}; its corruption "
                         f"list is {available} (or protocol.corruptions=null for all)")
    return chosen


def severity_list(options: Mapping[str, Any]) -> list[int]:
    severities = options.get("severities") or list(range(1, N_SEVERITIES + 1))
    severities = [severities] if isinstance(severities, int) else list(severities)
    if any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= N_SEVERITIES for s in severities):
        raise ValueError(f"protocol.severities must be integers in 1..{N_SEVERITIES}, got {severities} "
                         "(e.g. protocol.severities=[1,3,5])")
    return sorted(set(severities))


def image_limit(options: Mapping[str, Any]) -> int | None:
    limit = options.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"protocol.limit must be a positive integer or null, got {limit!r} (e.g. protocol.limit=64)")
    return limit


def eval_sets(ctx: Context) -> tuple[list[EvalSet], list[Skip]]:
    limit = image_limit(ctx.options)  # the same seeded images in every cell, clean included
    reading = check_reading(ctx.options.get("reading") or DEFAULT_READING)
    sets = [EvalSet(NAME, ctx.data, limit=limit, reading=reading)]  # clean: corruption None, severity 0
    severities = severity_list(ctx.options)
    for name in corruption_list(ctx):
        sets += [EvalSet(NAME, ctx.data, corruption=name, severity=s, limit=limit, reading=reading)
                 for s in severities]
    return sets, []
