"""Bootstrap intervals cover at the nominal rate; temperature fitting recovers a known temperature."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tcube.core.temperature import expected_calibration_error, fit_temperature
from tcube.reporting.stats import (
    bootstrap_ci,
    excludes_zero,
    majority_baseline,
    paired_bootstrap_diff,
)


def test_bootstrap_interval_covers_true_accuracy_at_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        correct = rng.random(150) < 0.7
        _, low, high = bootstrap_ci(correct, n_boot=400, seed=t)
        hits += low <= 70.0 <= high
    assert 0.90 <= hits / trials <= 0.985


def test_interval_is_seeded_and_brackets_the_estimate():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], bool)
    assert bootstrap_ci(correct, seed=3) == bootstrap_ci(correct, seed=3)
    mean, low, high = bootstrap_ci(correct)
    assert mean == 70.0 and low < mean < high


def test_paired_difference_of_a_method_with_itself_is_exactly_zero():
    correct = np.random.default_rng(1).random(80) < 0.6
    assert paired_bootstrap_diff(correct, correct) == (0.0, 0.0, 0.0)


def test_paired_difference_detects_a_real_gap_and_not_noise():
    rng = np.random.default_rng(2)
    base = rng.random(400) < 0.6
    better = base | (rng.random(400) < 0.3)  # strictly adds correct answers
    diff, low, high = paired_bootstrap_diff(better, base)
    assert diff > 0 and excludes_zero(low, high)
    coin_a, coin_b = rng.random(40) < 0.5, rng.random(40) < 0.5
    assert not excludes_zero(*paired_bootstrap_diff(coin_a, coin_b)[1:])


def test_paired_needs_same_images():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_diff(np.ones(3, bool), np.ones(4, bool))


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
