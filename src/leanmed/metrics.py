"""Binary classification metrics on one logit per image, in numpy only.

Conventions shared by every function here:

- ``labels`` are 0/1 (any integer or boolean array-like); ``probabilities`` are the model's scores for class 1.
- A prediction is positive when ``probability >= threshold``.
- A metric that is undefined for the given data (a ratio with a zero denominator, ROC AUC with a single class present,
  or any non-finite probability) is ``float("nan")``; callers that write JSON turn NaN into ``null``.
- Non-finite probabilities (NaN or +-inf, e.g. from a diverged model) make every metric NaN: such outputs are not
  scores of a classifier, and treating NaN as "negative" would report an accuracy the model never had.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "roc_auc",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "confusion_counts",
    "binary_metrics",
]


def _as_arrays(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs: labels to a 1-D int array of 0/1, probabilities to a 1-D float64 array."""
    label_array = np.asarray(labels)
    score_array = np.asarray(probabilities, dtype=np.float64)
    if label_array.ndim != 1 or score_array.ndim != 1:
        raise ValueError(
            f"labels and probabilities must be 1-D, got shapes {label_array.shape} and {score_array.shape}"
        )
    if label_array.shape != score_array.shape:
        raise ValueError(f"labels ({label_array.shape[0]}) and probabilities ({score_array.shape[0]}) differ in length")
    if label_array.size and not np.isin(label_array, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return label_array.astype(np.int64), score_array


def confusion_counts(labels, probabilities, threshold: float = 0.5) -> dict[str, int]:
    """Counts of true/false positives/negatives at ``threshold`` (prediction positive when probability >= threshold)."""
    label_array, score_array = _as_arrays(labels, probabilities)
    predicted = score_array >= threshold
    actual = label_array == 1
    return {
        "tp": int(np.sum(predicted & actual)),
        "fp": int(np.sum(predicted & ~actual)),
        "tn": int(np.sum(~predicted & ~actual)),
        "fn": int(np.sum(~predicted & actual)),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def _counts_if_finite(labels, probabilities, threshold: float) -> dict | None:
    """Confusion counts, or None when any probability is NaN/inf (a diverged model: every metric is then NaN)."""
    label_array, score_array = _as_arrays(labels, probabilities)
    if not np.isfinite(score_array).all():
        return None
    return confusion_counts(label_array, score_array, threshold)


def accuracy(labels, probabilities, threshold: float = 0.5) -> float:
    """Fraction of images whose prediction (probability >= threshold) equals the label; NaN for no images."""
    counts = _counts_if_finite(labels, probabilities, threshold)
    if counts is None:
        return float("nan")
    return _ratio(counts["tp"] + counts["tn"], sum(counts.values()))


def sensitivity(labels, probabilities, threshold: float = 0.5) -> float:
    """True-positive rate TP / (TP + FN) at ``threshold``; NaN when there is no positive image."""
    counts = _counts_if_finite(labels, probabilities, threshold)
    if counts is None:
        return float("nan")
    return _ratio(counts["tp"], counts["tp"] + counts["fn"])


def specificity(labels, probabilities, threshold: float = 0.5) -> float:
    """True-negative rate TN / (TN + FP) at ``threshold``; NaN when there is no negative image."""
    counts = _counts_if_finite(labels, probabilities, threshold)
    if counts is None:
        return float("nan")
    return _ratio(counts["tn"], counts["tn"] + counts["fp"])


def balanced_accuracy(labels, probabilities, threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity at ``threshold``; NaN when either is undefined."""
    return float(
        (sensitivity(labels, probabilities, threshold) + specificity(labels, probabilities, threshold)) / 2.0
    )


def roc_auc(labels, probabilities) -> float:
    """Area under the ROC curve, computed from ranks (the Mann-Whitney U statistic).

    AUC = (sum of the ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied scores given the
    average of the ranks they span, so a tie between a positive and a negative counts one half. This is the
    probability that a random positive scores above a random negative. NaN when only one class is present or a
    score is non-finite.
    """
    label_array, score_array = _as_arrays(labels, probabilities)
    n_positive = int(np.sum(label_array == 1))
    n_negative = int(label_array.size - n_positive)
    if n_positive == 0 or n_negative == 0 or not np.isfinite(score_array).all():
        return float("nan")
    sorted_scores = np.sort(score_array, kind="mergesort")
    unique_scores, first_index, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    # 1-based average rank of a block of ties occupying sorted positions first..first+count-1.
    average_rank_of_value = first_index + (counts + 1) / 2.0
    ranks = average_rank_of_value[np.searchsorted(unique_scores, score_array)]
    positive_rank_sum = float(np.sum(ranks[label_array == 1]))
    u_statistic = positive_rank_sum - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def binary_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """All metrics of this module for one set of predictions.

    Returns a dict with ``n_images``, ``n_positive``, ``threshold``, ``accuracy``, ``roc_auc``, ``sensitivity``,
    ``specificity``, ``balanced_accuracy`` (floats, NaN where undefined) and the confusion counts ``tp``, ``fp``,
    ``tn``, ``fn`` at the threshold.
    """
    label_array, score_array = _as_arrays(labels, probabilities)
    result = {
        "n_images": int(label_array.size),
        "n_positive": int(np.sum(label_array == 1)),
        "threshold": float(threshold),
        "accuracy": accuracy(label_array, score_array, threshold),
        "roc_auc": roc_auc(label_array, score_array),
        "sensitivity": sensitivity(label_array, score_array, threshold),
        "specificity": specificity(label_array, score_array, threshold),
        "balanced_accuracy": balanced_accuracy(label_array, score_array, threshold),
    }
    result.update(confusion_counts(label_array, score_array, threshold))
    return result
