"""Which corruption reading a set of rows used, for the report's corruption header.

Reporting imports no data or model code, so the names live here as plain strings: `protocol.reading`
writes "224" or "native" into every corruption row; rows written before it existed carry none and used
the old mixed reading (noise, pixelate, JPEG and colour at 28 px; blurs and masks mimicking 224 px).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

LEGACY = "legacy-mixed"
MEANING = {
    "224": "224 (MedMNIST-C's definition: corrupted at 224 px, then resized to the model's input)",
    "native": "native (every operation at the file's own size, spatial parameters × size/224)",
    LEGACY: ("legacy mixed (rows without corruption_reading, written before protocol.reading: noise, pixelate, "
             "JPEG and colour at the file's size, blurs and masks mimicking 224 px; not comparable to either reading)"),
}


def reading_of(row: dict) -> str:
    return str(row.get("corruption_reading") or LEGACY)


def reading_header(rows: Iterable[dict]) -> str:
    """'reading 224 (...)', or every reading found with its row count when a results file mixes them."""
    counts = Counter(reading_of(r) for r in rows if r.get("protocol") == "corruption")
    if len(counts) <= 1:
        only = next(iter(counts), LEGACY)
        return f"reading {MEANING.get(only, only)}"
    found = "; ".join(f"{MEANING.get(k, k)}: {n} rows" for k, n in sorted(counts.items()))
    return f"MIXED readings, scores pool them (rerun into a fresh folder with one protocol.reading): {found}"
