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
from pathlib import Path
from typing import Any, Iterable

from ..io import json_safe

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"


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
