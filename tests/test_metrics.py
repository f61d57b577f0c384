"""leanmed.metrics on cases small enough to compute by hand."""

import math

import numpy as np
import pytest

from leanmed.metrics import (
    accuracy,
    balanced_accuracy,
    binary_metrics,
    confusion_counts,
    roc_auc,
    sensitivity,
    specificity,
)

LABELS = [1, 1, 1, 0, 0, 0, 0, 0]
PROBS = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3, 0.5]
# At 0.5: predictions 1,1,0,1,0,0,0,1 -> TP 2, FN 1, FP 2, TN 3.


def test_confusion_counts_at_threshold():
    assert confusion_counts(LABELS, PROBS) == {"tp": 2, "fp": 2, "tn": 3, "fn": 1}


def test_threshold_metrics_by_hand():
    assert accuracy(LABELS, PROBS) == pytest.approx(5 / 8)
    assert sensitivity(LABELS, PROBS) == pytest.approx(2 / 3)
    assert specificity(LABELS, PROBS) == pytest.approx(3 / 5)
    assert balanced_accuracy(LABELS, PROBS) == pytest.approx((2 / 3 + 3 / 5) / 2)


def test_probability_equal_to_threshold_is_positive():
    assert accuracy([1], [0.5]) == 1.0
    assert accuracy([0], [0.5]) == 0.0


def test_roc_auc_by_hand():
    # Pairs (positive, negative) ranked correctly: 0.9 beats all 5; 0.6 beats 0.2, 0.1, 0.3, 0.5 (4 of 5);
    # 0.4 beats 0.2, 0.1, 0.3 (3 of 5) -> 12 / 15.
    assert roc_auc(LABELS, PROBS) == pytest.approx(12 / 15)


def test_roc_auc_ties_count_half():
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # positive 0.8 vs negatives 0.8 (tie, 1/2) and 0.1 (win, 1): (1.5) / 2.
    assert roc_auc([1, 0, 0], [0.8, 0.8, 0.1]) == pytest.approx(0.75)


def test_roc_auc_perfect_and_inverted():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_roc_auc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 20, 200) / 20.0  # many ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(wins / (positives.size * negatives.size))


def test_undefined_cases_are_nan():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.9]))
    assert math.isnan(sensitivity([0, 0], [0.2, 0.9]))
    assert math.isnan(specificity([1, 1], [0.2, 0.9]))
    assert math.isnan(balanced_accuracy([1, 1], [0.2, 0.9]))
    assert math.isnan(accuracy([], []))


def test_non_finite_probabilities_make_every_metric_nan():
    values = binary_metrics([1, 0], [float("nan"), 0.2])
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
        assert math.isnan(values[key]), key


def test_binary_metrics_collects_everything():
    values = binary_metrics(LABELS, PROBS, threshold=0.5)
    assert values["n_images"] == 8 and values["n_positive"] == 3 and values["threshold"] == 0.5
    assert values["accuracy"] == pytest.approx(5 / 8)
    assert values["roc_auc"] == pytest.approx(0.8)
    assert (values["tp"], values["fp"], values["tn"], values["fn"]) == (2, 2, 3, 1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        accuracy([0, 1], [0.5])
    with pytest.raises(ValueError):
        accuracy([0, 2], [0.5, 0.5])
