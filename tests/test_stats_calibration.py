"""Bootstrap intervals cover at the nominal rate; temperature fitting recovers a known temperature."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tcube.core.temperature import expected_calibration_error, fit_temperature
from tcube.reporting.stats import excludes_zero, majority_baseline


def test_excludes_zero():
    assert excludes_zero(0.1, 2.0) and excludes_zero(-2.0, -0.1) and not excludes_zero(-0.1, 0.1)


def test_majority_baseline():
    assert majority_baseline([0, 1, 1, 1]) == 75.0


def test_temperature_fit_recovers_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 5, generator=g) * 3
    true_t = 2.5
    labels = torch.multinomial((logits / true_t).softmax(-1), 1, generator=g).view(-1)
    assert abs(fit_temperature(logits, labels) - true_t) / true_t < 0.05


def test_calibration_lowers_ece_on_overconfident_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5000, 4, generator=g) * 4
    labels = torch.multinomial((logits / 3.0).softmax(-1), 1, generator=g).view(-1)
    t = fit_temperature(logits, labels)
    assert expected_calibration_error((logits / t).softmax(-1), labels) < expected_calibration_error(
        logits.softmax(-1), labels) / 2


def test_bad_logits_raise():
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))


def test_shared_resamples_cover_a_mean_over_cells_and_pair_exactly():
    """The report's machinery (one multinomial resample per image pool, reused by every row of the pool)."""
    from tcube.reporting.stats import (
        bootstrap_means,
        percentile_interval,
        pool_seed,
        resample_weights,
    )

    rng = np.random.default_rng(5)
    hits, trials = 0, 200
    for t in range(trials):
        cells = rng.random((3, 120)) < np.array([[0.6], [0.7], [0.8]])  # 3 corruptions of the same 120 images
        draws = bootstrap_means(cells, resample_weights(120, 400, pool_seed(t, ("d", "all", 120))))
        _, low, high = percentile_interval(cells.mean() * 100, draws.mean(axis=1))
        hits += low <= 70.0 <= high
    assert 0.90 <= hits / trials <= 0.99
    same = bootstrap_means(np.stack([cells[0], cells[0]]), resample_weights(120, 50, pool_seed(0, "p")))
    assert np.array_equal(same[:, 0] - same[:, 1], np.zeros(50))
    assert np.array_equal(resample_weights(9, 4, pool_seed(1, "p")), resample_weights(9, 4, pool_seed(1, "p")))
