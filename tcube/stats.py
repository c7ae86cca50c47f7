"""Uncertainty for small test sets: seeded bootstrap intervals, paired differences, majority baseline."""
from __future__ import annotations

import numpy as np


def _as_bool(correct) -> np.ndarray:
    arr = np.asarray(correct)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of per-image correctness, got shape {arr.shape}")
    return arr.astype(bool)


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(correct, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Top-1 in percent and its percentile-bootstrap interval, resampling test images (seeded)."""
    c = _as_bool(correct)
    means = c[_indices(c.size, n_boot, seed)].mean(axis=1) * 100
    tail = (1 - level) / 2 * 100
    return float(c.mean() * 100), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_bootstrap_diff(correct_a, correct_b, *, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float, float]:
    """Top-1(a) − top-1(b) in points with an interval from the *same* resampled images for both."""
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images for both methods: {a.shape} vs {b.shape}")
    diff = a.astype(np.int8) - b.astype(np.int8)
    means = diff[_indices(diff.size, n_boot, seed)].mean(axis=1) * 100
    tail = (1 - level) / 2 * 100
    return float(diff.mean() * 100), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def excludes_zero(low: float, high: float) -> bool:
    """True when an interval of a difference says the difference is not noise at its level."""
    return low > 0 or high < 0


def majority_baseline(labels) -> float:
    """Top-1 in percent of always predicting the most frequent test label (the floor to beat)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("no labels")
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size * 100)
