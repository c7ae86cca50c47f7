"""Bootstrap intervals and paired differences for every score of a report (rows in, plain dicts out).

Resampling unit: the test images of one pool = (dataset, class subset, n). Every row scored on a pool
(each method, each corruption and severity, each expert that evaluates that dataset) is scored on the
*same* resamples, so a difference between two methods is a paired difference, and a score averaged
over modalities is bootstrapped by resampling within each dataset independently.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .scores import Score, averaged, cell_id, defined, scores_for
from .stats import (
    bootstrap_means,
    excludes_zero,
    percentile_interval,
    pool_seed,
    resample_weights,
)

MAJORITY = "majority class"


def references(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """label -> method of the comparisons every report makes: WiSE-FT at α = 0.5, the expert, the generalist.

    WiSE-FT is a reference only when it ran at α = 0.5 (another α would compare against a different model).
    """
    out = {}
    wise = [r for r in rows if r.get("method") == "wise_ft"]
    if wise and all((r.get("params") or r.get("config_params") or {}).get("alpha", 0.5) == 0.5 for r in wise):
        out["wise_ft (α=0.5)"] = "wise_ft"
    return {**out, "expert": "expert", "generalist": "generalist"}


def _bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")


def cell_values(rows: Sequence[Mapping[str, Any]], *, n_boot: int, seed: int) -> tuple[dict, dict, dict]:
    """(points, draws, majority): method -> cell -> top-1; draws are [n_boot] arrays, for rows with `correct`."""
    points: dict[str, dict] = defaultdict(dict)
    draws: dict[str, dict] = defaultdict(dict)
    majority: dict[str, dict] = {MAJORITY: {}}
    pools: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        points[r["method"]][cell_id(r)] = float(r["top1"])
        if r.get("majority_top1") is not None:
            majority[MAJORITY][cell_id(r)] = float(r["majority_top1"])
        if r.get("correct"):
            pools[(r.get("dataset"), r.get("subset"), len(r["correct"]))].append(r)
    for pool, prows in pools.items():
        weights = resample_weights(pool[2], n_boot, pool_seed(seed, pool))
        means = bootstrap_means(np.stack([_bits(r["correct"]) for r in prows]), weights)
        for j, r in enumerate(prows):
            draws[r["method"]][cell_id(r)] = means[:, j]
    return dict(points), dict(draws), majority


def score_table(scores: Sequence[Score], methods: Sequence[str], points: dict, draws: dict, majority: dict,
                refs: Mapping[str, str], level: float) -> list[dict[str, Any]]:
    """Per score: each method's [point, low, high], the majority baseline, and for headline scores the paired
    difference of each method against each reference ([diff, low, high, significant])."""
    out = []
    with_majority = {**points, **majority}
    for s in scores:
        entry: dict[str, Any] = {"protocol": s.protocol, "name": s.name, "headline": s.headline,
                                 "lower_is_better": s.lower_is_better, "values": {}, "diffs": {}}
        for m in methods:
            point = defined(s(points, m))
            entry["values"][m] = None if point is None else list(percentile_interval(point, _draw(s, draws, m), level))
        entry["majority"] = defined(s(with_majority, MAJORITY)) if majority[MAJORITY] else None
        if s.headline:
            for label, ref in refs.items():
                ref_draws = _draw(s, draws, ref)
                ref_point = defined(s(points, ref))
                diffs = {}
                for m in methods:
                    point = defined(s(points, m))
                    if point is None or ref_point is None or m == ref:
                        continue
                    d = percentile_interval(point - ref_point, _draw(s, draws, m) - ref_draws, level)
                    diffs[m] = [*d, bool(np.isfinite(d[1]) and excludes_zero(d[1], d[2]))]
                entry["diffs"][label] = diffs
        out.append(entry)
    return out


def _draw(score: Score, draws: dict, method: str) -> np.ndarray:
    value = score(draws, method)
    return np.full(1, np.nan) if value is None else np.asarray(value, dtype=np.float64)


def analyze(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], *, n_boot: int = 2000, seed: int = 0,
            level: float = 0.95) -> dict[str, Any]:
    """{"experts": {expert_data: [score entries]}, "headline": [score entries averaged over experts], ...}."""
    points, draws, majority = cell_values(rows, n_boot=n_boot, seed=seed)
    refs = references(rows)
    by_expert: dict[Any, list] = defaultdict(list)
    for r in rows:
        if cell_id(r) not in by_expert[r.get("expert_data")]:
            by_expert[r.get("expert_data")].append(cell_id(r))
    scores = {e: scores_for(cells) for e, cells in by_expert.items()}
    return {
        "level": level, "n_boot": n_boot, "seed": seed, "references": refs,
        "experts": {str(e): score_table(s, methods, points, draws, majority, refs, level) for e, s in scores.items()},
        "headline": score_table(averaged(scores), methods, points, draws, majority, refs, level),
    }
