"""Metrics with hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tcube.reporting.metrics import (
    balanced_accuracy,
    corruption_errors,
    error,
    error_reduction,
    harmonic_mean,
    mce,
    relative_corruption_errors,
    relative_mce,
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
    with pytest.raises(ValueError):
        error(120.0)


REF = {"noise": [10, 20, 30], "blur": [20, 20, 20]}
METHOD = {"noise": [5, 10, 15], "blur": [12, 18, 30]}


def test_mce_of_the_reference_is_100():
    assert mce(REF, REF) == pytest.approx(100.0)


def test_mce_worked_example():
    # noise: 30 / 60 = 50 ; blur: 60 / 60 = 100 ; mean = 75
    assert corruption_errors(METHOD, REF) == pytest.approx({"noise": 50.0, "blur": 100.0})
    assert mce(METHOD, REF) == pytest.approx(75.0)


def test_relative_mce_worked_example():
    # clean errors: method 4, reference 8
    # noise: Σ(m-4) = 1+6+11 = 18 ; Σ(r-8) = 2+12+22 = 36 -> 50
    # blur:  Σ(m-4) = 8+14+26 = 48 ; Σ(r-8) = 12*3 = 36   -> 133.33
    rel = relative_corruption_errors(METHOD, REF, clean_method=4, clean_ref=8)
    assert rel == pytest.approx({"noise": 50.0, "blur": 400 / 3})
    assert relative_mce(METHOD, REF, 4, 8) == pytest.approx((50 + 400 / 3) / 2)
    assert relative_mce(REF, REF, 8, 8) == pytest.approx(100.0)


def test_relative_mce_zero_denominator_is_left_out():
    ref = {"noise": [10, 20, 30], "flat": [8, 8, 8]}  # reference not degraded by "flat"
    method = {"noise": [5, 10, 15], "flat": [9, 9, 9]}
    rel = relative_corruption_errors(method, ref, 4, 8)
    assert math.isnan(rel["flat"]) and rel["noise"] == pytest.approx(50.0)
    assert relative_mce(method, ref, 4, 8) == pytest.approx(50.0)
    assert math.isnan(relative_mce({"flat": [9]}, {"flat": [8]}, 4, 8))


@pytest.mark.parametrize("method,ref,match", [
    ({}, {}, "empty"),
    ({"noise": [1, 2]}, {"blur": [1, 2]}, "same corruptions"),
    ({"noise": [1, 2]}, {"noise": [1, 2, 3]}, "one error per severity"),
    ({"noise": []}, {"noise": []}, "one error per severity"),
    ({"noise": [1, float("nan")]}, {"noise": [1, 2]}, "finite"),
    ({"noise": [1, 2]}, {"noise": [0, 0]}, "undefined"),
])
def test_mce_validation(method, ref, match):
    with pytest.raises(ValueError, match=match):
        mce(method, ref)


def test_error_reduction():
    assert error_reduction(15.0, 20.0) == pytest.approx(25.0)
    assert error_reduction(25.0, 20.0) == pytest.approx(-25.0)
    with pytest.raises(ValueError, match="err_ref"):
        error_reduction(1.0, 0.0)


def test_harmonic_mean():
    assert harmonic_mean(60.0, 40.0) == pytest.approx(48.0)
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(100.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean(-1.0, 50.0)
