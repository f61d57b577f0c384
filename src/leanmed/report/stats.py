"""Paired comparison of each training setting against its model's fp32 baseline on the same test images.

Both settings are evaluated on the same test images with the same seeds, so the comparison is paired: a row is
one (seed, image_id), and its outcome under the baseline and under the other setting are compared directly.

* Accuracy difference (other - baseline) pooled over all paired rows, and ROC AUC difference (mean over seeds of
  the per-seed AUC difference), each with a percentile bootstrap confidence interval. The bootstrap resamples
  test images (by default; ``resample_unit="subject_id"`` resamples patients instead) with replacement and
  keeps every seed's row of a drawn image together, because the test images, not the seeds, are the sample
  the interval is about.
* McNemar's test on the per-row correct/incorrect outcomes: b = baseline correct and other wrong, c = baseline
  wrong and other correct. Exact two-sided binomial test when b + c < 25, otherwise the chi-square statistic
  with continuity correction, (|b - c| - 1)^2 / (b + c) on 1 degree of freedom; the method used is reported.
  Rows of different seeds on the same image are not independent, so with several seeds the p-value is
  optimistic; the bootstrap interval is the primary evidence.
* Verdict on non-inferiority with margin m (accuracy, absolute), from the accuracy-difference interval [lo, hi]:
  - "no degradation beyond the margin" when lo > -m (any loss is smaller than m, with the stated confidence);
  - "possible degradation" when lo <= -m and hi < 0 (the setting is worse than the baseline and a loss of
    m or more cannot be excluded);
  - "inconclusive" when lo <= -m and hi >= 0 (no difference shown, and a loss of m or more not excluded either:
    the test set is too small to decide).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from leanmed.report.aggregate import FINISHED_STATUSES, run_dir
from leanmed.report.environments import describe_environments
from leanmed.report.grouping import group_summary, order_settings

EXACT_MCNEMAR_BELOW = 25  # b + c below this: exact binomial test (the chi-square approximation is poor there)
VERDICT_NON_INFERIOR = "no degradation beyond the margin"
VERDICT_DEGRADATION = "possible degradation"
VERDICT_INCONCLUSIVE = "inconclusive"
PREDICTION_COLUMNS = ("image_id", "label", "probability", "prediction")
_BOOTSTRAP_CHUNK = 256  # resamples drawn at once; bounds memory to chunk x n_images counts


def mcnemar_test(b: int, c: int) -> dict:
    """McNemar's test on the discordant counts b and c (see module docstring for the method rule)."""
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return {"statistic": math.nan, "p_value": 1.0, "method": "no discordant pairs (p = 1)"}
    if n < EXACT_MCNEMAR_BELOW:
        p_value = min(1.0, 2.0 * scipy_stats.binom.cdf(min(b, c), n, 0.5))
        return {"statistic": float(min(b, c)), "p_value": float(p_value), "method": "exact binomial (two-sided)"}
    statistic = max(abs(b - c) - 1, 0) ** 2 / n
    return {
        "statistic": float(statistic),
        "p_value": float(scipy_stats.chi2.sf(statistic, df=1)),
        "method": "chi-square with continuity correction (1 df)",
    }


def non_inferiority_verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """Verdict from the (other - baseline) accuracy interval; definitions in the module docstring."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return VERDICT_INCONCLUSIVE
    if ci_low > -margin:
        return VERDICT_NON_INFERIOR
    if ci_high < 0:
        return VERDICT_DEGRADATION
    return VERDICT_INCONCLUSIVE


def _weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count one half) for each row of ``weights`` (resample counts per image).

    scores, labels: (n,); weights: (r, n). Returns (r,), NaN where a resample has only one class.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    positive = labels[order].astype(float)
    w = weights[:, order].astype(float)
    # Group tied scores so that a positive and a negative with the same score count as half a correct order.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    positive_weight = np.add.reduceat(w * positive, starts, axis=1)
    negative_weight = np.add.reduceat(w * (1.0 - positive), starts, axis=1)
    negatives_below = np.cumsum(negative_weight, axis=1) - negative_weight
    correctly_ordered = (positive_weight * (negatives_below + 0.5 * negative_weight)).sum(axis=1)
    total_pairs = positive_weight.sum(axis=1) * negative_weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total_pairs > 0, correctly_ordered / total_pairs, np.nan)


def _pair(pred_baseline: pd.DataFrame, pred_other: pd.DataFrame, resample_unit: str) -> pd.DataFrame:
    for name, frame in (("baseline", pred_baseline), ("other", pred_other)):
        missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} predictions lack columns {missing}")
    baseline = pred_baseline.copy()
    other = pred_other.copy()
    for frame in (baseline, other):
        if "seed" not in frame.columns:
            frame["seed"] = 0
        frame["image_id"] = frame["image_id"].astype(str)
        if frame.duplicated(["seed", "image_id"]).any():
            raise ValueError("predictions hold an image twice for the same seed")
    keep = ["seed", "image_id", "label", "probability", "prediction"]
    if resample_unit not in ("image_id", "seed"):
        keep.append(resample_unit)
    paired = baseline[keep].merge(
        other[["seed", "image_id", "label", "probability", "prediction"]],
        on=["seed", "image_id"],
        suffixes=("_baseline", "_other"),
        validate="one_to_one",
    )
    if (paired["label_baseline"] != paired["label_other"]).any():
        raise ValueError("the two prediction files disagree on the label of the same image")
    return paired


def compare_to_baseline(
    pred_baseline: pd.DataFrame,
    pred_other: pd.DataFrame,
    margin: float = 0.01,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_unit: str = "image_id",
) -> dict:
    """Paired accuracy/AUC differences (other - baseline) with bootstrap CIs, McNemar's test and a verdict.

    Predictions are frames with image_id, label, probability, prediction and (optionally) seed, pooled over
    seeds and paired by (seed, image_id); rows present in only one frame are left out and counted in
    ``n_unpaired``. See the module docstring for the definitions.
    """
    if resample_unit == "seed" or resample_unit not in pred_baseline.columns:
        raise ValueError(f"cannot resample by {resample_unit!r}: use image_id or a column such as subject_id")
    paired = _pair(pred_baseline, pred_other, resample_unit)
    n_unpaired = len(pred_baseline) + len(pred_other) - 2 * len(paired)
    if paired.empty:
        raise ValueError("no (seed, image_id) appears in both prediction files")
    labels = paired["label_baseline"].to_numpy().astype(int)
    correct_baseline = paired["prediction_baseline"].to_numpy().astype(int) == labels
    correct_other = paired["prediction_other"].to_numpy().astype(int) == labels

    # Resampling units: each drawn unit brings all its rows (every seed of that image, or patient).
    units, unit_of_row = np.unique(paired[resample_unit].astype(str).to_numpy(), return_inverse=True)
    n_units = units.size
    seeds = sorted(paired["seed"].unique())
    row_groups = [np.flatnonzero(paired["seed"].to_numpy() == s) for s in seeds]

    def auc_per_seed(weights_by_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        auc_baseline = []
        auc_other = []
        for rows in row_groups:
            row_weights = weights_by_unit[:, unit_of_row[rows]]
            auc_baseline.append(
                _weighted_auc(paired["probability_baseline"].to_numpy()[rows], labels[rows], row_weights)
            )
            auc_other.append(_weighted_auc(paired["probability_other"].to_numpy()[rows], labels[rows], row_weights))
        return np.mean(auc_baseline, axis=0), np.mean(auc_other, axis=0)

    ones = np.ones((1, n_units))
    point_auc_baseline, point_auc_other = (float(v[0]) for v in auc_per_seed(ones))
    accuracy_baseline = float(correct_baseline.mean())
    accuracy_other = float(correct_other.mean())
    row_difference = correct_other.astype(float) - correct_baseline.astype(float)

    rng = np.random.default_rng(seed)
    accuracy_differences = []
    auc_differences = []
    remaining = int(n_bootstrap)
    while remaining > 0:
        size = min(_BOOTSTRAP_CHUNK, remaining)
        remaining -= size
        draws = rng.integers(0, n_units, size=(size, n_units))
        offsets = (np.arange(size) * n_units)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=size * n_units).reshape(size, n_units)
        row_counts = counts[:, unit_of_row].astype(float)
        accuracy_differences.append(row_counts @ row_difference / row_counts.sum(axis=1))
        auc_baseline, auc_other = auc_per_seed(counts)
        auc_differences.append(auc_other - auc_baseline)
    accuracy_differences = np.concatenate(accuracy_differences) if accuracy_differences else np.array([])
    auc_differences = np.concatenate(auc_differences) if auc_differences else np.array([])

    tail = 100 * (1 - confidence) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return math.nan, math.nan
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    accuracy_low, accuracy_high = interval(accuracy_differences)
    auc_low, auc_high = interval(auc_differences)
    b = int((correct_baseline & ~correct_other).sum())
    c = int((~correct_baseline & correct_other).sum())
    mcnemar = mcnemar_test(b, c)
    return {
        "n_seeds": len(seeds),
        "n_pairs": int(len(paired)),
        "n_unpaired": int(n_unpaired),
        "resample_unit": resample_unit,
        "n_resample_units": int(n_units),
        "n_bootstrap": int(n_bootstrap),
        "confidence": confidence,
        "accuracy_baseline": accuracy_baseline,
        "accuracy_other": accuracy_other,
        "accuracy_diff": accuracy_other - accuracy_baseline,
        "accuracy_diff_ci_low": accuracy_low,
        "accuracy_diff_ci_high": accuracy_high,
        "auc_baseline": point_auc_baseline,
        "auc_other": point_auc_other,
        "auc_diff": point_auc_other - point_auc_baseline,
        "auc_diff_ci_low": auc_low,
        "auc_diff_ci_high": auc_high,
        "mcnemar_b": b,
        "mcnemar_c": c,
        "mcnemar_statistic": mcnemar["statistic"],
        "mcnemar_p": mcnemar["p_value"],
        "mcnemar_method": mcnemar["method"],
        "margin": margin,
        "verdict": non_inferiority_verdict(accuracy_low, accuracy_high, margin),
    }


def load_predictions(runs_root: str | Path, summary: pd.DataFrame, dataset: str, model: str, setting: str,
                     scale: int = 1) -> pd.DataFrame:
    """predictions.csv of every finished seed of one (model, setting), with a ``seed`` column; may be empty."""
    rows = summary[
        (summary["dataset"].astype(str) == str(dataset))
        & (summary["model"].astype(str) == str(model))
        & (summary["setting"].astype(str) == str(setting))
        & (summary["scale"].astype(int) == int(scale))
        & summary["status"].isin(FINISHED_STATUSES)
    ]
    frames = []
    for seed in rows["seed"]:
        path = run_dir(runs_root, dataset, model, setting, scale, seed) / "predictions.csv"
        if path.is_file():
            frame = pd.read_csv(path, dtype={"image_id": str, "subject_id": str})
            frames.append(frame.assign(seed=int(seed)))
    if not frames:
        return pd.DataFrame(columns=[*PREDICTION_COLUMNS, "subject_id", "seed"])
    return pd.concat(frames, ignore_index=True)


def comparison_table(
    runs_root: str | Path,
    summary: pd.DataFrame,
    dataset: str,
    margin: float = 0.01,
    scale: int = 1,
    baseline_setting: str = "fp32",
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_unit: str = "image_id",
) -> pd.DataFrame:
    """Every non-baseline setting of every model against that model's baseline, one row each.

    Only seeds finished under both settings and having predictions.csv are paired (listed in
    ``seeds_paired``); a comparison that cannot be made keeps its row with NaN numbers and a ``note``.
    """
    rows = summary[(summary["dataset"].astype(str) == str(dataset)) & (summary["scale"].astype(int) == int(scale))]
    records = []
    for model in dict.fromkeys(rows["model"]):
        model_rows = rows[rows["model"] == model]
        settings = [s for s in order_settings(model_rows["setting"]) if s != baseline_setting]
        baseline_predictions = load_predictions(runs_root, summary, dataset, model, baseline_setting, scale)
        for setting in settings:
            record = {"dataset": dataset, "scale": scale, "model": model, "setting": setting,
                      "baseline": baseline_setting, "margin": margin}
            other_predictions = load_predictions(runs_root, summary, dataset, model, setting, scale)
            common_seeds = sorted(set(baseline_predictions["seed"]) & set(other_predictions["seed"]))
            record["seeds_paired"] = " ".join(str(s) for s in common_seeds)
            if not common_seeds:
                record["note"] = (
                    f"no seed with predictions under both {baseline_setting} and {setting}"
                )
                record["verdict"] = "not compared"
                records.append(record)
                continue
            unit = resample_unit
            if unit not in baseline_predictions.columns:
                unit = "image_id"
            result = compare_to_baseline(
                baseline_predictions[baseline_predictions["seed"].isin(common_seeds)],
                other_predictions[other_predictions["seed"].isin(common_seeds)],
                margin=margin,
                n_bootstrap=n_bootstrap,
                seed=seed,
                confidence=confidence,
                resample_unit=unit,
            )
            record.update(result)
            diverged_seeds = summary[
                (summary["dataset"].astype(str) == str(dataset))
                & (summary["model"] == model)
                & (summary["setting"].isin([setting, baseline_setting]))
                & (summary["scale"].astype(int) == int(scale))
                & (summary["seed"].isin(common_seeds))
                & summary["diverged"].map(bool)
            ]
            notes = []
            if unit != resample_unit:
                notes.append(f"no {resample_unit} column; resampled image_id")
            if not diverged_seeds.empty:
                notes.append(
                    "includes diverged runs: "
                    + ", ".join(f"{r.setting} seed {r.seed}" for r in diverged_seeds.itertuples())
                )
            if result["n_unpaired"]:
                notes.append(f"{result['n_unpaired']} prediction rows without a partner left out")
            record["note"] = "; ".join(notes)
            records.append(record)
    table = pd.DataFrame(records)
    environments = (describe_environments(group_summary(summary, dataset=dataset, scale=scale)) if not rows.empty
                    else "unknown")
    table.attrs["caption"] = comparison_caption(dataset, scale, baseline_setting, margin, n_bootstrap, confidence,
                                                resample_unit) + f" The runs were measured on: {environments}."
    return table


def comparison_caption(dataset: str, scale: int, baseline_setting: str, margin: float, n_bootstrap: int,
                       confidence: float, resample_unit: str) -> str:
    level = f"{100 * confidence:g}%"
    return (
        f"Dataset {dataset}, S={scale}: each setting against the same model's {baseline_setting} baseline on the "
        f"same test images, paired by (seed, image) over the seeds listed in 'seeds paired' (pooled). "
        f"Accuracy difference = other - baseline (fraction of test images, pooled over seeds); AUC difference = "
        f"mean over seeds of the per-seed ROC AUC difference. {level} CIs: percentile bootstrap, {n_bootstrap} "
        f"resamples of test {resample_unit.replace('_id', 's')} (all seeds of a drawn unit kept together). "
        f"McNemar: b = baseline right and other wrong, c = the reverse; exact two-sided binomial test when "
        f"b + c < {EXACT_MCNEMAR_BELOW}, else chi-square with continuity correction (method given per row; rows "
        f"of different seeds share images, so p is optimistic with several seeds). Verdict with margin "
        f"{margin:g} (absolute accuracy): '{VERDICT_NON_INFERIOR}' when the CI lower bound > -{margin:g}; "
        f"'{VERDICT_DEGRADATION}' when the lower bound <= -{margin:g} and the upper bound < 0; "
        f"'{VERDICT_INCONCLUSIVE}' otherwise."
    )


def _format_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _format_difference(value: float, low: float, high: float) -> str:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (value, low, high)):
        return "n/a"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def comparison_display_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison table with formatted cells, for write_tables; keeps the caption."""
    columns = ("model", "setting", "seeds_paired", "verdict", "accuracy_diff", "accuracy_diff_ci_low",
               "accuracy_diff_ci_high", "auc_diff", "auc_diff_ci_low", "auc_diff_ci_high", "mcnemar_b", "mcnemar_c",
               "mcnemar_p", "mcnemar_method", "n_pairs", "note")
    comparison = comparison.reindex(columns=[*comparison.columns, *(c for c in columns if c not in comparison)])
    display = pd.DataFrame(
        {
            "Model": comparison["model"],
            "Setting": comparison["setting"],
            "Seeds paired": comparison["seeds_paired"],
            "Paired rows": [("n/a" if pd.isna(n) else str(int(n))) for n in comparison["n_pairs"]],
            "Δ accuracy [CI]": [
                _format_difference(v, lo, hi)
                for v, lo, hi in zip(comparison["accuracy_diff"], comparison["accuracy_diff_ci_low"],
                                     comparison["accuracy_diff_ci_high"])
            ],
            "Δ AUC [CI]": [
                _format_difference(v, lo, hi)
                for v, lo, hi in zip(comparison["auc_diff"], comparison["auc_diff_ci_low"],
                                     comparison["auc_diff_ci_high"])
            ],
            "McNemar b/c": [
                "n/a" if pd.isna(b) else f"{int(b)}/{int(c)}"
                for b, c in zip(comparison["mcnemar_b"], comparison["mcnemar_c"])
            ],
            "McNemar p": [_format_p(p) for p in comparison["mcnemar_p"]],
            "McNemar method": comparison["mcnemar_method"].fillna("n/a"),
            "Verdict": comparison["verdict"],
            "Note": comparison["note"].fillna(""),
        }
    )
    display.attrs["caption"] = comparison.attrs.get("caption")
    return display
