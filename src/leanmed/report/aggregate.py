"""Collect every expected training run into one tidy table (``summary.csv``).

One row per *expected* run, whether or not it produced a ``metrics.json``: a run that is missing, unreadable or
diverged keeps its row and says so in ``status`` / ``status_reason``, so that no table or figure downstream can
silently summarise fewer runs than the study planned.

``group_summary`` then reduces the tidy rows to one row per (dataset, model, setting, scale), the numbers every
table, figure and Pareto front is drawn from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

RUN_KEYS = ("dataset", "model", "setting", "scale", "seed")

# Statuses a metrics.json may declare, and the two the aggregator adds for runs without a usable file.
FINISHED_STATUSES = ("completed", "diverged")
STATUSES = ("completed", "diverged", "missing", "unreadable")

SUPPORTED_SCHEMA_VERSIONS = (1,)

# (path inside metrics.json) -> summary column. The order here is the column order of summary.csv.
METRIC_COLUMNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("run", "timm_name"), "timm_name"),
    (("setting", "device"), "device"),
    (("setting", "weight_dtype"), "weight_dtype"),
    (("setting", "autocast_dtype"), "autocast_dtype"),
    (("setting", "grad_scaler"), "grad_scaler"),
    (("setting", "optimizer_class"), "optimizer_class"),
    (("setting", "optimizer_state_bits"), "optimizer_state_bits"),
    (("setting", "step", "label"), "step"),
    (("setting", "step", "requested"), "step_requested"),
    (("setting", "step", "applied"), "step_applied"),
    (("setting", "paper_flags", "8bit"), "paper_flag_8bit"),
    (("setting", "paper_flags", "amp"), "paper_flag_amp"),
    (("setting", "paper_flags", "half"), "paper_flag_half"),
    (("model", "n_parameters"), "n_parameters"),
    (("model", "n_parameters_millions"), "n_parameters_millions"),
    (("model", "image_size"), "image_size"),
    (("model", "input_size"), "input_size"),
    (("training", "epochs_run"), "epochs_run"),
    (("training", "best_epoch"), "best_epoch"),
    (("training", "early_stopped"), "early_stopped"),
    (("training", "max_epochs"), "max_epochs"),
    (("training", "patience"), "patience"),
    (("training", "time_to_best_s"), "time_to_best_s"),
    (("training", "train_time_total_s"), "train_time_total_s"),
    (("training", "validation_time_total_s"), "validation_time_total_s"),
    (("training", "lr"), "lr"),
    (("training", "batch_size"), "batch_size"),
    (("training", "resumed"), "resumed"),
    (("test", "checkpoint"), "test_checkpoint"),
    (("test", "n_images"), "test_n_images"),
    (("test", "threshold"), "test_threshold"),
    (("test", "accuracy"), "test_accuracy"),
    (("test", "roc_auc"), "test_roc_auc"),
    (("test", "sensitivity"), "test_sensitivity"),
    (("test", "specificity"), "test_specificity"),
    (("test", "balanced_accuracy"), "test_balanced_accuracy"),
    (("test", "loss"), "test_loss"),
    (("memory", "kind"), "memory_kind"),
    (("memory", "train_peak_bytes"), "train_peak_bytes"),
    (("memory", "inference_peak_bytes"), "inference_peak_bytes"),
    (("memory", "train_peak_reserved_bytes"), "train_peak_reserved_bytes"),
    (("memory", "inference_peak_reserved_bytes"), "inference_peak_reserved_bytes"),
    (("memory", "weights_bytes"), "weights_bytes"),
    (("memory", "gradients_bytes"), "gradients_bytes"),
    (("memory", "optimizer_state_bytes"), "optimizer_state_bytes"),
    (("inference", "test_set_seconds"), "inference_test_set_seconds"),
    (("inference", "batch_size"), "inference_batch_size"),
    (("inference", "per_image_latency_ms"), "per_image_latency_ms"),
    (("inference", "repeats"), "inference_repeats"),
    (("inference", "warmup"), "inference_warmup"),
    (("energy", "train", "measured"), "energy_measured"),
    (("energy", "train", "estimated"), "energy_estimated"),
    (("energy", "train", "assumed_power_w"), "energy_assumed_power_w"),
    (("energy", "train", "energy_kwh"), "energy_train_kwh"),
    (("energy", "train", "energy_kwh_pue"), "energy_train_kwh_pue"),
    (("energy", "train", "pue"), "energy_pue"),
    (("energy", "train", "co2eq_g"), "co2eq_g"),
    (("energy", "train", "components"), "energy_components"),
    (("energy", "train", "method"), "energy_method"),
    (("energy", "train", "note"), "energy_note"),
    (("energy", "inference", "measured"), "energy_inference_measured"),
    (("energy", "inference", "estimated"), "energy_inference_estimated"),
    (("energy", "inference", "energy_kwh"), "energy_inference_kwh"),
    (("energy", "inference", "energy_kwh_pue"), "energy_inference_kwh_pue"),
    (("energy", "inference", "pue"), "energy_inference_pue"),
    (("energy", "inference", "co2eq_g"), "co2eq_inference_g"),
    (("energy", "inference", "components"), "energy_inference_components"),
    (("energy", "inference", "method"), "energy_inference_method"),
    (("energy", "inference", "note"), "energy_inference_note"),
    (("provenance", "host"), "host"),
    (("provenance", "device_name"), "device_name"),
    (("provenance", "torch"), "torch_version"),
    (("provenance", "timm"), "timm_version"),
    (("provenance", "bitsandbytes"), "bitsandbytes_version"),
    (("provenance", "cuda"), "cuda_version"),
    (("provenance", "python"), "python_version"),
    (("provenance", "git_revision"), "git_revision"),
    (("provenance", "config_hash"), "config_hash"),
)

LEADING_COLUMNS = (*RUN_KEYS, "status", "status_reason", "diverged", "schema_version")
TRAILING_COLUMNS = ("run_dir",)
# Sections whose leaves are not per-run measurements (definitions are prose) or are already the row's keys.
_SECTIONS_NOT_FLATTENED = {"definitions", "schema_version", "status", "diverged"}
# Columns that hold booleans; a CSV round trip turns them into text, read_summary turns them back.
BOOLEAN_COLUMNS = (
    "diverged",
    "grad_scaler",
    "paper_flag_8bit",
    "paper_flag_amp",
    "paper_flag_half",
    "early_stopped",
    "resumed",
    "energy_measured",
    "energy_estimated",
    "energy_inference_measured",
    "energy_inference_estimated",
)
# Energy method texts contain "; " themselves: several runs' methods are joined with this instead, and split back
# with ``split_methods``, so a caption prints each method whole.
METHOD_SEPARATOR = " || "

GIGABYTE = 1e9  # decimal gigabytes, stated in every caption that uses them
WH_PER_KWH = 1000.0


class UnreadableMetrics(ValueError):
    """A metrics.json exists but cannot be used; the message becomes the row's status_reason."""


def run_dir(runs_root: str | Path, dataset: str, model: str, setting: str, scale: int, seed: int) -> Path:
    """The directory one training job writes (see docs/architecture.md)."""
    return Path(runs_root) / str(dataset) / str(model) / str(setting) / f"s{int(scale)}" / f"seed{int(seed)}"


def _leaf(value):
    """A metrics.json leaf as one table cell: lists are joined because a cell holds one value."""
    if isinstance(value, list):
        return "+".join(str(item) for item in value)
    return value


def _lookup(document: Mapping, path: tuple[str, ...]):
    node = document
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _walk_leaves(node, prefix: tuple[str, ...]):
    if isinstance(node, Mapping):
        for key, child in node.items():
            yield from _walk_leaves(child, (*prefix, str(key)))
    else:
        yield prefix, node


def flatten_metrics(metrics: Mapping) -> dict:
    """Flatten one metrics.json into {readable column name: value}.

    Known fields get the names in METRIC_COLUMNS; any further leaf (a field added to the contract later, a
    section's ``note``) is kept under its joined path, e.g. ``memory_note``, so nothing a run recorded is lost.
    """
    flat = {column: _leaf(_lookup(metrics, path)) for path, column in METRIC_COLUMNS}
    # setting.name repeats the row's own setting key, which collect has already checked against run.setting.
    known_paths = {path for path, _ in METRIC_COLUMNS} | {("setting", "name")} | {("run", key) for key in RUN_KEYS}
    for section, content in metrics.items():
        if section in _SECTIONS_NOT_FLATTENED:
            continue
        for path, value in _walk_leaves(content, (section,)):
            if path in known_paths:
                continue
            column = "_".join(path)
            if column in flat or column in LEADING_COLUMNS:
                column = "extra_" + column
            flat[column] = _leaf(value)
    return flat


def _check_metrics(metrics, expected: Mapping) -> None:
    """Raise UnreadableMetrics when the file cannot stand for the expected run."""
    if not isinstance(metrics, Mapping):
        raise UnreadableMetrics(f"top level is {type(metrics).__name__}, not an object")
    version = metrics.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnreadableMetrics(
            f"schema_version {version!r} not supported (expected one of {SUPPORTED_SCHEMA_VERSIONS})"
        )
    status = metrics.get("status")
    if status not in FINISHED_STATUSES:
        raise UnreadableMetrics(f"status {status!r} is not one of {FINISHED_STATUSES}")
    run = metrics.get("run")
    if not isinstance(run, Mapping):
        raise UnreadableMetrics("no 'run' section")
    # A file copied into the wrong directory would otherwise be counted as another run's result.
    for key in RUN_KEYS:
        recorded = run.get(key)
        if recorded is None or str(recorded) != str(expected[key]):
            raise UnreadableMetrics(f"run.{key} is {recorded!r} but the directory is for {expected[key]!r}")


def _expected_key(run: Mapping) -> tuple:
    missing = [key for key in RUN_KEYS if key not in run]
    if missing:
        raise KeyError(f"expected run {dict(run)} lacks {missing}")
    return (str(run["dataset"]), str(run["model"]), str(run["setting"]), int(run["scale"]), int(run["seed"]))


def collect(expected_runs: Iterable[Mapping], runs_root: str | Path) -> pd.DataFrame:
    """One tidy row per expected run, in the order given (duplicates collapsed).

    ``status`` is "completed" or "diverged" (from metrics.json), "missing" (no metrics.json) or "unreadable"
    (the file exists but is not valid JSON or does not match the contract or its directory); ``status_reason``
    says why for the last two. ``diverged`` is True when the run reported a NaN/inf loss (the paper's ``*``).
    """
    rows = []
    seen = set()
    for run in expected_runs:
        key = _expected_key(run)
        if key in seen:
            continue
        seen.add(key)
        expected = dict(zip(RUN_KEYS, key))
        directory = run_dir(runs_root, *key)
        metrics_path = directory / "metrics.json"
        row = {**expected, "status_reason": None, "diverged": False, "schema_version": None}
        if not metrics_path.is_file():
            row.update(status="missing", status_reason=f"no metrics.json in {directory}")
        else:
            try:
                metrics = json.loads(metrics_path.read_text())
                _check_metrics(metrics, expected)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, UnreadableMetrics) as error:
                row.update(status="unreadable", status_reason=f"{metrics_path}: {error}")
            else:
                row.update(flatten_metrics(metrics))
                diverged = bool(metrics.get("diverged")) or metrics["status"] == "diverged"
                row.update(
                    status=metrics["status"],
                    diverged=diverged,
                    schema_version=metrics["schema_version"],
                    status_reason="NaN/inf loss during training" if diverged else None,
                )
        row["run_dir"] = str(directory)
        rows.append(row)

    known_columns = [*LEADING_COLUMNS, *(column for _, column in METRIC_COLUMNS)]
    frame = pd.DataFrame(rows)
    extra_columns = [c for c in frame.columns if c not in known_columns and c not in TRAILING_COLUMNS]
    frame = frame.reindex(columns=[*known_columns, *sorted(extra_columns), *TRAILING_COLUMNS])
    frame["scale"] = frame["scale"].astype("int64")
    frame["seed"] = frame["seed"].astype("int64")
    frame["diverged"] = frame["diverged"].astype(bool)
    return frame


def write_summary(summary: pd.DataFrame, path: str | Path) -> Path:
    """Write summary.csv (one row per expected run; units are in the column names: _bytes, _s, _kwh, _ms, _g)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(path, index=False)
    return path


def _as_boolean(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0"):
        return True
    if text in ("false", "0", "0.0"):
        return False
    return None


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read summary.csv back with its boolean columns as True/False/None rather than text."""
    summary = pd.read_csv(path)
    for column in BOOLEAN_COLUMNS:
        if column in summary.columns:
            summary[column] = summary[column].map(_as_boolean).astype(object)
    summary["diverged"] = summary["diverged"].map(bool)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Reduction to one row per (dataset, model, setting, scale)


def _ordered_unique(values: Iterable) -> list:
    ordered = []
    for value in values:
        if value not in ordered:
            ordered.append(value)
    return ordered


def _joined_unique(series: pd.Series, separator: str = "; ") -> str:
    values = _ordered_unique(str(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v)))
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
    flag = _as_boolean(estimated)
    if flag is not None:
        return flag
    if method is not None and _CONSTANT_POWER_TEXT in str(method):
        return True
    return _as_boolean(measured) is not True


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
            values = [_as_boolean(v) for v in finished.get(column, pd.Series(dtype=object))]
            values = [v for v in values if v is not None]
            record[column] = values[0] if values else None
        for column in ("memory_kind", "device", "device_name", "weight_dtype", "autocast_dtype", "optimizer_class",
                       "step", "step_requested", "step_applied"):
            record[column] = _joined_unique(finished.get(column, pd.Series(dtype=object)))
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
    return sorted(_ordered_unique(settings), key=setting_sort_key)


def describe_devices(groups: pd.DataFrame) -> str:
    """"cuda (NVIDIA H100)"-style list of the devices the summarised runs ran on, or "unknown"."""
    pairs = []
    for device, name in zip(groups.get("device", []), groups.get("device_name", [])):
        for single_device, single_name in zip(str(device).split("; "), str(name).split("; ")):
            if not single_device or single_device == "nan":
                continue
            label = f"{single_device} ({single_name})" if single_name and single_name != "nan" else single_device
            pairs.append(label)
    pairs = _ordered_unique(pairs)
    return ", ".join(pairs) if pairs else "unknown (no finished run)"


MEMORY_KIND_DESCRIPTIONS = {
    "cuda_max_memory_allocated_bytes": "GPU memory: torch.cuda.max_memory_allocated during the training phase",
    "cpu_peak_rss_bytes": "CPU memory: peak resident set size (RSS) of the training process",
}


def describe_memory_kinds(groups: pd.DataFrame) -> str:
    kinds = _ordered_unique(
        kind for text in groups.get("memory_kind", []) for kind in str(text).split("; ") if kind and kind != "nan"
    )
    if not kinds:
        return "kind unknown (no finished run)"
    descriptions = [MEMORY_KIND_DESCRIPTIONS.get(kind, kind) for kind in kinds]
    if len(kinds) > 1:
        return "MIXED across runs, not comparable: " + "; ".join(descriptions)
    return descriptions[0]


# The training step's speed options (setting.step in metrics.json) as captions print them; the same names as
# leanmed.train.settings.STEP_OPTIONS (not imported: the report does not need torch), and why one may not apply.
STEP_OPTION_NAMES = {"channels_last": "channels_last", "cudnn_benchmark": "cudnn.benchmark",
                     "fused_adam": "fused Adam", "compile": "torch.compile"}
STEP_OPTION_LIMITS = {"cudnn_benchmark": "CUDA only", "fused_adam": "CUDA and torch Adam only"}
EAGER_STEP = "eager (paper)"


def _step_options(text) -> set[str]:
    """Option names of a step_requested / step_applied cell ("+"-joined per run, "; "-joined over runs)."""
    return {name for part in str(text).split("; ") for name in part.split("+") if name in STEP_OPTION_NAMES}


def describe_step(groups: pd.DataFrame) -> str:
    """The training step the summarised runs ran, for captions: "eager (paper)" when no speed option was requested
    (runs recorded before setting.step existed ran it too), else "tuned (...)" listing each applied option, the
    settings it applied to where not all, and the requested options that applied nowhere."""
    if "n_finished" in groups:
        groups = groups[groups["n_finished"] > 0]  # rows without a finished run say nothing about the step
    if "step_requested" not in groups or groups.empty:
        return EAGER_STEP
    requested_per_row = [_step_options(text) for text in groups["step_requested"]]
    applied_per_row = [_step_options(text) for text in groups.get("step_applied", [""] * len(groups))]
    requested = set().union(*requested_per_row)
    if not requested:
        return EAGER_STEP
    settings = [str(setting) for setting in groups.get("setting", [""] * len(groups))]
    parts, nowhere = [], []
    for option, name in STEP_OPTION_NAMES.items():
        if option not in requested:
            continue
        rows = [setting for setting, applied in zip(settings, applied_per_row) if option in applied]
        asked = [setting for setting, wanted in zip(settings, requested_per_row) if option in wanted]
        if not rows:
            nowhere.append(name + (f" ({STEP_OPTION_LIMITS[option]})" if option in STEP_OPTION_LIMITS else ""))
        elif len(rows) < len(asked):
            parts.append(f"{name} for {', '.join(_ordered_unique(rows))} only")
        else:
            parts.append(name)
    text = f"tuned ({', '.join(parts)})" if parts else EAGER_STEP
    if nowhere:
        text += f"; requested, not applied on this device: {', '.join(nowhere)}"
    if any(not wanted for wanted in requested_per_row):
        text = "MIXED across rows (some ran the eager step): " + text
    return text
