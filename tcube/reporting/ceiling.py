"""The per-sample ceiling: what any λ rule could reach for this pair, from a grid of static merges.

For each evaluated view the harness (tcube.harness.ceiling) stores which λ of a fixed grid over [0, 1] classifies
each test image correctly: a [N, G] boolean matrix (λ = weight on the generalist; column 0 is the expert, the last
column the generalist). From it, per view:

- the accuracy of every grid λ (the static curve), hence the expert (λ = 0) and generalist (λ = 1);
- the static ceiling: the best single λ in hindsight (chosen on test labels: an upper bound, not a method);
- the per-sample oracle: an image counts as correct if *any* grid λ gets it right. Every per-sample rule that picks
  a grid λ per image is bounded by it; a rule whose λ falls between grid points can (rarely) beat it;
- for each method, its share of the gap recovered: (method − static ceiling) / (oracle − static ceiling) × 100.
  Negative = below the best static merge; undefined when the gap is below the zero-reference tolerance
  (tcube.reporting.scores.ratio: NaN here, None in summary.json, "–" in report.md).

Pooling over a protocol's views (`ceiling_table`): each view weighs the same, as in every other score of the report
(tcube.reporting.scores: a protocol's top-1 is the mean over its cells of each cell's top-1). The curve and the
oracle are those cell-means; the static ceiling is the best λ of the *mean* curve (one λ for the whole protocol,
as a static merge would be deployed); a method's accuracy is the mean of its rows' top-1 over the same views.

Pure functions and file reading only: no model code (docs/DESIGN.md, reporting imports no models).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .results import ADAPTIVE, methods_of_kind
from .scores import CELL_FIELDS, cell_id, defined, ratio

log = logging.getLogger(__name__)

CEILING_DIR = "ceiling"          # <run_dir>/ceiling/<key>.json, one file per evaluated view
STATIC_REFERENCES = ("wise_ft", "wise_ft_cal")  # static merges shown next to the adaptive methods


# -- the maths -----------------------------------------------------------------------------------------------
def as_matrix(correct: Sequence[str] | np.ndarray) -> np.ndarray:
    """[N, G] booleans from one bit string per grid λ (the stored form, like a row's `correct`) or an array."""
    if isinstance(correct, np.ndarray):
        m = correct.astype(bool)
    else:
        if not correct:
            raise ValueError("a ceiling needs at least one grid point")
        lengths = {len(c) for c in correct}
        if len(lengths) != 1:
            raise ValueError(f"every grid λ must score the same images; got bit strings of lengths {sorted(lengths)}")
        m = np.array([[ch == "1" for ch in bits] for bits in correct], dtype=bool).T
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"the correct matrix must be [N images, G grid points] with N, G ≥ 1; got {m.shape}")
    return m


def grid_curve(matrix: np.ndarray) -> np.ndarray:
    """Accuracy (percent) of each grid λ: [G]."""
    return matrix.mean(axis=0) * 100.0


def oracle(matrix: np.ndarray) -> float:
    """Per-sample oracle accuracy (percent): images that at least one grid λ classifies correctly."""
    return float(matrix.any(axis=1).mean() * 100.0)


def best_static(curve: Sequence[float], grid: Sequence[float]) -> tuple[float, float]:
    """(λ, accuracy) of the best single λ; ties go to the first (the one closest to the expert)."""
    curve = np.asarray(curve, dtype=np.float64)
    g = int(np.argmax(curve))
    return float(grid[g]), float(curve[g])


def recovered(method: float | None, static: float, oracle_: float) -> float | None:
    """Share of the static-to-oracle gap a method recovers, in percent; None when undefined (gap ≈ 0)."""
    if method is None:
        return None
    return defined(ratio(method - static, oracle_ - static))


def cell_ceiling(matrix: np.ndarray, grid: Sequence[float],
                 methods: Mapping[str, str | Sequence[bool] | np.ndarray] | None = None) -> dict[str, Any]:
    """The ceiling of one view. `methods`: per-image correct bits of each method (a bit string or booleans)."""
    matrix = as_matrix(matrix)
    if len(grid) != matrix.shape[1]:
        raise ValueError(f"{len(grid)} grid values for {matrix.shape[1]} columns")
    curve = grid_curve(matrix)
    lam, static = best_static(curve, grid)
    top = oracle(matrix)
    out = {"n": int(matrix.shape[0]), "grid": [float(x) for x in grid], "curve": curve.tolist(),
           "expert": float(curve[0]) if grid[0] == 0 else None,
           "generalist": float(curve[-1]) if grid[-1] == 1 else None,
           "static_lambda": lam, "static": static, "oracle": top, "methods": {}}
    for name, bits in (methods or {}).items():
        bits = np.array([c == "1" for c in bits] if isinstance(bits, str) else bits, dtype=bool)
        if bits.shape != (matrix.shape[0],):
            raise ValueError(f"{name}: {bits.size} correct bits for {matrix.shape[0]} images")
        acc = float(bits.mean() * 100.0)
        out["methods"][name] = {"top1": acc, "recovered": recovered(acc, static, top)}
    return out


def pooled(cells: Sequence[Mapping[str, Any]], methods: Mapping[str, Sequence[float | None]] | None = None
           ) -> dict[str, Any]:
    """Several views of one protocol, each weighing the same (module docstring). `cells`: cell_ceiling outputs
    (or stored records' curve/oracle) on one common grid; `methods`: per method, its top-1 on each of those cells
    in the same order (None where it has no row: the method is then left out)."""
    if not cells:
        raise ValueError("no cells to pool")
    grid = cells[0]["grid"]
    if any(c["grid"] != grid for c in cells):
        raise ValueError("cells on different λ grids cannot be pooled")
    curve = np.mean([c["curve"] for c in cells], axis=0)
    top = float(np.mean([c["oracle"] for c in cells]))
    lam, static = best_static(curve, grid)
    out = {"cells": len(cells), "n": int(sum(c["n"] for c in cells)), "grid": list(grid), "curve": curve.tolist(),
           "expert": float(curve[0]) if grid[0] == 0 else None,
           "generalist": float(curve[-1]) if grid[-1] == 1 else None,
           "static_lambda": lam, "static": static, "oracle": top, "methods": {}}
    for name, values in (methods or {}).items():
        if len(values) != len(cells) or any(v is None for v in values):
            continue
        acc = float(np.mean(values))
        out["methods"][name] = {"top1": acc, "recovered": recovered(acc, static, top)}
    return out


# -- records on disk and the report's table -----------------------------------------------------------------
def load_ceiling(run_dir: str | Path, keys: set[str] | None = None) -> list[dict[str, Any]]:
    """The stored views of a run (those with a key in `keys` if given); unreadable files are skipped, logged."""
    folder = Path(run_dir) / CEILING_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping ceiling file %s (%s)", path, err)
            continue
        if keys is None or record.get("key") in keys:
            out.append(record)
    return out


def view_label(cell: Mapping[str, Any]) -> str:
    """Which part of a protocol a view pools into: the views its headline scores are taken over."""
    protocol = cell.get("protocol")
    if protocol == "base_to_novel":
        return f"split={cell.get('split')}"
    if protocol == "corruption":
        return "corrupted" if cell.get("corruption") else "clean"
    return "test"


def ceiling_table(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (expert modality, protocol, view label): `pooled` over the stored views, with the adaptive methods
    (kinds per_sample / per_batch, read off the rows) and the static references (wise_ft) that have rows there."""
    if not records:
        return []
    methods = methods_of_kind(rows, *ADAPTIVE) + [m for m in STATIC_REFERENCES if any(r.get("method") == m
                                                                                      for r in rows)]
    top1 = {(cell_id(r), r.get("method")): r.get("top1") for r in rows}
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for rec in records:
        cell = rec["cell"]
        # a folder may hold views of two grid sizes (two runs): pooled only with their own grid
        groups.setdefault((cell.get("expert_data"), cell.get("protocol"), view_label(cell), len(rec["grid"])),
                          []).append(rec)
    out = []
    for (expert, protocol, label, _), recs in groups.items():
        cells = [{"grid": rec["grid"], "n": rec["n"], "curve": grid_curve(as_matrix(rec["correct"])).tolist(),
                  "oracle": oracle(as_matrix(rec["correct"]))} for rec in recs]
        ids = [tuple(rec["cell"].get(f) for f in CELL_FIELDS) for rec in recs]
        entry = pooled(cells, {m: [top1.get((i, m)) for i in ids] for m in methods})
        out.append({"expert_data": expert, "protocol": protocol, "view": label, **entry})
    return sorted(out, key=lambda e: (str(e["expert_data"]), str(e["protocol"]), e["view"], len(e["grid"])))
