"""Which (model, setting) pairs are worth running: the Pareto front over accuracy and three costs.

Objectives, on the per-(model, setting) means over finished seeds: test accuracy (higher is better), training
energy (Wh, PUE-adjusted; lower is better), training-phase peak memory (GB; lower) and inference time over the
test set (s; lower). A pair is dominated when another pair is at least as good on every objective and strictly
better on one. When any pair lacks an energy value, energy is replaced by total training time for every pair
(comparing one pair's energy with another's time would be meaningless); ``attrs["cost_label"]`` and the
caption say so. Nothing is imputed: a pair missing any objective is listed with ``non_dominated`` empty.
"""

from __future__ import annotations

import pandas as pd

from leanmed.report.captions import describe_memory_kinds
from leanmed.report.environments import describe_environments
from leanmed.report.grouping import group_summary, order_settings

ENERGY_COLUMN = "energy_wh_mean"
TIME_FALLBACK_COLUMN = "train_time_total_s_mean"
ENERGY_LABEL = "training energy E (Wh, PUE-adjusted)"
TIME_FALLBACK_LABEL = "total training time (s), standing in for energy, which is not available for every pair"


def objectives(cost_column: str) -> tuple[tuple[str, str], ...]:
    """(column, direction) pairs; direction "max" means larger is better."""
    return (
        ("accuracy_mean", "max"),
        (cost_column, "min"),
        ("train_peak_gb_mean", "min"),
        ("inference_test_set_seconds_mean", "min"),
    )


def dominates(first: pd.Series, second: pd.Series, criteria) -> bool:
    """True when ``first`` is at least as good as ``second`` on every criterion and better on one."""
    at_least_as_good = True
    strictly_better = False
    for column, direction in criteria:
        a, b = float(first[column]), float(second[column])
        better, worse = (a > b, a < b) if direction == "max" else (a < b, a > b)
        if worse:
            at_least_as_good = False
            break
        strictly_better |= better
    return at_least_as_good and strictly_better


def _flag_front(pairs: pd.DataFrame, criteria) -> tuple[list, list]:
    """Non-dominated flag and the labels of dominating pairs for every row (None for incomplete rows)."""
    complete = pairs[[column for column, _ in criteria]].notna().all(axis=1)
    flags, dominated_by = [], []
    for index, row in pairs.iterrows():
        if not complete[index]:
            flags.append(None)
            dominated_by.append("")
            continue
        dominators = [
            f"{other['model']}/{other['setting']}"
            for other_index, other in pairs[complete].iterrows()
            if other_index != index and dominates(other, row, criteria)
        ]
        flags.append(not dominators)
        dominated_by.append(", ".join(dominators))
    return flags, dominated_by


def pareto_front(summary: pd.DataFrame, dataset: str, scale: int = 1) -> pd.DataFrame:
    """All (model, setting) pairs of one dataset with their objective means and non-dominated flags.

    ``non_dominated`` is over all pairs of the dataset; ``non_dominated_within_model`` compares only the
    settings of the same model; ``dominated_by`` names the pairs that dominate a row.
    """
    groups = group_summary(summary, dataset=dataset, scale=scale)
    if groups.empty:
        raise ValueError(f"summary has no runs for dataset {dataset!r} at scale {scale}")
    setting_order = order_settings(groups["setting"])
    model_order = list(dict.fromkeys(groups["model"]))
    groups = groups.assign(
        _model_rank=groups["model"].map(model_order.index), _setting_rank=groups["setting"].map(setting_order.index)
    ).sort_values(["_model_rank", "_setting_rank"], kind="stable").drop(columns=["_model_rank", "_setting_rank"])
    groups = groups.reset_index(drop=True)

    with_results = groups["accuracy_n"] > 0
    energy_everywhere = bool(with_results.any()) and bool((groups.loc[with_results, "energy_n"] > 0).all())
    cost_column = ENERGY_COLUMN if energy_everywhere else TIME_FALLBACK_COLUMN
    cost_label = ENERGY_LABEL if energy_everywhere else TIME_FALLBACK_LABEL
    criteria = objectives(cost_column)

    front = groups[
        [
            "dataset", "scale", "model", "setting", "n_expected", "n_finished", "n_diverged", "runs_not_completed",
            "accuracy_mean", "accuracy_std", "accuracy_n", ENERGY_COLUMN, "energy_n", "energy_n_estimated",
            "energy_assumed_power_w",
            TIME_FALLBACK_COLUMN, "train_peak_gb_mean", "inference_test_set_seconds_mean", "memory_kind", "device",
            "device_name", "environment",
        ]
    ].copy()
    front["cost_column"] = cost_column
    flags, dominated_by = _flag_front(front, criteria)
    # Object dtype keeps True/False/None (None: an objective is missing) rather than coercing None to False.
    front["non_dominated"] = pd.Series(flags, index=front.index, dtype=object)
    front["dominated_by"] = dominated_by
    within_model = pd.Series([None] * len(front), index=front.index, dtype=object)
    for _, model_pairs in front.groupby("model", sort=False):
        flags, _ = _flag_front(model_pairs, criteria)
        within_model.loc[model_pairs.index] = flags
    front["non_dominated_within_model"] = within_model

    estimated = energy_everywhere and int(front["energy_n_estimated"].sum()) > 0
    if estimated:
        cost_label += ", est. (an assumed constant power x time where no energy counter was read)"
    front.attrs["cost_column"] = cost_column
    front.attrs["cost_label"] = cost_label
    front.attrs["energy_fallback"] = not energy_everywhere
    front.attrs["caption"] = (
        f"Dataset {dataset}, S={scale}: every (model, setting) pair with its means over finished seeds "
        f"({int(front['n_finished'].sum())} of {int(front['n_expected'].sum())} expected runs finished). "
        f"Objectives: test accuracy (higher is better); {cost_label} (lower); peak training memory in GB of 1e9 "
        f"bytes ({describe_memory_kinds(groups)}; lower); inference time over the test set in s (lower). "
        f"non_dominated: no other pair is at least as good on all four and better on one (empty: an objective "
        f"is missing, nothing imputed); non_dominated_within_model compares the settings of one model only. "
        f"Measured on: {describe_environments(groups, keyed='column environment')}."
    )
    return front
