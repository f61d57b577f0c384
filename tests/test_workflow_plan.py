"""The workflow at its edges: the paper's full plan, config errors that fail before any job runs, and a corrupt
DICOM that is excluded with its reason while the rest is converted."""
import os
import shutil
from pathlib import Path

import pandas as pd
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
    assert jobs["fetch_weights"] == 5  # pretrained: true, one per model (ViT-B/32+ and the MLP: recorded as none)
    assert not {"demo_rsna", "demo_lidc"} & set(jobs)


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
        ({"training": {"tuned_step": "fast"}}, ["tuned_step", "fast"]),
        # JSON Schema counts 32.0 as an integer: it passed, retrained every run, then failed in the LIDC labelling.
        ({"image_size": 32.0}, ["config key image_size: 32.0 is not an integer; write 32"]),
        ({"data": {"rsna": {"train_csv": "data"}}}, ["config key data.rsna.train_csv: data is a folder"]),
        ({"split": {"fractions": [0.5, 0.2, 0.2]}}, ["split.fractions"]),
        ({"split": {"stratify_by": {"rsna": ["scanner"]}}}, ["split.stratify_by.rsna", "scanner", "machine_id"]),
        ({"split": {"stratify_by": {"rsna": "machine_id"}}}, ["stratify_by", "machine_id"]),
        ({"datasets": {"rsna": {"models": []}, "lidc": {"models": []}}}, ["config key datasets", "nothing to train"]),
        (
            {
                "datasets": {"rsna": {"models": []}},
                "downsampling": {"runs": [{"dataset": "rsna", "model": "mlp", "settings": ["fp32"], "scales": [2]}]},
            },
            ["downsampling.runs[0].dataset", "'rsna' is not among the datasets of the study (lidc;"],
        ),
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


def test_a_corrupt_dicom_is_excluded_with_its_reason_and_the_rest_converted(workdir):
    from leanmed.data.rsna import build_cohort

    generate_rsna(workdir / "data/rsna", n_patients=16, image_shape=(96, 80), seed=2)
    cohort, _ = build_cohort(workdir / "data/rsna/train.csv", images_dir=workdir / "data/rsna/train_images")
    corrupt = workdir / "data/rsna/train_images" / cohort["dicom_path"].iloc[0]
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # truncated: header only
    absent = workdir / "data/rsna/train_images" / cohort["dicom_path"].iloc[-1]
    absent.unlink()  # a half-finished download: the image stays in the cohort and is excluded, counted
    generate_lidc(workdir / "data/lidc/data_lidc.pickle", n_patients=4, patches_per_patient=2, seed=1)
    overrides = {"dicom": {"shards": 2, "max_excluded_fraction": 0.5}, "image_size": 32}
    write_config(workdir / "bad_file.yaml", overrides)
    snakemake(workdir, "results/rsna/images.csv", "--cores", "2", "--configfile", "bad_file.yaml")

    images = pd.read_csv(workdir / "results/rsna/images.csv", dtype=str)
    excluded = pd.read_csv(workdir / "results/rsna/excluded.csv", dtype=str).set_index("image_id")
    assert sorted(excluded.index) == sorted([str(cohort["image_id"].iloc[0]), str(cohort["image_id"].iloc[-1])])
    assert corrupt.name in excluded.loc[str(cohort["image_id"].iloc[0]), "reason"]
    assert excluded.loc[str(cohort["image_id"].iloc[-1]), "reason"] == f"file missing: {absent.relative_to(workdir)}"
    assert len(images) == len(cohort) - 2
    assert all((workdir / "results/rsna" / path).is_file() for path in images["path"])
    assert images["fingerprint"].str.fullmatch("[0-9a-f]{16}").all()

    # A stricter limit fails the merge, naming the config key; the converted PNGs stay.
    write_config(workdir / "strict.yaml", {"dicom": {"max_excluded_fraction": 0.0}})
    process = snakemake(
        workdir, "results/rsna/images.csv", "--cores", "2", "--configfiles", "bad_file.yaml", "strict.yaml",
        check=False,
    )
    assert process.returncode != 0
    message = process.stdout + process.stderr
    assert "dicom.max_excluded_fraction" in message
    assert all((workdir / "results/rsna" / path).is_file() for path in images["path"])
    # Snakemake deleted excluded.csv with the failed job; the full list is kept under logs/, and the error names it.
    assert not (workdir / "results/rsna/excluded.csv").exists()
    assert "logs/rsna/excluded.csv" in message
    kept = pd.read_csv(workdir / "logs/rsna/excluded.csv", dtype=str)
    assert len(kept) == 2 and kept["reason"].str.contains(corrupt.name, regex=False).any()
    assert kept["reason"].str.startswith("file missing: ").sum() == 1


RAW_PATHS = ("data/rsna/train.csv", "data/rsna/train_images", "data/lidc/data_lidc.pickle")
SMALL_DEMO = {"rsna": {"patients": 6, "height": 64, "width": 52}, "lidc": {"patients": 4, "patches_per_patient": 2}}


def planned_outputs(text):
    """Every path a dry run lists as some job's output."""
    outputs = []
    for line in text.splitlines():
        if line.strip().startswith("output:"):
            outputs += [path.strip() for path in line.split(":", 1)[1].split(",")]
    return outputs


@pytest.mark.parametrize("demo", [False, True], ids=["real-data", "demo-mode"])
def test_no_rule_can_rewrite_or_delete_the_raw_data(workdir, demo):
    """With raw data in place, neither a forced rerun of everything nor --delete-all-output touches it; in demo mode
    the generated data lives under demo.dir and only that is regenerated or deleted."""
    place_generated_data(workdir)
    write_config(workdir / "mode.yaml", {"demo": {"enabled": demo, **SMALL_DEMO}})
    if demo:
        snakemake(workdir, "data/demo/rsna/train.csv", "--cores", "1", "--configfile", "mode.yaml")
    forced = snakemake(workdir, "-n", "-F", "--configfile", "mode.yaml")
    outputs = planned_outputs(forced.stdout)
    assert outputs, forced.stdout[-3000:]
    deletion = snakemake(workdir, "--delete-all-output", "-n", "--configfile", "mode.yaml")
    deleted = deletion.stdout + deletion.stderr
    for raw in RAW_PATHS:
        assert not [path for path in outputs if path.startswith(raw)], f"{raw} is a planned output"
        assert raw not in deleted, f"--delete-all-output lists {raw}:\n{deleted[-3000:]}"
    if demo:
        assert "data/demo/rsna/train.csv" in outputs
        assert "data/demo/rsna/train.csv" in deleted
    else:
        assert "demo_rsna" not in forced.stdout and "demo_lidc" not in forced.stdout
    # The raw files are still there, unchanged in size.
    assert all((workdir / raw).exists() for raw in RAW_PATHS)


def test_a_demo_folder_over_raw_data_is_refused(workdir):
    place_generated_data(workdir)
    write_config(workdir / "overlap.yaml", {"demo": {"enabled": True, "dir": "data"}})
    process = snakemake(workdir, "-n", "--configfile", "overlap.yaml", check=False)
    message = process.stdout + process.stderr
    assert process.returncode != 0
    assert "demo.dir" in message and "data.rsna.train_csv" in message


def test_a_replaced_raw_dicom_is_seen_and_only_that_image_is_reconverted(workdir):
    """Raw data is not a rule output, yet a DICOM replaced after a finished conversion is seen (its shard's source
    fingerprint changes; the other shards rerun too, since their manifests are temporary, but keep their PNGs) and
    only its PNG is redone; every other PNG keeps its bytes and mtime."""
    from leanmed.data.sources import shard_of

    generate_rsna(workdir / "data/rsna", n_patients=12, image_shape=(96, 80), seed=4)
    generate_lidc(workdir / "data/lidc/data_lidc.pickle", n_patients=4, patches_per_patient=2, seed=1)
    write_config(workdir / "small.yaml", {"dicom": {"shards": 4}, "image_size": 32})
    target = ("results/rsna/images.csv", "--configfile", "small.yaml")
    snakemake(workdir, target[0], "--cores", "2", *target[1:])
    assert planned_jobs(workdir, *target) == {}
    pngs = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (workdir / "results/rsna/png").rglob("*.png")}

    images = pd.read_csv(workdir / "results/rsna/images.csv", dtype=str)
    replaced_id, subject = images["image_id"].iloc[0], images["subject_id"].iloc[0]
    source = workdir / "data/rsna/train_images" / subject / f"{replaced_id}.dcm"
    other = next(path for path in (workdir / "data/rsna/train_images").rglob("*.dcm") if path != source)
    source.write_bytes(other.read_bytes())  # a re-downloaded file with other pixels
    jobs = planned_jobs(workdir, *target)
    assert jobs["dicom_to_png"] >= 1 and jobs["rsna_images"] == 1, jobs
    snakemake(workdir, target[0], "--cores", "2", *target[1:])
    redone = [path for path, state in pngs.items() if (path.read_bytes(), path.stat().st_mtime_ns) != state]
    assert [path.stem for path in redone] == [replaced_id]
    shard_log = (workdir / f"logs/rsna/dicom_to_png_{shard_of(replaced_id, 4)}.log").read_text()
    assert "1 to convert" in shard_log, shard_log


def test_raw_files_replaced_with_an_older_time_or_a_dicom_gone_are_seen(workdir):
    """Snakemake sees a raw file only when it is newer than what was made from it: train.csv restored from a backup
    with `cp -p`, a LIDC pickle unpacked with its archive's older time, a DICOM deleted or put back (which the cohort
    report counts) left results of other data standing ("Nothing to be done"; found by real reruns). Each is now a
    param of the steps reading it (leanmed.data.sources)."""
    generate_rsna(workdir / "data/rsna", n_patients=12, image_shape=(96, 80), seed=4)
    generate_lidc(workdir / "data/lidc/data_lidc.pickle", n_patients=4, patches_per_patient=2, seed=1)
    write_config(workdir / "small.yaml", {"dicom": {"shards": 2}, "image_size": 32})
    targets = ("results/rsna/cohort_report.csv", "results/lidc/labels.csv")
    run = lambda: snakemake(workdir, *targets, "--cores", "2", "--configfile", "small.yaml")  # noqa: E731
    run()
    results = workdir / "results"
    first = {name: (results / name).read_bytes() for name in ("rsna/cohort.csv", "lidc/labels.csv")}

    # train.csv edited (a patient's BI-RADS 1 -> 0 on each of their images), then the original restored with its older
    # time.
    train_csv = workdir / "data/rsna/train.csv"
    backup = shutil.copy2(train_csv, workdir / "train_backup.csv")
    cohort = pd.read_csv(results / "rsna/cohort.csv", dtype=str)
    patient = cohort.loc[cohort["label"] == "0", "patient_id"].iloc[0]
    lines = train_csv.read_text().splitlines()
    header = lines[0].split(",")
    edited = [line if line.split(",")[header.index("patient_id")] != patient else ",".join(
        "0.0" if column == "BIRADS" else value for column, value in zip(header, line.split(","))) for line in lines]
    train_csv.write_text("\n".join(edited) + "\n")
    run()
    relabelled = pd.read_csv(results / "rsna/cohort.csv", dtype=str)
    assert set(relabelled.loc[relabelled["patient_id"] == patient, "label"]) == {"1"}
    shutil.copy2(backup, train_csv)
    assert planned_jobs(workdir, *targets, "--configfile", "small.yaml")["rsna_cohort"] == 1
    run()
    assert (results / "rsna/cohort.csv").read_bytes() == first["rsna/cohort.csv"]

    # A cohort DICOM deleted, then put back with its time: the cohort report counts it absent, then not.
    def absent_in_report():
        report = pd.read_csv(results / "rsna/cohort_report.csv", dtype=str)
        return report.loc[report["section"] == "info", "images"].astype(int).sum()

    assert absent_in_report() == 0
    dicom = workdir / "data/rsna/train_images" / cohort["dicom_path"].iloc[0]
    moved = shutil.move(dicom, workdir / "aside.dcm")
    run()
    assert absent_in_report() == 1
    shutil.move(moved, dicom)
    run()
    assert absent_in_report() == 0

    # Another LIDC pickle (other patients) put in place with an older time than the labels made from the first.
    pickle_path = workdir / "data/lidc/data_lidc.pickle"
    generate_lidc(workdir / "other.pickle", n_patients=4, patches_per_patient=2, seed=2)
    os.utime(workdir / "other.pickle", ns=(pickle_path.stat().st_mtime_ns - 10**12,) * 2)
    shutil.copy2(workdir / "other.pickle", pickle_path)
    run()
    labels = (results / "lidc/labels.csv").read_bytes()
    assert labels != first["lidc/labels.csv"]
    pngs = sorted(path.name for path in (results / "lidc").rglob("*.png"))
    listed = sorted(Path(path).name for path in pd.read_csv(results / "lidc/labels.csv")["path"])
    assert pngs == listed  # the first pickle's patches are gone
