"""Dry runs of the workflow: the paper's full plan, and config errors that must fail before any job runs."""
import pytest

from leanmed.demo import generate_lidc, generate_rsna
from workflow_helpers import copy_workflow, planned_jobs, snakemake, write_config

PAPER_TRAINING_JOBS = 5 * 5 * 3 + 3 * 5 * 3 + 3 * 3 * 3  # rsna, lidc, downsampling study = 147


@pytest.fixture
def workdir(tmp_path):
    return copy_workflow(tmp_path / "study")


def place_generated_data(workdir):
    """Small generated data at the paths config.yaml names (the plan does not depend on the data's size)."""
    generate_rsna(workdir / "data/rsna", n_patients=6, image_shape=(64, 52), seed=1)
    generate_lidc(workdir / "data/lidc/data_lidc.pickle", n_patients=4, patches_per_patient=2, seed=1)


def test_config_yaml_plans_the_papers_study(workdir):
    place_generated_data(workdir)
    jobs = planned_jobs(workdir)
    assert jobs["train"] == PAPER_TRAINING_JOBS
    assert jobs["dicom_to_png"] == 64
    assert jobs["cpu_deployment_model"] == 5 + 3  # one per (dataset, model)
    assert jobs["split"] == 2
    assert jobs["radar_plot"] == 5 + 3
    assert jobs["downsampling_plot"] == 1
    assert "demo_data" not in jobs


def test_missing_data_says_what_to_download_and_where(workdir):
    process = snakemake(workdir, "-n", check=False)
    assert process.returncode != 0
    message = process.stdout + process.stderr
    assert "data/rsna/train.csv" in message
    assert "kaggle" in message.lower()
    assert "make demo" in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"datasets": {"rsna": {"models": ["densenet_121_typo"]}}}, ["datasets.rsna.models", "densenet_121_typo"]),
        ({"settings": ["fp32", "fp8"]}, ["fp8", "half_8bit"]),
        ({"trainig": {"lr": 0.1}}, ["trainig"]),
        ({"training": {"batch_size": "thirty-two"}}, ["batch_size", "thirty-two"]),
        ({"split": {"fractions": [0.5, 0.2, 0.2]}}, ["split.fractions"]),
    ],
)
def test_config_errors_fail_at_start_naming_the_key(workdir, overrides, expected):
    place_generated_data(workdir)
    write_config(workdir / "bad.yaml", overrides)
    process = snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert process.returncode != 0
    message = process.stdout + process.stderr
    for text in expected:
        assert text in message, message[-3000:]
    assert "Job stats" not in message
