"""Uncertainty for small test sets: shared seeded bootstrap resamples per image pool, percentile intervals,
the majority-class baseline (tcube.reporting.uncertainty applies them to every score)."""
from __future__ import annotations

import numpy as np


def excludes_zero(low: float, high: float) -> bool:
    """True when an interval of a difference says the difference is not noise at its level."""
    return low > 0 or high < 0


def majority_baseline(labels) -> float:
    """Top-1 in percent of always predicting the most frequent test label (the floor to beat)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("no labels")
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size * 100)


# -- many cells at once: shared resamples per image pool -----------------------------------------------
def pool_seed(seed: int, pool) -> np.random.Generator:
    """A generator for one image pool that depends on the pool's identity, not on the order pools are met:
    two methods (or two runs of the report) that score the same images get the same resamples."""
    import zlib

    return np.random.default_rng([int(seed), zlib.crc32(repr(pool).encode())])


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] multiplicity of each image in each bootstrap resample (each row sums to n)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bootstrap_means(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Top-1 in percent of each row of `correct` [R, n] under each resample of `weights` [B, n] -> [B, R].

    One matrix product instead of R × B fancy-indexed means: every row of a pool (every method, every
    corruption of the same images) is scored on the very same resamples, so differences are paired.
    """
    correct = np.asarray(correct, dtype=np.float64)
    return weights @ correct.T / weights.shape[1] * 100.0


def percentile_interval(point: float, draws: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high) from bootstrap draws; NaN draws (statistic undefined on a resample) are dropped."""
    draws = np.asarray(draws, dtype=np.float64).reshape(-1)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0 or point is None or not np.isfinite(point):
        return (float("nan"),) * 3 if point is None else (float(point), float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    return float(point), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))
