"""Collect every expected training run into one tidy table (``summary.csv``).

One row per *expected* run, whether or not it produced a ``metrics.json``: a run that is missing, unreadable or
diverged keeps its row and says so in ``status`` / ``status_reason``, so that no table or figure downstream can
silently summarise fewer runs than the study planned.

``leanmed.report.grouping.group_summary`` then reduces the tidy rows to one row per (dataset, model, setting, scale),
the numbers every table, figure and Pareto front is drawn from; ``leanmed.report.captions`` describes them in words.
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
    (("provenance", "cudnn"), "cudnn_version"),
    (("provenance", "torch_threads"), "torch_threads"),
    (("provenance", "python"), "python_version"),
    (("provenance", "git_revision"), "git_revision"),
    (("provenance", "config_hash"), "config_hash"),
    (("provenance", "training_environments"), "training_environments"),
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


class UnreadableMetrics(ValueError):
    """A metrics.json exists but cannot be used; the message becomes the row's status_reason."""


def run_dir(runs_root: str | Path, dataset: str, model: str, setting: str, scale: int, seed: int) -> Path:
    """The directory one training job writes (see docs/architecture.md)."""
    return Path(runs_root) / str(dataset) / str(model) / str(setting) / f"s{int(scale)}" / f"seed{int(seed)}"


def _leaf(value):
    """A metrics.json leaf as one table cell: lists are joined because a cell holds one value; a list of records
    (provenance.training_environments) as JSON, which leanmed.report.environments reads back."""
    if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
        return json.dumps(value, sort_keys=True)
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


def as_boolean(value):
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


# Columns of text that pandas would read as numbers: CUDA "13.0" as 13.0 (printed "13"), a git revision of digits.
TEXT_COLUMNS = ("device_name", "torch_version", "timm_version", "bitsandbytes_version", "cuda_version",
                "python_version", "git_revision", "config_hash", "training_environments")


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read summary.csv back with its boolean columns as True/False/None rather than text, and its version columns as
    text (TEXT_COLUMNS)."""
    summary = pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS})
    for column in BOOLEAN_COLUMNS:
        if column in summary.columns:
            summary[column] = summary[column].map(as_boolean).astype(object)
    summary["diverged"] = summary["diverged"].map(bool)
    return summary

