"""One row per (dataset, model, setting, scale), from the tidy rows of ``summary.csv`` (``leanmed.report.aggregate``).

``group_summary``: the means over the seeds that finished, the numbers every table, figure and Pareto front shows;
energy that is (partly) an assumed constant power x time is counted apart (``energy_is_estimate``), and several
runs' energy methods are joined whole (``split_methods`` splits them back). ``order_settings``: the order the
settings' rows go in, the paper's five first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from leanmed.report.aggregate import FINISHED_STATUSES, as_boolean
from leanmed.report.environments import joined_environments

# Energy method texts contain "; " themselves: several runs' methods are joined with this instead, and split back
# with ``split_methods``, so a caption prints each method whole.
METHOD_SEPARATOR = " || "

GIGABYTE = 1e9  # decimal gigabytes, stated in every caption that uses them
WH_PER_KWH = 1000.0


def ordered_unique(values: Iterable) -> list:
    ordered = []
    for value in values:
        if value not in ordered:
            ordered.append(value)
    return ordered


def _joined_unique(series: pd.Series, separator: str = "; ") -> str:
    values = ordered_unique(str(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v)))
    return separator.join(values)


def split_methods(texts: Iterable) -> list[str]:
    """The distinct energy methods in joined ``energy_method`` cells, each whole, in order of appearance."""
    methods = []
    for text in texts:
        if text is None or (isinstance(text, float) and math.isnan(text)):
            continue
        for method in str(text).split(METHOD_SEPARATOR):
            method = method.strip()
            if method and method != "nan" and method not in methods:
                methods.append(method)
    return methods


_CONSTANT_POWER_TEXT = "constant power of"


def energy_is_estimate(estimated, measured, method) -> bool:
    """True when a run's energy figure is (partly) an assumed constant power x time rather than a counter reading:
    ``estimated`` when the run recorded it; for older metrics.json without it, a method text that states an
    assumed constant power, or a value without the ``measured`` flag."""
    flag = as_boolean(estimated)
    if flag is not None:
        return flag
    if method is not None and _CONSTANT_POWER_TEXT in str(method):
        return True
    return as_boolean(measured) is not True


def _mean_std_n(series: pd.Series) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count of the non-null values."""
    values = pd.to_numeric(series, errors="coerce").dropna()
    n = int(values.size)
    if n == 0:
        return math.nan, math.nan, 0
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    return float(values.mean()), std, n


def group_summary(summary: pd.DataFrame, dataset: str | None = None, scale: int | None = None) -> pd.DataFrame:
    """One row per (dataset, model, setting, scale) with means over the seeds that finished.

    Finished runs are "completed" and "diverged" ones: a diverged run still reports the metrics of its best
    checkpoint, and the paper includes such runs in its means and marks them with ``*``; here ``n_diverged``
    carries that mark. Missing and unreadable runs count in ``n_expected`` and are listed in ``runs_not_completed``.
    Each mean ignores null values, and ``*_n`` says over how many seeds it was taken.
    """
    rows = summary
    if dataset is not None:
        rows = rows[rows["dataset"].astype(str) == str(dataset)]
    if scale is not None:
        rows = rows[rows["scale"].astype(int) == int(scale)]
    group_keys = ["dataset", "model", "setting", "scale"]
    records = []
    for key, group in rows.groupby(group_keys, sort=False, dropna=False):
        finished = group[group["status"].isin(FINISHED_STATUSES)]
        record = dict(zip(group_keys, key))
        issues = [
            f"seed {seed}: {status}"
            for seed, status, diverged in zip(group["seed"], group["status"], group["diverged"])
            if status != "completed" or bool(diverged)
        ]
        record.update(
            n_expected=len(group),
            n_finished=len(finished),
            n_completed=int((group["status"] == "completed").sum()),
            n_diverged=int(group["diverged"].map(bool).sum()),
            n_missing=int((group["status"] == "missing").sum()),
            n_unreadable=int((group["status"] == "unreadable").sum()),
            seeds_expected=" ".join(str(s) for s in group["seed"]),
            seeds_finished=" ".join(str(s) for s in finished["seed"]),
            runs_not_completed="; ".join(issues),
        )
        for column, name in (
            ("test_accuracy", "accuracy"),
            ("test_roc_auc", "roc_auc"),
            ("test_balanced_accuracy", "balanced_accuracy"),
            ("n_parameters_millions", "n_parameters_millions"),
            ("train_peak_bytes", "train_peak_bytes"),
            ("inference_peak_bytes", "inference_peak_bytes"),
            ("time_to_best_s", "time_to_best_s"),
            ("train_time_total_s", "train_time_total_s"),
            ("inference_test_set_seconds", "inference_test_set_seconds"),
            ("per_image_latency_ms", "per_image_latency_ms"),
        ):
            source = finished[column] if column in finished else pd.Series(dtype=float)
            mean, std, n = _mean_std_n(source)
            record[f"{name}_mean"] = mean
            record[f"{name}_std"] = std
            record[f"{name}_n"] = n

        # Energy: a value is "measured" when only real counters (RAPL, NVML) were read; an "estimate" when any part
        # of it is carbontracker's assumed constant power x time (energy.train.estimated). Both are kept apart so
        # callers can say which they show.
        energy = pd.to_numeric(finished.get("energy_train_kwh_pue", pd.Series(dtype=float)), errors="coerce")
        empty = pd.Series(index=finished.index, dtype=object)
        estimated = pd.Series(
            [energy_is_estimate(e, m, t) for e, m, t in zip(finished.get("energy_estimated", empty),
                                                           finished.get("energy_measured", empty),
                                                           finished.get("energy_method", empty))],
            index=finished.index, dtype=bool,
        )
        measured = ~estimated
        has_value = energy.notna()
        record["energy_wh_mean"] = float(energy[has_value].mean() * WH_PER_KWH) if has_value.any() else math.nan
        record["energy_wh_std"] = (
            float(energy[has_value].std(ddof=1) * WH_PER_KWH) if has_value.sum() > 1 else math.nan
        )
        record["energy_n"] = int(has_value.sum())
        record["energy_n_measured"] = int((has_value & measured).sum())
        record["energy_n_estimated"] = int((has_value & ~measured).sum())
        record["energy_pue"] = _joined_unique(finished.get("energy_pue", pd.Series(dtype=object)))
        methods = finished.get("energy_method", pd.Series(index=finished.index, dtype=object))
        record["energy_method"] = _joined_unique(methods[has_value & measured], METHOD_SEPARATOR)
        record["energy_estimate_method"] = _joined_unique(methods[has_value & ~measured], METHOD_SEPARATOR)
        powers = pd.to_numeric(finished.get("energy_assumed_power_w", empty), errors="coerce")[has_value & estimated]
        record["energy_assumed_power_w"] = _joined_unique(powers.dropna().map(lambda w: f"{w:g}"))

        record["train_peak_gb_mean"] = record["train_peak_bytes_mean"] / GIGABYTE
        record["train_peak_gb_std"] = record["train_peak_bytes_std"] / GIGABYTE
        for flag in ("8bit", "amp", "half"):
            column = f"paper_flag_{flag}"
            values = [as_boolean(v) for v in finished.get(column, pd.Series(dtype=object))]
            values = [v for v in values if v is not None]
            record[column] = values[0] if values else None
        for column in ("memory_kind", "device", "device_name", "weight_dtype", "autocast_dtype", "optimizer_class",
                       "step", "step_requested", "step_applied"):
            record[column] = _joined_unique(finished.get(column, pd.Series(dtype=object)))
        record["environment"] = joined_environments(finished)
        records.append(record)
    return pd.DataFrame(records)


# The paper's five settings in its row order; registry names first, the paper's word "baseline" as an alias.
PAPER_SETTING_ORDER = ("fp32", "amp", "8bit", "amp_8bit", "half_8bit")
SETTING_ALIASES = {"baseline": "fp32"}


def setting_sort_key(setting: str) -> tuple[int, str]:
    """Paper settings in the paper's order, then every other setting alphabetically."""
    canonical = SETTING_ALIASES.get(str(setting), str(setting))
    if canonical in PAPER_SETTING_ORDER:
        return PAPER_SETTING_ORDER.index(canonical), ""
    return len(PAPER_SETTING_ORDER), str(setting)


def order_settings(settings: Iterable[str]) -> list[str]:
    return sorted(ordered_unique(settings), key=setting_sort_key)

