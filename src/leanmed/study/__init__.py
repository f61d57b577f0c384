"""What a study is, read from its configuration alone: the training runs it expects, and where their files lie.

Shared by the workflow (which plans one job per run) and by the tools that read a study's results while it runs
(`python -m leanmed.study.status`).
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "KNOWN_DATASETS", "NOT_DOWNSAMPLED", "canonical_config", "downsample_mode_at", "studied_datasets", "training_runs",
]

#: The datasets a study can have (the config schema's), in the order results list them: the paper's Table 1, Table 2.
KNOWN_DATASETS = ("rsna", "lidc")
#: The downsampling mode of a run at S = 1, whatever ``downsampling.mode`` says: both modes use its images as
#: they are.
NOT_DOWNSAMPLED = "none"


def canonical_config(config: Mapping) -> dict:
    """``config`` with the keys of every mapping sorted, at any depth (lists keep their order).

    Snakemake compares a job's params with its records by their repr, in which a dict's key order shows: the same
    configuration in another key order (a --configfile reformatted or reordered, a default of config.yaml repeated
    there, which moves the key ahead in the merged config) reran every job taking a part of it as a param, and in demo
    mode generated the data again (found by a real rerun). The workflow takes its params from this order only."""
    if isinstance(config, Mapping):
        return {key: canonical_config(config[key]) for key in sorted(config)}
    if isinstance(config, list):
        return [canonical_config(item) for item in config]
    return config


def downsample_mode_at(scale: int, configured_mode: str) -> str:
    """The downsampling mode a run at ``scale`` is trained and recorded with: ``configured_mode`` (the config's
    ``downsampling.mode``) when S > 1, NOT_DOWNSAMPLED at S = 1. So another ``downsampling.mode`` retrains only the
    downsampled runs; it retrained every run at S = 1 from scratch before (a real rerun), for the same images."""
    return configured_mode if int(scale) > 1 else NOT_DOWNSAMPLED


def studied_datasets(config: Mapping) -> list[str]:
    """The datasets of the study, in the order of ``KNOWN_DATASETS`` (not the config's): those with at least one
    model. An empty ``models`` list leaves a dataset out (a file given with ``--configfile`` extends config.yaml and
    cannot remove its key): nothing of it is prepared, trained or reported."""
    return [dataset for dataset in KNOWN_DATASETS if config["datasets"].get(dataset, {}).get("models")]


def training_runs(config: Mapping) -> list[dict]:
    """Every training run of the study as dicts (dataset, model, setting, scale, seed), main study first:
    each dataset x model x setting x seed at scale 1, then the downsampling runs (dataset, model, setting, scale,
    seed) not already in the main study. Datasets in the order of ``KNOWN_DATASETS``."""
    runs = []
    for dataset in studied_datasets(config):
        for model in config["datasets"][dataset]["models"]:
            for setting in config["settings"]:
                for seed in config["seeds"]:
                    runs.append(dict(dataset=dataset, model=model, setting=setting, scale=1, seed=seed))
    for extra in config["downsampling"]["runs"]:
        for setting in extra["settings"]:
            for scale in extra["scales"]:
                for seed in config["seeds"]:
                    run = dict(dataset=extra["dataset"], model=extra["model"], setting=setting, scale=scale, seed=seed)
                    if run not in runs:
                        runs.append(run)
    return runs
