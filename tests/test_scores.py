"""The score formulas (tcube.reporting.scores) with hand-computed numbers, and the zero-reference rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tcube.reporting.scores import (
    ZERO_REFERENCE_TOL,
    balanced_accuracy,
    corruption_error,
    error,
    error_reduction,
    harmonic_mean,
    mean_defined,
    ratio,
    relative_corruption_error,
    top1,
)


def test_top1_by_hand():
    assert top1([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx(75.0)
    assert top1(torch.tensor([1, 1, 1]), np.array([1, 1, 0])) == pytest.approx(200 / 3)
    logits = torch.tensor([[2.0, 0.1], [0.3, 0.9], [5.0, -1.0]])  # argmax 0, 1, 0
    assert top1(logits, [0, 0, 0]) == pytest.approx(200 / 3)


def test_balanced_accuracy_imbalanced_by_hand():
    labels = [0, 0, 0, 0, 1, 1]
    preds = [0, 0, 0, 0, 0, 1]  # recall 4/4 and 1/2
    assert top1(preds, labels) == pytest.approx(500 / 6)
    assert balanced_accuracy(preds, labels, num_classes=2) == pytest.approx(75.0)


def test_balanced_accuracy_ignores_classes_absent_from_labels():
    labels = [0, 0, 1, 1]
    preds = [0, 2, 1, 1]  # class 2 is predicted but never true: recalls 1/2 and 2/2
    assert balanced_accuracy(preds, labels, num_classes=3) == pytest.approx(75.0)
    # torchmetrics' macro average would count class 2 as recall 0: (0.5 + 1 + 0) / 3
    from torchmetrics.functional.classification import multiclass_accuracy

    tm = multiclass_accuracy(torch.tensor(preds), torch.tensor(labels), num_classes=3, average="macro")
    assert float(tm) * 100 == pytest.approx(50.0)
    assert balanced_accuracy([0, 1], [0, 1], num_classes=10) == pytest.approx(100.0)


@pytest.mark.parametrize("args,match", [
    (([], []), "empty"),
    (([0, 1], [0]), "match"),
    (([0, 3], [0, 1]), "preds must lie"),
    (([0, 1], [0, 5]), "labels must lie"),
    (([0.5, 1.0], [0, 1]), "integer"),
])
def test_balanced_accuracy_validation(args, match):
    with pytest.raises(ValueError, match=match):
        balanced_accuracy(*args, num_classes=2)


def test_error():
    assert error(80.0) == pytest.approx(20.0)
    assert error(top1([1, 1], [1, 0])) == pytest.approx(50.0)
    assert list(error(np.array([100.0, 62.5]))) == [0.0, 37.5]


REF = {"noise": [10, 20, 30], "blur": [20, 20, 20]}
METHOD = {"noise": [5, 10, 15], "blur": [12, 18, 30]}


def mce(method, ref):
    return mean_defined([corruption_error(method[c], ref[c]) for c in sorted(method)])


def test_mce_of_the_reference_is_100():
    assert mce(REF, REF) == pytest.approx(100.0)


def test_mce_worked_example():
    # noise: 30 / 60 = 50 ; blur: 60 / 60 = 100 ; mean = 75
    assert corruption_error(METHOD["noise"], REF["noise"]) == pytest.approx(50.0)
    assert corruption_error(METHOD["blur"], REF["blur"]) == pytest.approx(100.0)
    assert mce(METHOD, REF) == pytest.approx(75.0)


def test_relative_ce_worked_example():
    # clean errors: method 4, reference 8
    # noise: Σ(m-4) = 1+6+11 = 18 ; Σ(r-8) = 2+12+22 = 36 -> 50
    # blur:  Σ(m-4) = 8+14+26 = 48 ; Σ(r-8) = 12*3 = 36   -> 133.33
    assert relative_corruption_error(METHOD["noise"], REF["noise"], 4, 8) == pytest.approx(50.0)
    assert relative_corruption_error(METHOD["blur"], REF["blur"], 4, 8) == pytest.approx(400 / 3)
    assert relative_corruption_error(REF["noise"], REF["noise"], 8, 8) == pytest.approx(100.0)


def test_formulas_work_element_wise_on_bootstrap_draws():
    draws_m, draws_r = np.array([5.0, 10.0, 0.0]), np.array([10.0, 0.0, 20.0])
    assert np.allclose(corruption_error([draws_m, draws_m], [draws_r, draws_r]), [50.0, np.nan, 0.0], equal_nan=True)
    assert np.allclose(mean_defined([np.array([50.0, np.nan]), np.array([100.0, np.nan])]), [75.0, np.nan],
                       equal_nan=True)
    assert np.allclose(harmonic_mean(np.array([60.0, 0.0, np.nan]), np.array([40.0, 0.0, 50.0])), [48.0, 0.0, np.nan],
                       equal_nan=True)


# -- the zero-reference rule: a reference error (or degradation) below 1e-9 points makes a ratio undefined --
def test_zero_reference_error_makes_ce_and_error_reduction_undefined():
    assert math.isnan(corruption_error([1, 2], [0, 0]))
    assert math.isnan(error_reduction(1.0, 0.0))
    assert error_reduction(15.0, 20.0) == pytest.approx(25.0)
    assert error_reduction(25.0, 20.0) == pytest.approx(-25.0)
    # an mCE is the mean over the corruptions whose CE is defined; none defined -> undefined
    assert mce({"noise": [5, 10, 15], "flat": [3, 3, 3]}, {"noise": [10, 20, 30], "flat": [0, 0, 0]}) == 50.0
    assert math.isnan(mce({"flat": [3]}, {"flat": [0]}))


def test_round_off_denominator_is_undefined_not_a_huge_number():
    """The fifth-dataset bug: a generalist unchanged by a corruption leaves a round-off denominator (1.4e-14 here),
    which passed a `den > 0` test and gave a relative mCE of ~1e16."""
    n = 48
    clean_ref = error(100 * 5 / n)
    severities_ref = [error(100 * 4 / n), error(100 * 6 / n)]  # one image worse, one image better: no degradation
    den = sum(e - clean_ref for e in severities_ref)
    assert den != 0 and abs(den) < 1e-12  # the round-off the rule exists for
    rel = relative_corruption_error([error(50.0), error(40.0)], severities_ref, error(60.0), clean_ref)
    assert math.isnan(rel)
    assert math.isnan(ratio(1.0, 1e-14)) and math.isnan(ratio(1.0, -3.0)) and math.isnan(ratio(1.0, 0.0))
    # the smallest real difference (one image of 1e6) is far above the tolerance and stays defined
    assert ratio(1.0, 100 / 1e6) == pytest.approx(1e6) and 100 / 1e6 > 1e4 * ZERO_REFERENCE_TOL


def test_harmonic_mean():
    assert harmonic_mean(60.0, 40.0) == pytest.approx(48.0)
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(0.0, 0.0) == 0.0  # the one rule, also in summary.json and the intervals
    assert harmonic_mean(100.0, 0.0) == 0.0


def test_per_image_metrics_need_no_torch_but_take_tensors():
    import torch

    assert top1(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 50.0
    assert balanced_accuracy(torch.tensor([0, 0, 1]), np.array([0, 1, 1]), num_classes=2) == pytest.approx(75.0)
