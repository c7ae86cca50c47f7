"""mixed: the test splits of every configured dataset, interleaved in a seeded order, over the union of their classes.

One generalist and K experts (one per dataset); no method is told an image's dataset except the
`oracle_route*` ceilings. Views: the clean stream (every test image) and corrupted streams, one per
corruption that every dataset's list holds and per severity, `limit` seeded images per dataset (the same
images in every corrupted cell), in the protocol's corruption reading.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.corruptions import DEFAULT_READING, check_reading, corruptions_for
from .base import DataRef
from .corruption import image_limit, severity_list

NAME = "mixed"


@dataclass(frozen=True, eq=False)
class MixedSet:
    """One view of the mixed stream (clean: corruption None, severity 0)."""

    datasets: tuple[DataRef, ...]
    corruption: str | None = None
    severity: int = 0
    limit: int | None = None      # images per dataset (None: the whole split)
    reading: str | None = None
    data_split: str = "test"      # "val": the same stream built from the val splits (to design rules on)

    def describe(self) -> dict[str, Any]:
        out = {"protocol": NAME, "split": None, "role": None, "modality": NAME, "dataset": NAME, "subset": "all",
               "corruption": self.corruption, "severity": self.severity,
               "stream": [d.name for d in self.datasets]}
        if self.data_split != "test":  # test rows keep the keys they were written with
            out["data_split"] = self.data_split
        if self.reading:
            out["corruption_reading"] = self.reading
        return out


def shared_corruptions(datasets: Sequence[DataRef]) -> list[str]:
    """The corruptions every dataset's list holds, in the first dataset's order."""
    lists = [corruptions_for(d.spec) for d in datasets]
    return [c for c in lists[0] if all(c in other for other in lists[1:])]


def mixed_sets(options: Mapping[str, Any], datasets: Sequence[DataRef]) -> list[MixedSet]:
    datasets = tuple(datasets)
    reading = check_reading(options.get("reading") or DEFAULT_READING)
    data_split = options.get("data_split") or "test"
    if data_split not in ("test", "val"):
        raise ValueError(f"protocol.data_split must be test or val, got {data_split!r}")
    sets = [MixedSet(datasets, data_split=data_split)]  # the clean stream: every image, at the file's size
    shared = shared_corruptions(datasets)
    chosen = options.get("corruptions")
    chosen = shared if chosen is None else ([chosen] if isinstance(chosen, str) else list(chosen))
    bad = [c for c in chosen if c not in shared]
    if bad:
        raise ValueError(f"protocol.corruptions {bad} are not in every stream dataset's list; the shared ones are "
                         f"{shared} (or protocol.corruptions=null for all of them)")
    limit = image_limit(options)
    for name in chosen:
        sets += [MixedSet(datasets, name, s, limit, reading, data_split) for s in severity_list(options)]
    return sets


def stream_order(sizes: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, position within that dataset) of each stream image: the datasets' images interleaved
    in one seeded random order (the same for every method and corruption of a run)."""
    domain = np.concatenate([np.full(n, k, dtype=np.int64) for k, n in enumerate(sizes)])
    position = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
    order = np.random.default_rng([int(seed), 0x6D6978]).permutation(len(domain))  # "mix": apart from other draws
    return domain[order], position[order]
