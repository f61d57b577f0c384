"""Integration tests: real Snakemake on a tiny generated study (both datasets, two settings, a downsampling run),
then dry runs that prove which jobs a config change reruns."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workflow_helpers import copy_workflow, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration

TINY_STUDY = {
    "demo": {
        "enabled": True,
        "seed": 3,
        "rsna": {"patients": 90, "height": 160, "width": 128},
        "lidc": {"patients": 12, "patches_per_patient": 6},
    },
    "dicom": {"shards": 2},
    "image_size": 32,
    "datasets": {"rsna": {"models": ["test_resnet"]}, "lidc": {"models": ["mlp_small"]}},
    "settings": ["fp32", "amp_8bit"],
    "seeds": [1],
    "downsampling": {
        "runs": [{"dataset": "rsna", "model": "test_resnet", "settings": ["fp32"], "scales": [2]}],
        "mode": "pooled_upsampled",
    },
    "training": {
        "lr": 1.0e-3,
        "pretrained": False,  # tests never download weights
        "batch_size": 16,
        "max_epochs": 2,
        "patience": 2,
        "num_workers": 0,
        "threads": 1,
        "device": "cpu",
        "gpus_per_job": 0,
        "inference_repeats": 1,
    },
    "report": {"n_bootstrap": 200, "dpi": 80},
}
TRAINING_JOBS = 5  # rsna: 2 settings + 1 downsampling run; lidc: 2 settings
RUN_ARGS = ("--cores", "2", "--configfile", "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A completed tiny study: the workflow copied into a fresh folder and run end to end, with its report."""
    workdir = copy_workflow(tmp_path_factory.mktemp("study"))
    write_config(workdir / "tiny.yaml", TINY_STUDY)
    snakemake(workdir, *RUN_ARGS)
    snakemake(workdir, "--configfile", "tiny.yaml", "--report", "results/report.html")
    return workdir


def dry_run(workdir, overrides):
    write_config(workdir / "change.yaml", overrides)
    return planned_jobs(workdir, "--configfiles", "tiny.yaml", "change.yaml")


def assert_not_blank(png_path):
    pixels = np.asarray(Image.open(png_path).convert("L"), dtype=float)
    assert pixels.std() > 5, f"{png_path} looks blank"


def test_every_output_exists_with_sane_values(tiny_study):
    results = tiny_study / "results"
    metrics_files = sorted((results / "runs").glob("*/*/*/s*/seed*/metrics.json"))
    assert len(metrics_files) == TRAINING_JOBS
    for path in metrics_files:
        metrics = json.loads(path.read_text())
        assert metrics["status"] in {"completed", "diverged"}
        assert metrics["setting"]["device"] == "cpu"
        if not metrics["diverged"]:
            assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
            assert metrics["training"]["epochs_run"] >= 1
            assert metrics["memory"]["train_peak_bytes"] > 0
            assert metrics["inference"]["test_set_seconds"] > 0
        for name in ("epochs.csv", "predictions.csv"):
            assert (path.parent / name).stat().st_size > 0
    amp_8bit = json.loads((results / "runs/rsna/test_resnet/amp_8bit/s1/seed1/metrics.json").read_text())
    assert amp_8bit["setting"]["autocast_dtype"] == "bfloat16"
    assert "Adam8bit" in amp_8bit["setting"]["optimizer_class"]

    summary = pd.read_csv(results / "summary.csv")
    assert len(summary) == TRAINING_JOBS
    split = pd.read_csv(results / "rsna/split.csv", dtype={"subject_id": str})
    assert split.groupby("subject_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
    for dataset in ("rsna", "lidc"):
        table = (results / f"tables/{dataset}.md").read_text()
        model = TINY_STUDY["datasets"][dataset]["models"][0]
        assert model in table
        assert (results / f"tables/{dataset}.tex").read_text().count("\\toprule") == 1
        assert_not_blank(results / f"figures/radar_{dataset}_{model}.png")
        assert (results / f"figures/radar_{dataset}_{model}.pdf").stat().st_size > 1000
    assert_not_blank(results / "figures/downsampling_rsna_test_resnet.png")
    assert (results / "report.html").stat().st_size > 10_000
    deployment = pd.read_csv(results / "deployment/cpu_inference.csv")
    assert len(deployment) == TRAINING_JOBS
    assert (deployment.filter(like="latency").iloc[:, 0] > 0).all()


def test_findings_name_every_setting_and_open_the_report(tiny_study):
    """results/findings.md says, per dataset and model, how each setting did against fp32; the report's front page
    (the workflow description) carries the same text."""
    results = tiny_study / "results"
    text = (results / "findings.md").read_text()
    for dataset, entry in TINY_STUDY["datasets"].items():
        assert f"Dataset {dataset}, S=1" in text
        model = entry["models"][0]
        section = text.split(f"**{dataset} / {model}**")[1].split("**")[0]
        assert "- fp32 (baseline): test accuracy " in section
        assert "- amp_8bit: " in section
        assert any(verdict in section for verdict in ("non-inferior", "possible degradation", "inconclusive",
                                                      "no verdict"))
    report = (results / "report.html").read_text()
    assert "Dataset rsna, S=1" in report and "<li>amp_8bit: " in report  # the bullets rendered as an HTML list


def test_a_training_job_log_shows_its_progress_once_per_epoch(tiny_study):
    """The job log holds the start, one line per epoch with the time left, the end, and carbontracker's
    assumptions once in leanmed's words (energy is on in this study), none of its own duplicated warnings."""
    run = "rsna/test_resnet/fp32/s1/seed1"
    lines = (tiny_study / "logs/runs" / f"{run}.log").read_text().splitlines()
    metrics = json.loads((tiny_study / "results/runs" / run / "metrics.json").read_text())
    messages = [line.split(" INFO ", 1)[1] for line in lines if " INFO " in line]
    starts = [message for message in messages if message.startswith("start rsna/test_resnet fp32 s1 seed1: ")]
    epochs = [message for message in messages if message.startswith("epoch ")]
    ends = [message for message in messages if message.startswith("end rsna/test_resnet fp32 s1 seed1: ")]
    assert len(starts) == 1 and "images train " in starts[0] and "new run" in starts[0]
    assert [message.split(":")[0] for message in epochs] == [
        f"epoch {epoch}/2" for epoch in range(1, metrics["training"]["epochs_run"] + 1)]
    assert all("left <= " in message and " s, at most " in message for message in epochs)
    assert len(ends) == 1 and "test accuracy" in ends[0] and ends[0].endswith("metrics.json")
    assert len([message for message in messages if message.startswith("energy: carbontracker")]) == 1
    assert not [line for line in lines if "CarbonTracker" in line]


def test_a_finished_study_plans_nothing(tiny_study):
    assert planned_jobs(tiny_study, "--configfile", "tiny.yaml") == {}


def test_adding_a_seed_reruns_only_the_new_runs_and_the_report(tiny_study):
    jobs = dry_run(tiny_study, {"seeds": [1, 2]})
    assert jobs["train"] == TRAINING_JOBS
    assert jobs["cpu_deployment_model"] == 2  # one per trained model
    assert jobs["aggregate"] == 1
    data_steps = {"demo_rsna", "demo_lidc", "rsna_cohort", "dicom_to_png", "rsna_images", "lidc_labels", "split"}
    assert not data_steps & set(jobs)


def test_adding_a_setting_reruns_only_its_runs(tiny_study):
    jobs = dry_run(tiny_study, {"settings": ["fp32", "amp_8bit", "8bit"]})
    assert jobs["train"] == 2  # one per configured model
    assert "split" not in jobs


def test_adding_a_model_reruns_only_its_runs(tiny_study):
    jobs = dry_run(tiny_study, {"datasets": {"lidc": {"models": ["mlp_small", "test_vit"]}}})
    assert jobs["train"] == 2  # test_vit x 2 settings
    assert jobs["cpu_deployment_model"] == 1
    assert jobs["radar_plot"] == 3  # the new model's, and the others redrawn from the new summary
    assert not {"demo_rsna", "demo_lidc", "rsna_cohort", "dicom_to_png", "lidc_labels", "split"} & set(jobs)


def test_editing_one_settings_definition_reruns_only_its_runs(tiny_study):
    jobs = planned_jobs(
        tiny_study, "--configfile", "tiny.yaml", edited_setting=("amp_8bit", {"optimizer": "paged_adam8bit"})
    )
    assert jobs["train"] == 2  # amp_8bit of each dataset's model; fp32 and the downsampling run stay
    assert not {"demo_rsna", "demo_lidc", "rsna_cohort", "dicom_to_png", "split"} & set(jobs)


def test_a_plotting_option_reruns_only_the_report(tiny_study):
    jobs = dry_run(tiny_study, {"report": {"dpi": 90}})
    assert jobs, "a dpi change must replot"
    # leftovers runs after every report change: it reads what results/ holds once the report is made.
    assert set(jobs) <= {"radar_plot", "downsampling_plot", "pareto", "leftovers", "all"}


@pytest.mark.parametrize("option", [{"lr": 2.0e-3}, {"tuned_step": True}, {"compile": True}])
def test_a_training_option_reruns_every_training_job(tiny_study, option):
    jobs = dry_run(tiny_study, {"training": option})
    assert jobs["train"] == TRAINING_JOBS
    assert not {"demo_rsna", "demo_lidc", "rsna_cohort", "dicom_to_png", "split"} & set(jobs)


def test_min_raters_change_reruns_lidc_only(tiny_study):
    jobs = dry_run(tiny_study, {"cohort": {"lidc": {"min_raters": 3}}})
    assert jobs["lidc_labels"] == 1
    assert jobs["train"] == 2  # the two LIDC runs
    assert "dicom_to_png" not in jobs
