"""results.jsonl: one JSON row per evaluated cell, appended so that a killed run never corrupts it.

Each row is written with a single ``os.write`` of one complete line to a file opened with
``O_APPEND``, then fsync'ed: a crash leaves at most a partial *last* line, which readers ignore
and the next run cuts off before appending. Rows carry a ``key`` (hash of everything that
determines the cell's result); a resumed run skips keys already present and readers drop duplicates.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io import json_safe

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"

# -- method kinds, read off the rows ------------------------------------------------------------------------
# Reporting never imports tcube.methods: what kind of method wrote a row comes from the row's `method_kind`
# field (the harness writes it; a string, or a list when a method is of two kinds, e.g. per-sample *and*
# validation-tuned). LEGACY_KINDS exists only for rows written before that field did (docs/results, old runs):
# the 14 built-in methods as they were then, in the order reports listed them. Do not extend it for new
# methods; new rows carry their kind.
LEGACY_KINDS: dict[str, tuple[str, ...]] = {
    "generalist": ("endpoint",), "expert": ("endpoint",), "ensemble": ("ensemble",),
    "weight_average": ("static",), "wise_ft": ("static",), "task_arithmetic": ("static",), "ties": ("static",),
    "dare": ("static",), "slerp": ("static",), "dawin": ("per_sample",), "t3": ("per_sample",),
    "t3_batch": ("per_batch",), "t3_cal": ("per_sample", "tuned"), "wise_ft_cal": ("static", "tuned"),
}
PER_SAMPLE = "per_sample"              # λ per test image: routing correlations of λ are defined
ADAPTIVE = ("per_sample", "per_batch")  # λ computed from the test inputs: λ plots
TUNED = "tuned"                         # coefficients chosen on validation data: the coefficient table


def method_kinds(row: Mapping[str, Any]) -> frozenset[str]:
    """The kinds of the method that wrote `row`: its `method_kind`, else LEGACY_KINDS, else none known."""
    kind = row.get("method_kind")
    if kind is None or (isinstance(kind, float) and kind != kind):  # absent, or NaN from a DataFrame
        return frozenset(LEGACY_KINDS.get(row.get("method"), ()))
    return frozenset([kind] if isinstance(kind, str) else kind)


def methods_of_kind(rows: Iterable[Mapping[str, Any]], *kinds: str) -> list[str]:
    """Methods (in method_order) with a row of any of `kinds`."""
    rows = list(rows)
    wanted = {r.get("method") for r in rows if method_kinds(r) & set(kinds)}
    return [m for m in method_order(rows) if m in wanted]


def method_order(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Display order: the built-in methods in their legacy order, then the others in order of first appearance."""
    present = list(dict.fromkeys(r.get("method") for r in rows))
    return [m for m in LEGACY_KINDS if m in present] + [m for m in present if m not in LEGACY_KINDS]


def cell_key(fields: dict[str, Any]) -> str:
    """Hash of a cell's identity (protocol, data view, method + params, engine, seed, limit, models)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]




def parse_jsonl(text: str, source: str = "") -> list[dict[str, Any]]:
    """Rows of a JSONL text; a trailing line without newline (killed writer) is ignored."""
    lines = text.split("\n")
    if lines and lines[-1] != "":
        log.info("%s: ignoring a partial last line (%d chars) from an interrupted run", source, len(lines[-1]))
    rows, seen = [], set()
    for i, line in enumerate(lines[:-1]):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: skipping malformed line %d", source, i + 1)
            continue
        key = row.get("key")
        if key is not None and key in seen:
            continue  # first write wins
        seen.add(key)
        rows.append(row)
    return rows


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    return parse_jsonl(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else []


class ResultsFile:
    """Append-only results.jsonl of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        return read_rows(self.path)

    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows() if "key" in r}

    def repair(self) -> int:
        """Cut a partial last line left by a killed run (so the next append starts a fresh line)."""
        if not self.path.is_file():
            return 0
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return 0
        with open(self.path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        log.warning("%s: removed a partial last line (%d bytes) left by an interrupted run",
                    self.path, len(data) - end)
        return len(data) - end

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(json_safe(row), sort_keys=False, allow_nan=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)  # one write of one whole line: appends never interleave
            if written != len(line):
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)




def rows_in(rows: Iterable[dict[str, Any]], keys: Iterable[str]) -> list[dict[str, Any]]:
    wanted = set(keys)
    return [r for r in rows if r.get("key") in wanted]
