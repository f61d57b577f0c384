"""What a study is, read from its configuration alone: the training runs it expects, and where their files lie.

Shared by the workflow (which plans one job per run) and by the tools that read a study's results while it runs
(`python -m leanmed.study.status`).
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["studied_datasets", "training_runs"]


def studied_datasets(config: Mapping) -> list[str]:
    """The datasets of the study, in config order: those with at least one model. An empty ``models`` list leaves a
    dataset out (a file given with ``--configfile`` extends config.yaml and cannot remove its key): nothing of it is
    prepared, trained or reported."""
    return [dataset for dataset, entry in config["datasets"].items() if entry["models"]]


def training_runs(config: Mapping) -> list[dict]:
    """Every training run of the study as dicts (dataset, model, setting, scale, seed), main study first:
    each dataset x model x setting x seed at scale 1, then the downsampling runs (dataset, model, setting, scale,
    seed) not already in the main study."""
    runs = []
    for dataset, entry in config["datasets"].items():
        for model in entry["models"]:
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
