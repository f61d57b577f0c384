"""Checks of a study's configuration that its schema cannot make, run before Snakemake plans a job.

The schema (workflow/schemas/config.schema.yaml) checks keys and types. These check what needs leanmed's knowledge:
model names (registry alias or timm name), downsampling runs against the studied datasets, split fractions that sum
to 1, stratification columns the data has, and a demo folder that cannot land on the user's raw data. Each failure is
a ConfigError whose message starts with the config key, which the workflow shows as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from leanmed.data.lidc import LABELS_CSV_COLUMNS as LIDC_LABELS_CSV_COLUMNS
from leanmed.data.rsna import KAGGLE_TRAIN_COLUMNS, CohortError, train_csv_columns
from leanmed.data.splits import SplitError, validate_fractions
from leanmed.study import studied_datasets
from leanmed.train.registry import MODELS, is_known_model

__all__ = [
    "ConfigError", "MISSING_DATA_HELP", "check_study_config", "configured_raw_paths", "stratification_columns",
]


class ConfigError(ValueError):
    """A configuration leanmed cannot run; the message names the config key."""


def _check_integers(value: object, node: Mapping, schema: Mapping, key: str = "") -> None:
    """Refuse a decimal number where the schema asks for an integer. JSON Schema counts 32.0 as an integer, so
    `image_size: 32.0` (or `--config image_size=32.0`) passed the schema, made every option record differ from
    32's (every job reran, every run trained afresh) and then failed in the LIDC labelling ("image_size must be a
    positive integer, got 32.0"; found by a real run)."""
    while "$ref" in node:  # "#/$defs/name"
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    types = node.get("type")
    if isinstance(value, float) and (types == "integer" or (isinstance(types, list) and "integer" in types
                                                            and "number" not in types)):
        raise ConfigError(f"config key {key}: {value!r} is not an integer; write {value:.0f}" if value.is_integer()
                          else f"config key {key}: {value!r} is not an integer")
    if isinstance(value, Mapping):
        for name, item in value.items():
            child = node.get("properties", {}).get(name, node.get("additionalProperties"))
            if isinstance(child, Mapping):
                _check_integers(item, child, schema, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        for index, item in enumerate(value):
            _check_integers(item, node["items"], schema, f"{key}[{index}]")


#: What to tell a user whose raw data is not where the config says, by kind of data ({path}: the configured path).
MISSING_DATA_HELP = {
    "rsna": (
        "RSNA screening mammography data not found at {path}.\n"
        "Download the Kaggle competition data 'rsna-breast-cancer-detection' "
        "(https://www.kaggle.com/competitions/rsna-breast-cancer-detection/data) and put train.csv at "
        "config data.rsna.train_csv and the train_images/ folder at data.rsna.images_dir.\n"
        "To try leanmed without it: `make demo` runs the whole study on generated data."
    ),
    "lidc": (
        "LIDC-IDRI pickle not found at {path}.\n"
        "Download the Probabilistic U-Net LIDC crops (data_lidc.pickle, see "
        "https://github.com/stefanknegt/Probabilistic-Unet-Pytorch) and put it at config data.lidc.pickle.\n"
        "To try leanmed without it: `make demo` runs the whole study on generated data."
    ),
    "lidc_ct": (
        "LIDC-IDRI CT scans not found at {path} (config data.lidc.source is ct).\n"
        "Download the LIDC-IDRI collection from TCIA (https://www.cancerimagingarchive.net/collection/lidc-idri/) "
        "and put its LIDC-IDRI-XXXX folders under config data.lidc.ct.root, or set data.lidc.source: pickle."
    ),
}


def check_study_config(config: Mapping, schema: Mapping | None = None) -> None:
    """Raise ConfigError for the first thing in ``config`` (validated against the schema) that leanmed cannot run.
    ``schema``: the config schema, to refuse a whole number written as a decimal where it asks for an integer."""
    if schema is not None:
        _check_integers(config, schema, schema)
    _check_models_and_datasets(config)
    try:
        validate_fractions(config["split"]["fractions"])
    except SplitError as error:
        raise ConfigError(f"config key {error}") from None
    for dataset, columns in config["split"]["stratify_by"].items():
        known = stratification_columns(config, dataset)
        unknown = [column for column in columns if column not in known]
        if unknown:
            raise ConfigError(
                f"config key split.stratify_by.{dataset}: no column {', '.join(unknown)} to stratify the split by; "
                f"{dataset} has {', '.join(known)}."
            )
    _check_demo(config)


def _unknown_model(key: str, model: str) -> ConfigError:
    return ConfigError(
        f"config key {key}: unknown model {model!r}. "
        f"Use a leanmed alias ({', '.join(MODELS)}) or a timm model name (timm.list_models())."
    )


def _check_models_and_datasets(config: Mapping) -> None:
    for dataset, entry in config["datasets"].items():
        for model in entry["models"]:
            if not is_known_model(model):
                raise _unknown_model(f"datasets.{dataset}.models", model)
    datasets = studied_datasets(config)
    if not datasets:
        raise ConfigError(
            "config key datasets: every dataset's models list is empty, so the study has nothing to train; "
            "name at least one model (e.g. datasets.lidc.models: [densenet121])."
        )
    for index, run in enumerate(config["downsampling"]["runs"]):
        if run["dataset"] not in datasets:
            raise ConfigError(
                f"config key downsampling.runs[{index}].dataset: {run['dataset']!r} is not among the datasets "
                f"of the study ({', '.join(datasets)}; a dataset with an empty models list is left out)."
            )
        if not is_known_model(run["model"]):
            raise _unknown_model(f"downsampling.runs[{index}].model", run["model"])
        if 1 in run["scales"]:
            continue
        # The curve's S = 1 point is the main study's run: without it the curve started at S = 2 (a real run).
        for setting in run["settings"]:
            if run["model"] not in config["datasets"][run["dataset"]]["models"] or setting not in config["settings"]:
                raise ConfigError(
                    f"config key downsampling.runs[{index}]: its curve takes S = 1 from the main study, which has no "
                    f"run of {run['model']} with setting {setting} on {run['dataset']}: add the model to "
                    f"datasets.{run['dataset']}.models and the setting to settings, or 1 to the curve's scales."
                )


def stratification_columns(config: Mapping, dataset: str) -> list[str]:
    """Columns a dataset's split can be stratified by: the RSNA cohort's (the Kaggle train.csv columns, and any
    others the configured train.csv has), the LIDC labels'."""
    if dataset == "lidc":
        return list(LIDC_LABELS_CSV_COLUMNS)
    train_csv = Path(config["data"]["rsna"]["train_csv"])
    if not config["demo"]["enabled"] and train_csv.is_file():
        try:
            return train_csv_columns(train_csv)
        except CohortError as error:
            raise ConfigError(f"config key data.rsna.train_csv: {error}") from None
    return list(KAGGLE_TRAIN_COLUMNS)


def configured_raw_paths(config: Mapping) -> dict[str, str]:
    """config key -> the user's raw data path (what no rule may touch)."""
    data = config["data"]
    return {
        "data.rsna.train_csv": data["rsna"]["train_csv"],
        "data.rsna.images_dir": data["rsna"]["images_dir"],
        "data.lidc.pickle": data["lidc"]["pickle"],
        "data.lidc.ct.root": data["lidc"]["ct"]["root"],
    }


def _check_demo(config: Mapping) -> None:
    """In demo mode the generated data must not land on, in, or around a configured raw data path."""
    if not config["demo"]["enabled"]:
        return
    demo_dir_key = config["demo"]["dir"].rstrip("/")
    demo_dir = Path(demo_dir_key).resolve()
    for key, path in configured_raw_paths(config).items():
        raw = Path(path).resolve()
        if raw == demo_dir or demo_dir in raw.parents or raw in demo_dir.parents:
            raise ConfigError(
                f"config key demo.dir ({demo_dir_key}) overlaps {key} ({path}): the demo would write generated data "
                f"where raw data is configured. Choose another demo.dir, or leave {key} at a path outside it "
                "(in demo mode the data: paths are not read)."
            )
    if config["data"]["lidc"]["source"] != "pickle":
        raise ConfigError(
            "config key data.lidc.source is ct, but demo.enabled is true: the demo generates the LIDC pickle; "
            "set data.lidc.source: pickle for the demo."
        )
