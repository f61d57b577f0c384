"""The checks the config schema cannot make (leanmed.study.config_checks), on config.yaml merged with changes as
Snakemake merges a --configfile, with the schema's defaults filled in. test_workflow_plan runs some of them through
Snakemake, to show that they stop a run before any job."""
import copy
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from leanmed.study.config_checks import ConfigError, check_study_config, configured_raw_paths, stratification_columns
from workflow_helpers import REPO


def merged(base, changes):
    result = copy.deepcopy(base)
    for key, value in changes.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and key in result else value
    return result


def study_config(tmp_path, **changes):
    """config.yaml with `changes` merged in, validated against the schema with its defaults set; each data path in a
    folder of its own under tmp_path (none exists unless a test writes it)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = merged(config, {"data": {"rsna": {"train_csv": str(tmp_path / "tables/train.csv"),
                                               "images_dir": str(tmp_path / "images/train_images")},
                                      "lidc": {"pickle": str(tmp_path / "lidc/data_lidc.pickle")}}})
    config = merged(config, changes)
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"), set_default=True)
    return config


def problem(config):
    with pytest.raises(ConfigError) as raised:
        check_study_config(config)
    return str(raised.value)


def test_the_papers_configuration_and_the_demos_pass(tmp_path):
    check_study_config(study_config(tmp_path))
    demo = yaml.safe_load((REPO / "profiles/demo/demo-study.yaml").read_text())
    check_study_config(study_config(tmp_path, **demo))


@pytest.mark.parametrize(
    "changes, key, also",
    [
        ({"datasets": {"lidc": {"models": ["densenet_121_typo"]}}}, "datasets.lidc.models", "'densenet_121_typo'"),
        ({"datasets": {"rsna": {"models": []}, "lidc": {"models": []}}}, "datasets", "nothing to train"),
        ({"datasets": {"rsna": {"models": []}}}, "downsampling.runs[0].dataset", "(lidc;"),
        ({"downsampling": {"runs": [{"dataset": "rsna", "model": "resnet_typo", "settings": ["fp32"], "scales": [2]}]}},
         "downsampling.runs[0].model", "'resnet_typo'"),
        ({"split": {"fractions": [0.5, 0.2, 0.2]}}, "split.fractions", "1"),
        ({"split": {"stratify_by": {"lidc": ["machine_id"]}}}, "split.stratify_by.lidc", "machine_id"),
    ],
)
def test_each_problem_names_its_config_key(tmp_path, changes, key, also):
    message = problem(study_config(tmp_path, **changes))
    assert message.startswith(f"config key {key}"), message
    assert also in message


def test_an_unknown_model_message_lists_the_registry_aliases(tmp_path):
    message = problem(study_config(tmp_path, datasets={"rsna": {"models": ["densenet_121_typo"]}}))
    assert "densenet121" in message and "timm.list_models()" in message


def test_stratification_columns_are_those_of_the_users_train_csv_or_the_kaggle_ones(tmp_path):
    config = study_config(tmp_path, split={"stratify_by": {"rsna": ["scanner_room"]}})
    assert "machine_id" in stratification_columns(config, "rsna")  # no train.csv yet: the Kaggle columns
    message = problem(config)
    assert message.startswith("config key split.stratify_by.rsna: no column scanner_room"), message

    train_csv = tmp_path / "tables/train.csv"
    train_csv.parent.mkdir(parents=True)
    train_csv.write_text("site_id,patient_id,image_id,scanner_room\n1,2,3,4\n")
    assert stratification_columns(config, "rsna")[-1] == "scanner_room"
    check_study_config(config)
    assert "scanner_room" not in stratification_columns(config, "lidc")


@pytest.mark.parametrize("raw_key", ["data.rsna.train_csv", "data.rsna.images_dir", "data.lidc.pickle"])
@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_a_demo_folder_overlapping_a_raw_data_path_is_refused(tmp_path, raw_key, where):
    raw = configured_raw_paths(study_config(tmp_path))[raw_key]
    demo_dir = {"same": raw, "inside": f"{raw}/demo", "around": str(Path(raw).parent)}[where]
    message = problem(study_config(tmp_path, demo={"enabled": True, "dir": demo_dir}))
    assert message.startswith(f"config key demo.dir ({demo_dir}) overlaps {raw_key} ({raw})"), message


def test_a_demo_folder_beside_the_raw_data_passes_and_the_demo_needs_the_pickle_source(tmp_path):
    config = study_config(tmp_path, demo={"enabled": True, "dir": str(tmp_path / "demo-data")})
    check_study_config(config)
    config["data"]["lidc"]["source"] = "ct"
    assert problem(config).startswith("config key data.lidc.source is ct, but demo.enabled is true")


def test_a_whole_number_written_as_a_decimal_is_refused_where_the_schema_asks_for_an_integer(tmp_path):
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    check_study_config(study_config(tmp_path), schema)
    for changes, key in (({"image_size": 32.0}, "image_size: 32.0"), ({"seeds": [1, 2.0]}, "seeds[1]: 2.0"),
                         ({"training": {"batch_size": 16.0}}, "training.batch_size: 16.0"),
                         ({"dicom": {"shards": 4.0}}, "dicom.shards: 4.0")):
        with pytest.raises(ConfigError, match=rf"^config key {re.escape(key)} is not an integer"):
            check_study_config(study_config(tmp_path, **changes), schema)
    check_study_config(study_config(tmp_path, training={"lr": 1.0}), schema)  # a number key takes 1.0


def test_a_downsampling_curve_without_its_s1_point_in_the_study_is_refused(tmp_path):
    """A curve of a model or setting outside the main study trained only its S > 1 runs and was plotted without the
    S = 1 point (found by a real run)."""
    curve = {"dataset": "lidc", "model": "mlp", "settings": ["fp32"], "scales": [2]}
    message = problem(study_config(tmp_path, downsampling={"runs": [curve]}))
    assert message.startswith("config key downsampling.runs[0]: its curve takes S = 1 from the main study")
    assert "no run of mlp with setting fp32 on lidc" in message
    check_study_config(study_config(tmp_path, downsampling={"runs": [{**curve, "scales": [1, 2]}]}))
    check_study_config(study_config(tmp_path, downsampling={"runs": [{**curve, "model": "densenet121"}]}))
