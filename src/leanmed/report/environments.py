"""The measurement environment of each run: the device and the software its time, memory and energy depend on.

A study's runs need not all run in one environment: a cluster's GPU partitions hold several GPU models, a seed added
after `pip install -U torch` runs on the new torch, a CPU run's speed depends on its thread count. Its accuracy
compares across them; its time, memory and energy do not, and a mean over seeds from two environments mixes two
measurements. The tables, figures and findings therefore say in which environment each figure was measured, and
flag a comparison across environments as such (``describe_environments``, ``environment_keys``).

A run's environment (``run_environment``) is read from its metrics.json provenance: the device and its name, torch,
CUDA and cuDNN (GPU runs), bitsandbytes, timm, and the CPU threads (CPU runs). The host is left out: two identical
GPUs in two nodes are one environment. A run resumed in another environment names each (its metrics.json
``provenance.training_environments``): it is an environment of its own, so a group holding it is MIXED.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import pandas as pd

# Several runs' environments in one cell (a group's seeds): each label contains ", " itself.
ENVIRONMENT_SEPARATOR = " || "
UNKNOWN_ENVIRONMENT = "unknown (recorded before leanmed named it)"


def _present(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value)) \
        and str(value) not in ("", "nan")


def _whole(value) -> str:
    """A count read back from a CSV (91002.0) as written (91002)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def run_environment(run: Mapping) -> str:
    """One run's environment as a label, from its summary.csv row: "cuda (NVIDIA H200), torch 2.11.0+cu130,
    CUDA 13.0, cuDNN 91002, bitsandbytes 0.50.2, timm 1.0.22" or "cpu (AMD EPYC 7B13), 2 CPU threads, torch ...".
    A run whose epochs were trained in another environment than its test and inference were measured in, or in
    several (resumed elsewhere: column ``training_environments``), says each: "training in A then in B, test and
    inference in C". UNKNOWN_ENVIRONMENT when the row records none of it."""
    measured_in = _environment_label(run)
    trained_in = list(dict.fromkeys(_environment_label(environment) for environment in _training_environments(run)))
    if not trained_in or trained_in == [measured_in]:
        return measured_in
    return "training in " + " then in ".join(trained_in) + f", test and inference in {measured_in}"


def _training_environments(run: Mapping) -> list[dict]:
    cell = run.get("training_environments")
    if not _present(cell):
        return []
    environments = json.loads(cell) if isinstance(cell, str) else cell
    return [environment for environment in environments if isinstance(environment, Mapping)]


def _environment_label(run: Mapping) -> str:
    device, name = run.get("device"), run.get("device_name")
    parts = []
    if _present(device):
        parts.append(f"{device} ({name})" if _present(name) else str(device))
    on_cpu = _present(device) and str(device) == "cpu"
    if on_cpu and _present(run.get("torch_threads")):
        threads = _whole(run["torch_threads"])
        parts.append(f"{threads} CPU thread{'' if threads == '1' else 's'}")
    for column, label in (("torch_version", "torch"), ("cuda_version", "CUDA"), ("cudnn_version", "cuDNN"),
                          ("bitsandbytes_version", "bitsandbytes"), ("timm_version", "timm")):
        if _present(run.get(column)) and not (on_cpu and column in ("cuda_version", "cudnn_version")):
            parts.append(f"{label} {_whole(run[column])}")
    return ", ".join(parts) if parts else UNKNOWN_ENVIRONMENT


def environments_of(groups: pd.DataFrame) -> list[str]:
    """The distinct environments of summarised runs (group_summary rows, column ``environment``), in order."""
    labels = []
    for cell in groups.get("environment", []):
        if not _present(cell):
            continue
        for label in str(cell).split(ENVIRONMENT_SEPARATOR):
            if label and label not in labels:
                labels.append(label)
    return labels


def environment_keys(cell, labels: list[str]) -> str:
    """The short names ("E1", "E1+E2") of a group's environments among ``labels`` (environments_of)."""
    if not _present(cell):
        return ""
    return "+".join(f"E{labels.index(label) + 1}" for label in str(cell).split(ENVIRONMENT_SEPARATOR)
                    if label in labels)


def describe_environments(groups: pd.DataFrame, keyed: str = "") -> str:
    """Where the summarised runs were measured, for captions: the one environment, or "MIXED" and each one named
    (E1 = ..., E2 = ...) with the warning that time, memory and energy compare only within one. ``keyed``: where
    the reader finds each row's environments (e.g. "column Env"), when the caller shows them."""
    labels = environments_of(groups)
    if not labels:
        return "unknown (no finished run)"
    if len(labels) == 1:
        return labels[0]
    where = f" ({keyed} gives each row's; E1+E2: its seeds ran in both, and its means mix them)" if keyed else ""
    return ("MIXED environments, so time, memory and energy compare only between runs of one environment"
            + where + ": " + "; ".join(f"E{number} = {label}" for number, label in enumerate(labels, start=1)))


def joined_environments(runs: pd.DataFrame) -> str:
    """The environments of a group's finished runs (summary.csv rows) as one cell, in order of appearance."""
    labels = list(dict.fromkeys(run_environment(row) for _, row in runs.iterrows()))
    return ENVIRONMENT_SEPARATOR.join(labels)


def same_environment(group: Mapping, other: Mapping) -> bool:
    """Whether two group_summary rows were measured in one and the same environment (each in a single one)."""
    first, second = group.get("environment"), other.get("environment")
    return _present(first) and str(first) == str(second) and ENVIRONMENT_SEPARATOR not in str(first)
