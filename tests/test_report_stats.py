"""Paired statistics against the fp32 baseline on constructed cases whose answers are known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from leanmed.report import aggregate, stats, tables


def predictions(labels, correct, seed=0, probabilities=None, subjects=None):
    """A predictions frame whose correctness per image is given; probabilities agree with the prediction."""
    labels = np.asarray(labels, dtype=int)
    correct = np.asarray(correct, dtype=bool)
    prediction = np.where(correct, labels, 1 - labels)
    if probabilities is None:
        probabilities = np.where(prediction == 1, 0.8, 0.2)
    frame = pd.DataFrame({
        "image_id": [f"img{i:04d}" for i in range(labels.size)],
        "label": labels,
        "probability": probabilities,
        "prediction": prediction,
        "seed": seed,
    })
    if subjects is not None:
        frame["subject_id"] = subjects
    return frame


def test_mcnemar_exact_for_few_discordant_pairs():
    result = stats.mcnemar_test(10, 2)
    assert result["method"].startswith("exact binomial")
    # 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result["p_value"] == pytest.approx(2 * 79 / 4096)
    assert round(result["p_value"], 4) == 0.0386


def test_mcnemar_chi_square_with_continuity_correction_for_many():
    result = stats.mcnemar_test(30, 10)
    assert result["method"].startswith("chi-square with continuity correction")
    statistic = (abs(30 - 10) - 1) ** 2 / 40
    assert result["statistic"] == pytest.approx(statistic)
    # Survival function of chi-square with 1 df: erfc(sqrt(x / 2)).
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))


def test_mcnemar_without_discordant_pairs_is_one():
    assert stats.mcnemar_test(0, 0)["p_value"] == 1.0


def test_identical_predictions_give_zero_difference_and_p_one():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    baseline = predictions(labels, rng.random(60) < 0.7, probabilities=rng.random(60))
    result = stats.compare_to_baseline(baseline, baseline.copy(), n_bootstrap=300)
    assert result["accuracy_diff"] == 0.0
    assert (result["accuracy_diff_ci_low"], result["accuracy_diff_ci_high"]) == (0.0, 0.0)
    assert result["auc_diff"] == 0.0
    assert (result["auc_diff_ci_low"], result["auc_diff_ci_high"]) == (0.0, 0.0)
    assert result["mcnemar_p"] == 1.0
    assert result["verdict"] == stats.VERDICT_NON_INFERIOR


def test_every_image_flipped_to_correct_gives_a_degenerate_interval():
    labels = np.tile([0, 1], 50)
    baseline = predictions(labels, np.zeros(100, bool))
    other = predictions(labels, np.ones(100, bool))
    result = stats.compare_to_baseline(baseline, other, n_bootstrap=200)
    assert result["accuracy_diff"] == 1.0
    assert (result["accuracy_diff_ci_low"], result["accuracy_diff_ci_high"]) == (1.0, 1.0)
    assert (result["mcnemar_b"], result["mcnemar_c"]) == (0, 100)
    assert result["auc_diff"] == 1.0
    assert result["verdict"] == stats.VERDICT_NON_INFERIOR


def test_ten_against_two_discordant_images():
    labels = np.tile([0, 1], 50)
    baseline_correct = np.arange(100) < 80
    other_correct = baseline_correct.copy()
    other_correct[:10] = False  # b = 10: baseline right, other wrong
    other_correct[80:82] = True  # c = 2: baseline wrong, other right
    result = stats.compare_to_baseline(predictions(labels, baseline_correct), predictions(labels, other_correct))
    assert (result["mcnemar_b"], result["mcnemar_c"]) == (10, 2)
    assert round(result["mcnemar_p"], 4) == 0.0386
    assert result["accuracy_diff"] == pytest.approx(-0.08)
    assert result["accuracy_diff_ci_high"] < 0
    assert result["verdict"] == stats.VERDICT_DEGRADATION


def test_bootstrap_interval_matches_the_normal_approximation():
    n = 2000
    labels = np.tile([0, 1], n // 2)
    baseline_correct = np.arange(n) < 1500
    other_correct = baseline_correct.copy()
    other_correct[:100] = False  # b = 100
    other_correct[1500:1560] = True  # c = 60
    result = stats.compare_to_baseline(predictions(labels, baseline_correct), predictions(labels, other_correct),
                                       n_bootstrap=2000, seed=1)
    difference = (60 - 100) / n
    standard_error = math.sqrt(((100 + 60) / n - difference**2) / n)
    assert result["accuracy_diff"] == pytest.approx(difference)
    assert result["accuracy_diff_ci_low"] == pytest.approx(difference - 1.96 * standard_error, abs=0.002)
    assert result["accuracy_diff_ci_high"] == pytest.approx(difference + 1.96 * standard_error, abs=0.002)


def test_weighted_auc_matches_pairwise_counting_with_ties_and_duplicates():
    scores = np.array([0.1, 0.4, 0.4, 0.35, 0.8, 0.8, 0.2])
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    counts = np.array([[1, 1, 1, 1, 1, 1, 1], [2, 0, 1, 3, 1, 1, 0]])
    for row in counts:
        expanded_scores = np.repeat(scores, row)
        expanded_labels = np.repeat(labels, row)
        positives = expanded_scores[expanded_labels == 1]
        negatives = expanded_scores[expanded_labels == 0]
        pairwise = np.mean([1.0 if p > q else 0.5 if p == q else 0.0
                            for p, q in itertools.product(positives, negatives)])
        assert stats._weighted_auc(scores, labels, row[None, :])[0] == pytest.approx(pairwise)


def test_pairing_uses_seed_and_image_not_row_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    baseline = pd.concat([predictions(labels, rng.random(40) < 0.7, seed=s, probabilities=rng.random(40))
                          for s in (1, 10)], ignore_index=True)
    other = pd.concat([predictions(labels, rng.random(40) < 0.7, seed=s, probabilities=rng.random(40))
                       for s in (1, 10)], ignore_index=True)
    in_order = stats.compare_to_baseline(baseline, other, n_bootstrap=200)
    shuffled = stats.compare_to_baseline(baseline, other.sample(frac=1, random_state=5), n_bootstrap=200)
    assert in_order == shuffled
    assert in_order["n_pairs"] == 80 and in_order["n_seeds"] == 2 and in_order["n_resample_units"] == 40


def test_label_disagreement_is_refused():
    labels = np.array([0, 1, 0, 1])
    other = predictions(labels, np.ones(4, bool))
    other.loc[0, "label"] = 1
    with pytest.raises(ValueError, match="label"):
        stats.compare_to_baseline(predictions(labels, np.ones(4, bool)), other, n_bootstrap=10)


def test_resampling_by_subject_keeps_a_subjects_images_together():
    labels = np.tile([0, 1], 20)
    subjects = [f"p{i // 4}" for i in range(40)]
    baseline = predictions(labels, np.arange(40) < 30, subjects=subjects)
    other = predictions(labels, np.arange(40) < 26, subjects=subjects)
    result = stats.compare_to_baseline(baseline, other, n_bootstrap=200, resample_unit="subject_id")
    assert result["n_resample_units"] == 10
    assert result["accuracy_diff_ci_low"] <= -0.1 <= result["accuracy_diff_ci_high"]


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [
        (-0.005, 0.02, stats.VERDICT_NON_INFERIOR),
        (-0.03, -0.001, stats.VERDICT_DEGRADATION),
        (-0.03, 0.01, stats.VERDICT_INCONCLUSIVE),
        (-0.01, 0.02, stats.VERDICT_INCONCLUSIVE),  # the bound must lie strictly above -margin
    ],
)
def test_verdict_definitions(low, high, verdict):
    assert stats.non_inferiority_verdict(low, high, margin=0.01) == verdict


def summary_rows(runs):
    """A minimal summary: the run keys and statuses comparison_table reads."""
    frame = pd.DataFrame(
        [{"dataset": "rsna", "model": model, "setting": setting, "scale": 1, "seed": seed, "status": status,
          "diverged": status == "diverged"} for model, setting, seed, status in runs]
    )
    return frame


def test_comparison_table_pairs_seeds_that_finished_under_both(tmp_path):
    labels = np.tile([0, 1], 30)
    runs = [("densenet121", "fp32", 1, "completed"), ("densenet121", "fp32", 10, "completed"),
            ("densenet121", "amp", 1, "completed"), ("densenet121", "amp", 10, "missing"),
            ("densenet121", "half_8bit", 1, "diverged"), ("densenet121", "8bit", 1, "missing")]
    for model, setting, seed, status in runs:
        if status == "missing":
            continue
        directory = aggregate.run_dir(tmp_path, "rsna", model, setting, 1, seed)
        directory.mkdir(parents=True)
        correct = np.arange(60) < (45 if setting == "fp32" else 40)
        predictions(labels, correct).drop(columns="seed").assign(subject_id="s").to_csv(
            directory / "predictions.csv", index=False)
    table = stats.comparison_table(tmp_path, summary_rows(runs), "rsna", margin=0.01, n_bootstrap=200)
    rows = table.set_index("setting")
    assert list(table["setting"]) == ["amp", "8bit", "half_8bit"]
    assert rows.loc["amp", "seeds_paired"] == "1"
    assert rows.loc["amp", "accuracy_diff"] == pytest.approx(-5 / 60)
    assert rows.loc["8bit", "verdict"] == "not compared"
    assert "includes diverged runs: half_8bit seed 1" in rows.loc["half_8bit", "note"]

    display = stats.comparison_display_table(table)
    paths = tables.write_tables(display, tmp_path / "out" / "comparison")
    latex = paths["tex"].read_text()
    assert r"$\Delta$ accuracy [CI]" in latex and "Δ" not in latex
    assert "McNemar" in paths["md"].read_text().splitlines()[0]
