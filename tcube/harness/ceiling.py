"""The per-sample ceiling's data: for every evaluated view, which λ of a fixed grid classifies each image correctly.

Opt-in (`ceiling_grid=21`; 0 = off, the default): after the run's cells, each evaluation set of the plan is scored
by the static merge θ = λ·θ_gen + (1 − λ)·θ_exp (the `wise_ft` method, α = λ) at every grid λ, on exactly the
cell's images (the runner's DataViews: class subset, seeded `limit` subset, seeded corruption) with the cell's
cached endpoint logits. The [N, G] bits go to `<run_dir>/ceiling/<key>.json` (atomic write), one file per view;
a rerun skips views whose file exists. The maths and the report's table are tcube.reporting.ceiling.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ..io import json_safe, write_text_atomic
from ..protocols.base import EvalSet
from ..reporting.ceiling import CEILING_DIR
from ..reporting.results import cell_key
from ..reporting.scores import CELL_FIELDS
from .runner import CellRunner

log = logging.getLogger(__name__)

# Identity fields that do not change a static merge's predictions: static merges run plain forwards whatever the
# engine, and the method (and its tuning) is the grid's. Everything else (images, models, prompts, seed, limit,
# precision) stays in the key.
_NOT_IN_KEY = ("method", "config_params", "engine", "engine_options", "tuning_data", "tuning_limit")
_LABELS = ("protocol", "split", "role")  # same images under two protocols: computed once per run


def grid_points(size: int) -> list[float]:
    """`size` evenly spaced λ over [0, 1], both ends included; i/(G−1) is exact at 0, 1 and e.g. 0.5."""
    if size < 2:
        raise ValueError(f"ceiling_grid must be 0 (off) or ≥ 2, got {size} (e.g. ceiling_grid=21)")
    return [i / (size - 1) for i in range(size)]


def ceiling_identity(cell_identity: dict[str, Any], size: int) -> dict[str, Any]:
    return {**{k: v for k, v in cell_identity.items() if k not in _NOT_IN_KEY}, "ceiling_grid": size}


def ceiling_key(cell_identity: dict[str, Any], size: int) -> str:
    return cell_key(ceiling_identity(cell_identity, size))


class CeilingGrid:
    """Scores views on the λ grid through a cell runner's data views, endpoint store and Mergers."""

    def __init__(self, runner: CellRunner, size: int, *, progress: bool = True):
        self.runner, self.grid, self.progress = runner, grid_points(size), progress

    @torch.no_grad()
    def bits(self, es: EvalSet) -> tuple[list[str], float]:
        """One bit string per grid λ (image order = the cell's `correct`), and the seconds the merges took."""
        r = self.runner
        info = r.pairs(es.expert)
        merger, _ = r.merger_for(es.expert, info, es.data, es.classes)
        n = r.views.view_size(es.data, "test", es.classes, es.limit)
        images, labels = r.views.load_view(es.data, "test", es.classes, info.pair.preprocess, es.corruption,
                                           es.severity, es.limit)
        fields = r.endpoints.view_fields(info.fingerprints, info.pair.preprocess, es.data, "test", es.classes,
                                         es.corruption, es.severity, es.limit)
        gen, exp, _, _ = r.endpoints.logits(merger, images, fields, n)  # the cells' cached logits: JS is unused
        start = time.perf_counter()
        out = []
        for lam in tqdm(self.grid, desc=f"ceiling {es.data.name}", leave=False, disable=not self.progress):
            preds = [merger.predict(x, "wise_ft", endpoint_logits=(g.to(merger.device), e.to(merger.device)),
                                    alpha=lam).preds.cpu()
                     for x, g, e in zip(images.split(r.batch_size), gen.split(r.batch_size),
                                        exp.split(r.batch_size))]
            merger.forget_static_merges()  # each is a model copy: 21 kept would hold 21 models
            out.append("".join("1" if c else "0" for c in (torch.cat(preds) == labels).tolist()))
        return out, time.perf_counter() - start


def compute_ceilings(cells: Sequence[Any], size: int, run_dir: Path, runner_for: Callable[[int], CellRunner], *,
                     progress: bool = True) -> dict[str, int]:
    """Write the ceiling file of every view of `cells` (harness Cells: eval_set, identity, part) that lacks one.

    `runner_for(part)` gives the cell runner of an expert (one at a time, like the cells). Returns counts."""
    folder = run_dir / CEILING_DIR
    views: dict[str, Any] = {}
    for cell in cells:  # one file per evaluation set, in plan order
        views.setdefault(ceiling_key(cell.identity, size), cell)
    pending = {k: c for k, c in views.items() if not (folder / f"{k}.json").is_file()}
    log.info("ceiling (%d-point λ grid): %d views, %d already in %s", size, len(views), len(views) - len(pending),
             folder)
    computed: dict[str, tuple[list[str], float]] = {}  # key without protocol labels -> bits
    grid, part_of = None, None
    for key, cell in tqdm(pending.items(), desc="ceiling views", disable=not progress):
        if cell.part != part_of:
            grid, part_of = CeilingGrid(runner_for(cell.part), size, progress=progress), cell.part
        same = cell_key({k: v for k, v in ceiling_identity(cell.identity, size).items() if k not in _LABELS})
        if same not in computed:
            computed[same] = grid.bits(cell.eval_set)
        bits, seconds = computed[same]
        record = {"key": key, "cell": {f: cell.identity.get(f) for f in CELL_FIELDS}, "grid": grid.grid,
                  "n": len(bits[0]), "correct": bits, "seconds": seconds,
                  "identity": ceiling_identity(cell.identity, size)}
        write_text_atomic(folder / f"{key}.json", json.dumps(json_safe(record), default=str))
    return {"views": len(views), "computed": len(pending)}
