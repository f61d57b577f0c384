"""The pipeline's contract, proven by execution: after any change, a rerun leaves results/ exactly as a clean run
from scratch with the new configuration would, retraining what the change affects and touching nothing else.

A tiny real study (both datasets, settings fp32 and half, whose fp16 weights + torch Adam diverge in the first
epoch) runs end to end; then eight changes are applied one after the other, each followed by a real rerun:
the split seed, LIDC min_raters, a preprocessing option, the preprocessing code, one setting's registry entry, a
training option, a new seed and a knob of the LIDC generator. After each rerun every affected run trained afresh
(`resumed: false`, new files), every run whose images were made again to the same pixels (the preprocessing code)
resumed to the same weights, and every other run file and PNG is byte-identical with its old mtime. At the end a
clean run from scratch with the final configuration gives the same results, file by file (runs are deterministic
on CPU). A separate test kills a training job mid-training and reruns it unchanged: it resumes to the metrics of an uninterrupted run. Another edits
a copy of the package (the table code, the manifest merge) and reruns: exactly the rules importing it rerun. Others
take a dataset, model, setting, seed and curve out of the config: the report equals a clean run's, and put back, every
run is reused as it was. The same configuration in another key order, or another downsampling mode in a
study without downsampling, reruns nothing.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from leanmed.data.images import read_grey_png
from workflow_helpers import REPO, copy_workflow, planned_jobs, snakemake_patched, write_config

pytestmark = pytest.mark.integration

STUDY = {
    "demo": {
        "enabled": True,
        "seed": 5,
        "rsna": {"patients": 40, "height": 96, "width": 80},
        "lidc": {"patients": 10, "patches_per_patient": 4},
    },
    "dicom": {"shards": 2},
    "image_size": 32,
    "datasets": {"rsna": {"models": ["mlp_small"]}, "lidc": {"models": ["mlp_small"]}},
    # half: float16 weights + torch Adam, NaN in the first epoch: a diverged run inside the study.
    "settings": ["fp32", "half"],
    "seeds": [1],
    "downsampling": {"runs": []},
    "training": {
        "lr": 1.0e-3,
        "pretrained": False,
        "batch_size": 16,
        "max_epochs": 2,
        "patience": 2,
        "num_workers": 0,
        "threads": 1,
        "device": "cpu",
        "gpus_per_job": 0,
        "energy": False,
        "inference_repeats": 1,
    },
    "report": {"n_bootstrap": 100, "dpi": 60},
}
TARGETS = ("results/tables/rsna.md", "results/tables/lidc.md")
RUN_FILES = ("metrics.json", "epochs.csv", "predictions.csv", "last.pt", "best.pt")
# What legitimately differs between two identical runs: timings, memory, energy, the machine, and resumption.
VOLATILE_BLOCKS = {"memory", "inference", "energy", "provenance"}
VOLATILE_TRAINING = {"time_to_best_s", "train_time_total_s", "validation_time_total_s", "resumed"}
EDITED_HALF = ("half", {"optimizer": "adam8bit"})  # fp16 weights with 8-bit Adam: stays finite
EDITED_CODE = {"dicom_preprocessing": "edited0000000000"}


def deep_merge(base, changes):
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


def file_state(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def run_files(workdir):
    """(dataset, setting, seed) -> {file name: (sha256, mtime_ns)} for every run folder."""
    runs = {}
    for metrics in sorted((workdir / "results/runs").glob("*/*/*/s*/seed*/metrics.json")):
        folder = metrics.parent
        dataset, _, setting = folder.parts[-5:-2]
        key = (dataset, setting, int(folder.name.removeprefix("seed")))
        runs[key] = {name: file_state(folder / name) for name in RUN_FILES if (folder / name).exists()}
    return runs


def png_files(workdir, dataset):
    return {
        str(path.relative_to(workdir)): file_state(path)
        for path in sorted((workdir / f"results/{dataset}").rglob("*.png"))
    }


def run_folder(run):
    """The folder of run (dataset, setting, seed) of the study's model at S = 1, relative to the working copy."""
    dataset, setting, seed = run
    return f"results/runs/{dataset}/mlp_small/{setting}/s1/seed{seed}"


def metrics_of(workdir, run):
    return json.loads((workdir / run_folder(run) / "metrics.json").read_text())


def assert_trained_alike(workdir, other, run):
    """The run's predictions.csv, and its epochs.csv but the per-epoch seconds (losses and accuracies), are the same
    in both working copies."""
    for name, strip in (("predictions.csv", lambda text: text.splitlines()),
                        ("epochs.csv", lambda text: [line.split(",")[:5] for line in text.splitlines()])):
        texts = [(copy / run_folder(run) / name).read_text() for copy in (workdir, other)]
        assert strip(texts[0]) == strip(texts[1]), (run, name)


def stable(metrics):
    kept = {key: value for key, value in metrics.items() if key not in VOLATILE_BLOCKS}
    kept["training"] = {key: value for key, value in metrics["training"].items() if key not in VOLATILE_TRAINING}
    return kept


class Study:
    """One working copy of the workflow, run with a config and (optionally) edited package code."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.config = STUDY
        self.edited_setting = None
        self.code_versions = None
        self.targets = TARGETS

    def run(self, *options):
        write_config(self.workdir / "study.yaml", self.config)
        snakemake_patched(
            self.workdir, *self.targets, "--cores", "2", "--configfile", "study.yaml", *options,
            edited_setting=self.edited_setting, code_versions=self.code_versions, check=True,
        )

    def state(self):
        return dict(
            runs=run_files(self.workdir), rsna_png=png_files(self.workdir, "rsna"), lidc_png=png_files(self.workdir, "lidc")
        )


def assert_rerun(study, before, affected, pngs_redone=(), new_data=(), resumed=()):
    """After a rerun: `affected` runs (and runs that are new) trained from scratch; `resumed` runs reran and resumed
    from their finished checkpoints to the same weights and predictions; every other run file and every PNG of a
    dataset not in `pngs_redone` or `new_data` is untouched (same bytes, same mtime). A dataset in `new_data` was
    generated anew: its PNGs' names differ (its patients and slices are new draws)."""
    after = study.state()
    for run, files in after["runs"].items():
        metrics = metrics_of(study.workdir, run)
        if run in affected or run not in before["runs"]:
            assert metrics["training"]["resumed"] is False, run
            assert files["metrics.json"] != before["runs"].get(run, {}).get("metrics.json"), run
            assert files["epochs.csv"] != before["runs"].get(run, {}).get("epochs.csv"), run
        elif run in resumed:
            assert metrics["training"]["resumed"] is True, run
            assert files["metrics.json"] != before["runs"][run]["metrics.json"], run
            for name in ("best.pt", "predictions.csv"):  # a diverged run has no best.pt
                assert files.get(name, ("",))[0] == before["runs"][run].get(name, ("",))[0], (run, name)
        else:
            assert files == before["runs"][run], f"{run} was touched"
    for dataset in ("rsna", "lidc"):
        key = f"{dataset}_png"
        assert after[key], f"no {dataset} PNGs"
        if dataset in new_data:
            # New draws, new patch names; a PNG whose image came out the same is left as it was (lidc_labels rewrites
            # only what changed), and the clean-run test compares every PNG's bytes with a clean run's.
            assert set(after[key]) != set(before[key]), f"{dataset} PNGs all kept"
        elif dataset in pngs_redone:
            assert set(after[key]) == set(before[key])
            assert all(after[key][path][1] != before[key][path][1] for path in after[key]), f"{dataset} PNGs kept"
        else:
            assert after[key] == before[key], f"{dataset} PNGs were touched"
    return after


@pytest.fixture(scope="module")
def changed_study(tmp_path_factory):
    """The study run once, then changed eight times with a rerun after each; returns it with what each rerun did."""
    study = Study(copy_workflow(tmp_path_factory.mktemp("changed")))
    study.run()
    base = study.state()
    tables = {dataset: (study.workdir / f"results/tables/{dataset}.md").read_text() for dataset in ("rsna", "lidc")}
    all_runs = set(base["runs"])
    rsna = {run for run in all_runs if run[0] == "rsna"}
    lidc = {run for run in all_runs if run[0] == "lidc"}
    half = {run for run in all_runs if run[1] == "half"}

    steps = []

    def change(name, config_changes=None, affected=(), pngs_redone=(), edited_setting=None, code_versions=None,
               new_data=(), resumed=()):
        before = study.state()
        study.config = deep_merge(study.config, config_changes or {})
        study.edited_setting = edited_setting or study.edited_setting
        study.code_versions = code_versions or study.code_versions
        study.run()
        assert_rerun(study, before, set(affected), pngs_redone, new_data, set(resumed))
        steps.append(name)

    change("split seed", {"split": {"seed": 7}}, affected=all_runs)
    change("LIDC min_raters", {"cohort": {"lidc": {"min_raters": 3}}}, affected=lidc)
    change("preprocessing option", {"dicom": {"flip_to_left": False}}, affected=rsna, pngs_redone=("rsna",))
    # The PNGs are made again (each records the fingerprint of the code that made it), here to the same pixels: the
    # RSNA runs, whose input hash covers the pixels and not that record, resume to the same weights and predictions.
    change("preprocessing code", resumed=rsna, pngs_redone=("rsna",), code_versions=EDITED_CODE)
    change("a setting's registry entry", affected=half, edited_setting=EDITED_HALF)
    change("training option", {"training": {"lr": 2.0e-3}}, affected=all_runs)
    change("a new seed", {"seeds": [1, 2]}, affected=())
    # A knob of one dataset's generator regenerates that dataset only: the RSNA DICOMs, PNGs and runs stay as they are.
    change("a LIDC generator knob", {"demo": {"lidc": {"borderline_fraction": 0.5}}}, affected=lidc | {
        ("lidc", setting, 2) for setting in ("fp32", "half")}, new_data=("lidc",))
    return dict(study=study, base=base, tables=tables, steps=steps)


def test_a_run_that_diverges_in_its_first_epoch_completes_and_is_marked_in_the_table(changed_study):
    base, tables = changed_study["base"], changed_study["tables"]
    for run in [run for run in base["runs"] if run[1] == "half"]:
        files = base["runs"][run]
        assert {"metrics.json", "epochs.csv", "predictions.csv"} <= set(files), run
        assert "best.pt" not in files  # no epoch finished with a finite validation loss
    for dataset, table in tables.items():
        half_row = next(line for line in table.splitlines() if line.startswith("| mlp_small | half |"))
        assert "n/a*" in half_row and "diverged" in half_row, f"{dataset}:\n{table}"


def test_every_change_reran_exactly_what_it_affects(changed_study):
    # Each step's own assertions ran inside the fixture; here: all eight happened.
    assert changed_study["steps"] == [
        "split seed", "LIDC min_raters", "preprocessing option", "preprocessing code", "a setting's registry entry",
        "training option", "a new seed", "a LIDC generator knob",
    ]
    study = changed_study["study"]
    for run in run_files(study.workdir):
        if run[1] == "half":  # trained under the edited registry entry: float16 weights with 8-bit Adam
            assert metrics_of(study.workdir, run)["setting"]["optimizer_class"] == "bitsandbytes.optim.Adam8bit", run


def test_the_changed_study_equals_a_clean_run_of_its_final_configuration(changed_study, tmp_path):
    changed = changed_study["study"]
    clean = Study(copy_workflow(tmp_path / "clean"))
    shutil.copytree(changed.workdir / "data", clean.workdir / "data")  # the raw (generated) data only
    clean.config, clean.edited_setting, clean.code_versions = changed.config, changed.edited_setting, changed.code_versions
    clean.run()

    changed_runs, clean_runs = run_files(changed.workdir), run_files(clean.workdir)
    assert set(changed_runs) == set(clean_runs) and len(clean_runs) == 8
    for run in clean_runs:
        assert stable(metrics_of(changed.workdir, run)) == stable(metrics_of(clean.workdir, run)), run
        assert metrics_of(clean.workdir, run)["training"]["resumed"] is False
        assert_trained_alike(changed.workdir, clean.workdir, run)
    for relative in ("rsna/images.csv", "rsna/split.csv", "lidc/labels.csv", "lidc/split.csv", "rsna/preprocessing.json"):
        assert (changed.workdir / "results" / relative).read_bytes() == (clean.workdir / "results" / relative).read_bytes(), relative
    for dataset in ("rsna", "lidc"):
        changed_png = {path: state[0] for path, state in png_files(changed.workdir, dataset).items()}
        clean_png = {path: state[0] for path, state in png_files(clean.workdir, dataset).items()}
        assert changed_png == clean_png, dataset
    # Every job's options record (results/options) holds what a clean run of the final configuration records.
    assert option_records(changed.workdir) == option_records(clean.workdir) and option_records(clean.workdir)


def option_records(workdir):
    return {str(path.relative_to(workdir)): path.read_text() for path in (workdir / "results/options").rglob("*.json")}


DEPLOYMENT = "results/deployment/cpu_inference.csv"


@pytest.fixture(scope="module")
def fp32_study(tmp_path_factory):
    """The study with setting fp32 only, run once to its tables and CPU deployment: tests start from copies of it."""
    study = Study(copy_workflow(tmp_path_factory.mktemp("fp32") / "study"))
    study.config, study.targets = deep_merge(STUDY, {"settings": ["fp32"]}), (*TARGETS, DEPLOYMENT)
    study.run()
    return study


def copy_of(finished, destination):
    """A copy of a finished study's folder (results/ and .snakemake/ with it, mtimes kept): a moved project, which a
    rerun finds up to date (the package-edit test's first rerun shows it)."""
    study = Study(Path(shutil.copytree(finished.workdir, destination, symlinks=True)))
    study.config = finished.config
    return study


def test_a_change_of_options_reruns_what_it_affects_also_without_snakemakes_records(fp32_study, tmp_path):
    """Snakemake reruns a job on changed params only from its records in .snakemake/metadata, and never under
    --rerun-triggers mtime: results/ copied without .snakemake/ (or a deleted .snakemake/) and a narrowed trigger
    left runs trained under the old options standing as the current study (shown by a real rerun: "Nothing to be
    done"). Each job's options record (results/options) is an input, rewritten when its params change."""
    study = copy_of(fp32_study, tmp_path / "study")
    study.targets = fp32_study.targets  # the CPU deployment too
    first = study.state()
    lidc, rsna = ("lidc", "fp32", 1), ("rsna", "fp32", 1)
    assert set(first["runs"]) == {lidc, rsna}

    shutil.rmtree(study.workdir / ".snakemake/metadata")  # as in a results/ copied to another machine
    study.config = deep_merge(study.config, {"cohort": {"lidc": {"min_raters": 3}}})
    labels_before = (study.workdir / "results/lidc/labels.csv").read_text()
    study.run()
    second = assert_rerun(study, first, affected={lidc})
    assert (study.workdir / "results/lidc/labels.csv").read_text() != labels_before
    assert json.loads((study.workdir / "results/options/lidc_labels.json").read_text())["params"]["min_raters"] == 3

    study.config = deep_merge(study.config, {"training": {"lr": 2.0e-3}})
    study.run("--rerun-triggers", "mtime")
    assert_rerun(study, second, affected={lidc, rsna})
    assert {metrics_of(study.workdir, run)["training"]["lr"] for run in (lidc, rsna)} == {2.0e-3}

    # Unchanged, nothing reruns: a record keeps its mtime while its params are the same.
    third = study.state()
    study.run("--rerun-triggers", "mtime")
    assert study.state() == third

    # The threads CPU latency is measured with: the deployment is measured again with them, nothing else reruns
    # (a threads directive alone reruns nothing: the tables kept figures measured with the old count).
    deployment = study.workdir / DEPLOYMENT
    assert set(pd.read_csv(deployment)["threads"]) == {1}
    study.config = deep_merge(study.config, {"deployment": {"threads": 2}})
    study.run()
    assert study.state() == third and set(pd.read_csv(deployment)["threads"]) == {2}


def reversed_keys(value):
    """The same configuration with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return [reversed_keys(item) for item in value] if isinstance(value, list) else value


def every_file(workdir):
    return {str(path.relative_to(workdir)): file_state(path)
            for folder in ("results", "data") for path in sorted((workdir / folder).rglob("*")) if path.is_file()}


def test_a_configuration_that_changes_nothing_for_the_studys_jobs_reruns_nothing(fp32_study, tmp_path):
    """Snakemake compares params by their repr, where a dict's key order shows: a --configfile with its keys in
    another order, or repeating a default of config.yaml (which moves that key ahead in the merged config), reran
    every job and, in demo mode, generated the data again (real rerun, before leanmed.study.canonical_config). And
    `downsampling.mode` retrained every run at S = 1, whose images both modes use as they are (real rerun, before
    leanmed.study.downsample_mode_at). `training.checkpoint_interval_s`, how often a job writes last.pt, changes no
    result. All of it at once, on a study of S = 1 runs: no file changes."""
    study = copy_of(fp32_study, tmp_path / "study")
    before = every_file(study.workdir)
    defaults = yaml.safe_load((study.workdir / "config.yaml").read_text())
    repeated = {"report": {"non_inferiority_margin": defaults["report"]["non_inferiority_margin"]},
                "dicom": {"png_bits": defaults["dicom"]["png_bits"]}}
    assert defaults["downsampling"]["mode"] == "smaller_input"
    changed = deep_merge(study.config, {**repeated, "downsampling": {"mode": "pooled_upsampled"},
                                        "training": {"checkpoint_interval_s": 0}})
    study.config = reversed_keys(changed)
    assert list(study.config) == list(reversed(list(changed)))
    study.run()
    assert every_file(study.workdir) == before
    assert metrics_of(study.workdir, ("lidc", "fp32", 1))["run"]["downsample_mode"] == "none"


def test_changes_that_do_not_change_what_the_runs_train_on_retrain_nothing(fp32_study, tmp_path):
    """`dicom.shards` only splits the conversion into more or fewer jobs; `training.inference_repeats` only decides
    how often the finished model is timed; `training.device: auto` resolves to the cpu the runs trained on (on a
    machine without a GPU); a raw DICOM touched (as a copy without mtimes leaves it) is converted
    again to the same pixels. All at once: the conversion jobs, the merge and the training jobs rerun, but every other
    PNG and split.csv keep their bytes, images.csv its rows (the touched image's with its new fingerprint), the
    touched image its pixels, and every run resumes from its finished checkpoint to the same predictions, timed
    twice. Before, the merge's rows followed the shards (3 shards instead of 2 retrained the RSNA runs to other test
    figures, real rerun), and inference_repeats, device and the PNG bytes with their recorded fingerprint were part
    of the hash a checkpoint must match (each retrained every run)."""
    study = copy_of(fp32_study, tmp_path / "study")
    results = study.workdir / "results"
    before = study.state()
    split_csv = file_state(results / "rsna/split.csv")
    images = pd.read_csv(results / "rsna/images.csv", dtype=str)
    first = images.iloc[0]
    dicom = study.workdir / f"data/demo/rsna/train_images/{first['subject_id']}/{first['image_id']}.dcm"
    touched = next(name for name in before["rsna_png"] if name.endswith(f"/{first['image_id']}.png"))
    os.utime(dicom, ns=(dicom.stat().st_atime_ns, dicom.stat().st_mtime_ns + 10**9))
    assert study.config["dicom"]["shards"] == 2 and study.config["training"]["inference_repeats"] == 1
    training = {"inference_repeats": 2}
    if not torch.cuda.is_available():
        training["device"] = "auto"  # resolves to the cpu the runs trained on
    study.config = deep_merge(study.config, {"dicom": {"shards": 3}, "training": training})
    study.run()
    after = study.state()
    assert after["lidc_png"] == before["lidc_png"]
    assert {name: state for name, state in after["rsna_png"].items() if name != touched} == \
        {name: state for name, state in before["rsna_png"].items() if name != touched}
    assert after["rsna_png"][touched][0] != before["rsna_png"][touched][0]  # made again: another fingerprint
    assert np.array_equal(read_grey_png(study.workdir / touched), read_grey_png(fp32_study.workdir / touched))
    assert (study.workdir / "logs/rsna/dicom_to_png_2.log").exists()  # the third shard ran
    assert file_state(results / "rsna/split.csv")[0] == split_csv[0]
    # images.csv: the same rows in the same order; the touched image's row records its new fingerprint.
    images_after = pd.read_csv(results / "rsna/images.csv", dtype=str)
    assert (images_after["fingerprint"] != images["fingerprint"]).tolist() == [True] + [False] * (len(images) - 1)
    pd.testing.assert_frame_equal(images_after.drop(columns="fingerprint"), images.drop(columns="fingerprint"))
    for run in (("rsna", "fp32", 1), ("lidc", "fp32", 1)):
        metrics = metrics_of(study.workdir, run)
        assert metrics["training"]["resumed"] is True and metrics["inference"]["repeats"] == 2, run
        for name in ("predictions.csv", "best.pt"):
            assert after["runs"][run][name][0] == before["runs"][run][name][0], (run, name)


def test_a_higher_max_epochs_continues_the_runs_that_reached_the_limit_to_a_clean_runs_results(fp32_study, tmp_path):
    """`training.max_epochs` and `patience` decide only where training ends; both were in the hash a checkpoint must
    match, so raising max_epochs (runs that stopped at the limit had not converged) trained every run again from
    epoch 1 (real rerun). Now the job replays a checkpoint's history under the new rule: a run at the old limit
    continues from its last.pt, and ends as a run trained from scratch under the new rule does, epoch for epoch."""
    study = copy_of(fp32_study, tmp_path / "study")
    runs = (("rsna", "fp32", 1), ("lidc", "fp32", 1))
    for run in runs:
        assert metrics_of(study.workdir, run)["training"]["epochs_run"] == 2, run  # max_epochs 2, patience 2
    study.config = deep_merge(study.config, {"training": {"max_epochs": 3, "patience": 3}})
    study.run()
    clean = copy_of(study, tmp_path / "clean")
    shutil.rmtree(clean.workdir / "results/runs")
    clean.targets = [f"{run_folder(run)}/metrics.json" for run in runs]
    clean.run()
    for run in runs:
        continued, fresh = metrics_of(study.workdir, run), metrics_of(clean.workdir, run)
        assert continued["training"]["resumed"] is True and fresh["training"]["resumed"] is False, run
        assert continued["training"]["epochs_run"] == 3, run
        assert stable(continued) == stable(fresh), run
        assert_trained_alike(study.workdir, clean.workdir, run)


def test_an_edit_of_package_code_reruns_the_rules_that_import_it_and_what_depends_on_them(
    fp32_study, tmp_path, monkeypatch
):
    """Real edits of a copy of the package (first on PYTHONPATH, for Snakemake and its jobs), as after a `git pull`:
    Snakemake alone would see none of them, as no rule's script changed."""
    study = copy_of(fp32_study, tmp_path / "study")
    package = study.workdir / "src/leanmed"
    shutil.copytree(REPO / "src/leanmed", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    unmoved = study.state()
    study.run()  # the project moved, the package a copy of the same code: nothing reruns
    assert study.state() == unmoved
    results = study.workdir / "results"
    lidc_runs = {run: files for run, files in run_files(study.workdir).items() if run[0] == "lidc"}

    # The table code: the tables are made again with the edit; the summary, the runs and the data are untouched.
    before, summary = study.state(), file_state(results / "summary.csv")
    tables = package / "report/tables.py"
    assert "(S=1: full resolution)" in tables.read_text()
    tables.write_text(tables.read_text().replace("(S=1: full resolution)", "(S=1: full resolution; edited)"))
    study.run()
    for dataset in ("rsna", "lidc"):
        assert "full resolution; edited" in (results / f"tables/{dataset}.md").read_text(), dataset
    assert study.state() == before and file_state(results / "summary.csv") == summary

    # Comments and docstrings of the manifest merge and of the training loop, edited (a typo fix): nothing reruns.
    before = study.state()
    convert, loop = package / "data/convert.py", package / "train/loop.py"
    for module in (convert, loop):
        text = module.read_text()
        assert text.count('"""') >= 2 and "# " in text
        module.write_text(text.replace('"""', '"""Reworded. ', 1).replace("# ", "# reworded: ", 1) + "# a comment\n")
    study.run()
    assert study.state() == before

    # The manifest merge (the code of rules rsna_images and dicom_to_png), edited without changing what it writes:
    # both rerun, the PNGs stay as they are (their preprocessing is unchanged), images.csv comes out the same, and the
    # RSNA runs, whose input was made again, resume from their finished checkpoints to the same predictions.
    before, images = study.state(), file_state(results / "rsna/images.csv")
    convert.write_text(convert.read_text() + "\nEDITED = True\n")
    study.run()
    after = study.state()
    assert after["rsna_png"] == before["rsna_png"] and after["lidc_png"] == before["lidc_png"]
    new_images = file_state(results / "rsna/images.csv")
    assert new_images[0] == images[0] and new_images[1] != images[1]  # made again, the same bytes
    for run, files in after["runs"].items():
        if run[0] == "lidc":
            assert files == lidc_runs[run], run
        else:
            assert metrics_of(study.workdir, run)["training"]["resumed"] is True, run
            assert files["predictions.csv"][0] == before["runs"][run]["predictions.csv"][0], run
            assert files["best.pt"] == before["runs"][run]["best.pt"], run

    # How a run is recorded (leanmed.train.record: a definition of metrics.json reworded): every training job reruns
    # and re-records its run from the finished last.pt, without training it again; nothing else reruns.
    before, summary_before = study.state(), file_state(results / "summary.csv")
    record = package / "train/record.py"
    assert '"diverged": "true when status is diverged"' in record.read_text()
    edited = '"true when status is diverged (edited)"'
    record.write_text(record.read_text().replace('"true when status is diverged"', edited))
    study.run()
    after = study.state()
    assert after["rsna_png"] == before["rsna_png"] and after["lidc_png"] == before["lidc_png"]
    assert file_state(results / "summary.csv") != summary_before  # the report reads the re-recorded runs
    for run, files in after["runs"].items():
        metrics = metrics_of(study.workdir, run)
        assert metrics["definitions"]["diverged"].endswith("(edited)"), run
        assert metrics["training"]["resumed"] is True, run
        for name in ("best.pt", "predictions.csv"):
            assert files[name][0] == before["runs"][run][name][0], (run, name)


def run_folders(workdir):
    """Every run folder of results/ (as a path under results/) -> {file name: (sha256, mtime_ns)}."""
    results = workdir / "results"
    return {
        str(folder.relative_to(results)): {path.name: file_state(path) for path in folder.iterdir()}
        for folder in sorted(results.glob("runs/*/*/*/s*/seed*"))
    }


def report_files(workdir):
    """Every file of results/ but the runs, the options records, the runs' benchmark files and the converted images,
    as paths under results/."""
    results = workdir / "results"
    return {
        str(path.relative_to(results)) for path in results.rglob("*")
        if path.is_file() and path.relative_to(results).parts[0] not in ("runs", "options")
        and path.relative_to(results).parts[:2] != ("benchmarks", "runs") and "png" not in path.relative_to(results).parts
    }


def test_a_smaller_study_leaves_a_clean_runs_report_and_what_it_dropped_comes_back_into_use_unchanged(tmp_path):
    """A dataset, a model, a setting, a seed and a downsampling curve taken out of the config at once (the dataset:
    `models: []`, since a --configfile extends config.yaml and cannot remove its key): a rerun leaves the report
    files of a clean run of the smaller study, which needs no data of the dropped dataset; the dropped runs and
    prepared data stay untouched, listed in results/leftovers.md. Put back, every run is reused as it was and the
    report files are made again."""
    small = deep_merge(STUDY, {"settings": ["fp32"], "datasets": {"rsna": {"models": []}}})  # LIDC, fp32, seed 1
    big = deep_merge(STUDY, {
        "datasets": {"lidc": {"models": ["mlp_small", "test_resnet"]}},
        "settings": ["fp32", "8bit"],
        "seeds": [1, 2],
        "downsampling": {"runs": [{"dataset": "lidc", "model": "mlp_small", "settings": ["fp32"], "scales": [2]}]},
    })
    study = Study(copy_workflow(tmp_path / "changed"))
    study.config, study.targets = big, ("all",)
    study.run()
    before, big_report = run_folders(study.workdir), report_files(study.workdir)
    assert {"tables/rsna.md", "figures/radar_rsna_mlp_small.png", "figures/radar_lidc_test_resnet.png"} <= big_report
    snakemake_patched(study.workdir, "--report", "results/report.html", "--configfile", "study.yaml", check=True)
    assert "radar_lidc_test_resnet.png" in (study.workdir / "results/report.html").read_text()
    study.config = small
    study.run()
    # The report gathered before the change showed the dropped model's figures: deleted, and listed.
    assert not (study.workdir / "results/report.html").exists()
    assert "results/report.html: gathered before the current results" in (
        study.workdir / "logs/report/leftovers.log").read_text()

    clean = Study(copy_workflow(tmp_path / "clean"))  # no data: it generates what the smaller study needs
    clean.config, clean.targets = small, ("all",)
    clean.run()
    assert not (clean.workdir / "data/demo/rsna").exists() and not (clean.workdir / "results/rsna").exists()
    current = run_folders(clean.workdir)
    assert len(current) == 1
    # Kept of the dropped dataset: its prepared data and the benchmark files of the jobs that made it.
    kept = {path for path in report_files(study.workdir)
            if path.startswith(("rsna/", "benchmarks/rsna/")) or path == "benchmarks/demo_rsna.tsv"}
    assert "rsna/images.csv" in kept and report_files(study.workdir) - kept == report_files(clean.workdir)
    assert not (study.workdir / "results/figures/radar_lidc_test_resnet.png").exists()
    assert not (study.workdir / "results/figures/downsampling_lidc_mlp_small.png").exists()
    # The options records of the current jobs are a clean run's; those of dropped jobs stay (read by nothing but
    # Snakemake's mtime check: a job put back with the same options finds its record unchanged and is not redone).
    kept_records, clean_records = option_records(study.workdir), option_records(clean.workdir)
    assert {path: kept_records[path] for path in clean_records} == clean_records
    assert "results/options/radar_plot/dataset=lidc/model=test_resnet.json" in kept_records

    # RSNA's 2 settings x 2 seeds, LIDC's 2 models x 2 settings x 2 seeds and the S=2 curve's 2; 1 is current.
    assert run_folders(study.workdir) == before and len(before) == 14
    listed = (study.workdir / "results/leftovers.md").read_text()
    for folder in before:
        assert (f"- `{folder}`" in listed) == (folder not in current), folder
    log = (study.workdir / "logs/report/leftovers.log").read_text()  # what the rerun deleted: its log, not results/
    assert "results/figures/radar_lidc_test_resnet.png: no dataset" in log and "results/tables/rsna.md: no" in log
    assert "- `rsna`" in listed  # the prepared data
    assert (clean.workdir / "results/leftovers.md").read_text().count("- none") == 2

    study.config = big
    study.run()
    assert run_folders(study.workdir) == before  # every run reused as it was: same bytes, same mtimes
    assert report_files(study.workdir) == big_report
    # Nothing outside the study any more: the same leftovers.md as a clean run of the big study.
    assert (study.workdir / "results/leftovers.md").read_text().count("- none") == 2

    # The models in another order: no run retrains, the tables that list them in the config's order are made again
    # (the merged CPU deployment table kept the old order: no param carried it).
    reordered = deep_merge(big, {"datasets": {"lidc": {"models": ["test_resnet", "mlp_small"]}}})
    write_config(study.workdir / "reordered.yaml", reordered)
    jobs = planned_jobs(study.workdir, "--configfile", "reordered.yaml")
    assert jobs["cpu_deployment"] == 1 and jobs["aggregate"] == 1, jobs
    assert not {"train", "cpu_deployment_model", "split", "lidc_labels"} & set(jobs), jobs


def test_a_job_killed_mid_training_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    """Killed after its last.pt (written about every third epoch: training.checkpoint_interval_s) fell behind by an
    epoch or more: the rerun resumes from it, trains those epochs again and ends as an uninterrupted run."""
    # A small CNN on 128 patches: epochs of a tenth of a second or more, so the kill lands mid-training.
    config = deep_merge(STUDY, {
        "demo": {"lidc": {"patients": 16, "patches_per_patient": 8}},
        "datasets": {"lidc": {"models": ["test_resnet"]}},
        "settings": ["fp32"],
        "training": {"max_epochs": 25, "patience": 25, "lr": 1.0e-4},
    })
    del config["datasets"]["rsna"]
    run_dir = Path("results/runs/lidc/test_resnet/fp32/s1/seed1")
    target = str(run_dir / "metrics.json")

    uninterrupted = copy_workflow(tmp_path / "uninterrupted")
    write_config(uninterrupted / "study.yaml", config)
    snakemake_patched(uninterrupted, target, "--cores", "1", "--configfile", "study.yaml", check=True)

    # last.pt about every third epoch on this machine, whatever its speed: as long as three epochs of the run above.
    epochs = pd.read_csv(uninterrupted / run_dir / "epochs.csv")
    epoch_seconds = float((epochs["epoch_train_seconds"] + epochs["epoch_val_seconds"]).median())
    config["training"]["checkpoint_interval_s"] = round(3 * epoch_seconds, 3)
    killed = copy_workflow(tmp_path / "killed")
    write_config(killed / "study.yaml", config)
    shutil.copytree(uninterrupted / "data", killed / "data")
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", "study.yaml"],
        cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    epochs_csv, last_pt = killed / run_dir / "epochs.csv", killed / run_dir / "last.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if last_pt.exists():
            os.killpg(process.pid, signal.SIGSTOP)  # frozen, the files can be read without a race
            last_epoch = torch.load(last_pt, weights_only=True)["epoch"]
            if len(epochs_csv.read_text().splitlines()) - 1 > last_epoch:  # trained past its last.pt
                break
            os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.02)
    assert process.poll() is None, "the study ended before the kill"
    os.killpg(process.pid, signal.SIGKILL)  # Snakemake and the training job, as a node failure would
    process.wait()
    assert not (killed / target).exists()
    finished_epochs = len(epochs_csv.read_text().splitlines()) - 1
    assert 1 <= last_epoch < finished_epochs < 25

    # As after a power loss: release Snakemake's lock, then rerun unchanged (rerun-incomplete is in the profile).
    snakemake_patched(killed, "--unlock", "--configfile", "study.yaml", check=True)
    snakemake_patched(killed, target, "--cores", "1", "--configfile", "study.yaml", check=True)
    resumed = json.loads((killed / target).read_text())
    reference = json.loads((uninterrupted / target).read_text())
    assert resumed["training"]["resumed"] is True
    log = (killed / "logs/runs/lidc/test_resnet/fp32/s1/seed1.log").read_text()
    assert f"resumed from epoch {last_epoch}" in log
    assert stable(resumed) == stable(reference)
    assert (killed / run_dir / "predictions.csv").read_text() == (uninterrupted / run_dir / "predictions.csv").read_text()


def test_a_local_weights_file_replaced_at_the_same_path_retrains_its_runs_and_one_moved_resumes_them(tmp_path):
    """training.pretrained as a local file: the path alone was a param, so new weights saved under the same name left
    the runs trained from the old ones standing ("Nothing to be done", shown by a real rerun). Its sha256 is now among
    the training jobs' triggers: they rerun, and train afresh (their last.pt started from the other weights).
    The same file moved elsewhere (a dataset and its weights copied to scratch) retrained them too: its path was part
    of config_hash and of the checkpoint's fingerprint. Now the weights count by their content: the runs resume."""
    import timm
    import torch

    weights = tmp_path / "weights.pth"
    study = copy_workflow(tmp_path / "study")
    config = deep_merge(STUDY, {
        "datasets": {"lidc": {"models": ["test_resnet"]}}, "settings": ["fp32"], "training": {"pretrained": str(weights)},
    })
    del config["datasets"]["rsna"]  # deep_merge made config["datasets"] a copy: STUDY keeps its own
    write_config(study / "study.yaml", config)
    run_dir = study / "results/runs/lidc/test_resnet/fp32/s1/seed1"
    target = str((run_dir / "metrics.json").relative_to(study))

    def save_weights(seed):
        torch.manual_seed(seed)
        torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)

    def rerun():
        snakemake_patched(study, target, "--cores", "2", "--configfile", "study.yaml", check=True)
        return {name: file_state(run_dir / name) for name in RUN_FILES}

    save_weights(1)
    first = rerun()
    assert rerun() == first  # unchanged: nothing reruns
    save_weights(2)
    second = rerun()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["resumed"] is False and metrics["model"]["pretrained"] == str(weights)
    assert second["epochs.csv"][0] != first["epochs.csv"][0]  # other initial weights, other losses
    assert second["best.pt"][0] != first["best.pt"][0]

    moved = tmp_path / "scratch/weights.pth"
    moved.parent.mkdir()
    shutil.move(weights, moved)
    weights = moved
    config["training"]["pretrained"] = str(weights)
    write_config(study / "study.yaml", config)
    third = rerun()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["resumed"] is True and metrics["model"]["pretrained"] == str(weights)
    for name in ("best.pt", "predictions.csv", "epochs.csv"):
        assert third[name][0] == second[name][0], name

    weights.unlink()
    process = snakemake_patched(study, target, "--cores", "2", "--configfile", "study.yaml")
    assert process.returncode != 0
    assert f"config key training.pretrained: the weights file '{weights}' for model 'test_resnet' does not exist" in (
        process.stdout + process.stderr)


def test_a_weights_cache_moved_elsewhere_resumes_its_runs(tmp_path, monkeypatch):
    """training.weights_dir moved (the cache copied to a cluster's scratch): the cached file's path was part of
    config_hash and of the checkpoint's fingerprint, so every pretrained run trained again from the same weights
    (real rerun). The weights are placed by hand (no network: HF_HUB_OFFLINE), as docs/cluster.md describes."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = copy_workflow(tmp_path / "study")
    config = deep_merge(STUDY, {
        "datasets": {"lidc": {"models": ["test_resnet"]}}, "settings": ["fp32"],
        "training": {"pretrained": True, "weights_dir": "resources/weights"},
    })
    del config["datasets"]["rsna"]
    write_config(study / "study.yaml", config)
    (study / "resources/weights").mkdir(parents=True)
    torch.manual_seed(3)
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(),
              study / "resources/weights/test_resnet.safetensors")
    run_dir = study / "results/runs/lidc/test_resnet/fp32/s1/seed1"

    def rerun():
        snakemake_patched(study, str((run_dir / "metrics.json").relative_to(study)), "--cores", "2",
                          "--configfile", "study.yaml", check=True)
        return {name: file_state(run_dir / name) for name in RUN_FILES}, json.loads((run_dir / "metrics.json").read_text())

    first, metrics = rerun()
    assert metrics["training"]["resumed"] is False and "placed by hand" in metrics["model"]["pretrained"]
    moved = tmp_path / "scratch/weights"
    shutil.move(study / "resources/weights", moved)
    config["training"]["weights_dir"] = str(moved)
    write_config(study / "study.yaml", config)
    second, metrics = rerun()
    assert metrics["training"]["resumed"] is True and metrics["model"]["pretrained"].startswith(str(moved))
    for name in ("best.pt", "last.pt", "predictions.csv", "epochs.csv"):
        assert second[name][0] == first[name][0], name


def summary_files(workdir):
    """The files Snakemake's --summary lists as present for the study's DAG (temporary files, removed, left out)."""
    process = snakemake_patched(workdir, "--cores", "1", "--configfile", "study.yaml", "--summary", check=True)
    rows = [line.split("\t") for line in process.stdout.splitlines()[1:] if "\t" in line]
    return {row[0] for row in rows if row[4] == "ok"}


def rule_all_inputs(workdir):
    """The input files of rule all, as a dry run forcing it prints them."""
    process = snakemake_patched(workdir, "-n", "--forcerun", "all", "--configfile", "study.yaml", check=True)
    listing = process.stdout.split("rule all:", 1)[1].split("input: ", 1)[1].split("\n", 1)[0]
    return set(listing.split(", "))


def test_converted_images_and_checkpoints_deleted_outside_the_workflow_are_made_again_by_the_next_run(
    fp32_study, tmp_path
):
    """The PNGs are files the conversion steps write without declaring them: one deleted by hand (or a folder deleted
    to free disk) left images.csv / labels.csv naming it, "Nothing to be done", and the next training job failing on
    it (shown by a real run). The plan now finds them and reruns the step that makes them.

    Declared files fared no better: Snakemake does not make a deleted file again while the files made from it are up
    to date, so `snakemake` left 26 of the 53 files of this study missing once deleted (each tried alone, real dry
    runs), a run's metrics.json and split.csv among them. Rule all now names every file the study's jobs declare."""
    study = copy_of(fp32_study, tmp_path / "study")
    study.targets = ()  # rule all, as `snakemake` runs it
    study.run()
    declared, targets = summary_files(study.workdir), rule_all_inputs(study.workdir)
    assert declared <= targets, declared - targets
    before = study.state()
    metrics_before = {run: metrics_of(study.workdir, run) for run in before["runs"]}
    rsna_folder = sorted((study.workdir / "results/rsna/png/images").iterdir())[0]
    lidc_png = sorted((study.workdir / "results/lidc/png").glob("*.png"))[0]
    shutil.rmtree(rsna_folder)
    lidc_png.unlink()
    deleted = ["results/runs/lidc/mlp_small/fp32/s1/seed1/metrics.json", "results/rsna/split.csv",
               "results/deployment/models/lidc/mlp_small.csv", "results/stats/lidc_vs_fp32.tex"]
    assert set(deleted) <= declared
    for name in deleted:
        (study.workdir / name).unlink()

    study.run()
    assert all((study.workdir / name).is_file() for name in deleted)
    after = study.state()
    for dataset in ("rsna", "lidc"):  # made again, the same bytes
        assert {path: state[0] for path, state in after[f"{dataset}_png"].items()} == {
            path: state[0] for path, state in before[f"{dataset}_png"].items()}, dataset
    for run in after["runs"]:  # the same images: the finished runs resume instead of training again
        metrics = metrics_of(study.workdir, run)
        assert metrics["training"]["resumed"] is True, run
        assert stable(metrics) == stable(metrics_before[run]), run
        assert after["runs"][run]["best.pt"] == before["runs"][run]["best.pt"], run
    assert "were missing" in (study.workdir / "results/options/rsna_images.json").read_text()

    again = study.state()
    study.run()
    assert study.state() == again  # marked once: nothing reruns

    # A run's best.pt deleted (the largest file a user frees disk of, with last.pt): CPU deployment, rerun for a new
    # option, called the run "diverged before its first epoch" (shown by a real run). The run now trains again.
    lidc = ("lidc", "fp32", 1)
    lidc_dir = study.workdir / "results/runs/lidc/mlp_small/fp32/s1/seed1"
    (lidc_dir / "best.pt").unlink()
    study.config = deep_merge(study.config, {"deployment": {"repeats": 2}})
    study.run()
    assert_rerun(study, again, affected={lidc})
    assert stable(metrics_of(study.workdir, lidc)) == stable(metrics_before[lidc])  # as trained the first time
    assert (lidc_dir / "best.pt").is_file()
    deployed = pd.read_csv(study.workdir / "results/deployment/cpu_inference.csv")
    assert deployed["note"].isna().all() and (deployed["repeats"] == 2).all()
    why = json.loads((study.workdir / "results/options/train/dataset=lidc/model=mlp_small/setting=fp32/scale=1/"
                      "seed=1.json").read_text())["redone"]["why"]
    assert "was missing" in why and "last.pt deleted" in why  # resumed, the last epoch's weights would score nothing


def test_run_files_restored_from_an_older_backup_or_damaged_are_redone_by_the_next_run(fp32_study, tmp_path):
    """Snakemake compares a job's options with its own records of the job's last run, not with the outputs standing:
    run folders restored from a backup made under another lr with `cp -r` (fresh times) stood as the current study
    ("Nothing to be done" for the training, every metrics.json saying the old lr: shown by a real run). A truncated
    last.pt failed its job on every resume (torch's "failed finding central directory"); a truncated best.pt or an
    unreadable metrics.json failed CPU deployment on every rerun. The plan now checks each run's files against its
    options and split.csv."""
    study = copy_of(fp32_study, tmp_path / "study")
    study.targets = fp32_study.targets
    lidc, rsna = ("lidc", "fp32", 1), ("rsna", "fp32", 1)
    runs_root = study.workdir / "results/runs"
    backup = shutil.copytree(study.workdir / "results", tmp_path / "backup")  # made under lr 1e-3
    study.config = deep_merge(study.config, {"training": {"lr": 2.0e-3}})
    study.run()
    expected = {run: stable(metrics_of(study.workdir, run)) for run in (lidc, rsna)}
    current = shutil.copytree(runs_root, tmp_path / "runs-current")  # what lr 2e-3 trains

    def assert_trained_as_current(run):
        folder = run_folder(run).removeprefix("results/runs/")
        predictions = [(root / folder / "predictions.csv").read_bytes() for root in (runs_root, current)]
        assert predictions[0] == predictions[1], run
        assert metrics_of(study.workdir, run)["test"] == expected[run]["test"], run

    # The whole results/ restored (the options records with it, which the plan rewrites to the options Snakemake
    # recorded for the last run), then only the run folders (the records stand as they are).
    for restored, into in ((backup, study.workdir / "results"), (backup / "runs", runs_root)):
        trained = study.state()
        shutil.rmtree(into)
        shutil.copytree(restored, into, copy_function=shutil.copy)  # as `cp -r`: every file gets a fresh time
        assert {metrics_of(study.workdir, run)["training"]["lr"] for run in (lidc, rsna)} == {1.0e-3}
        study.run()
        if into == runs_root:  # the PNGs of the whole results/ restored have new times: only the runs compare
            assert_rerun(study, trained, affected={lidc, rsna})
        for run in (lidc, rsna):
            assert metrics_of(study.workdir, run)["training"]["resumed"] is False, run  # trained afresh
            assert stable(metrics_of(study.workdir, run)) == expected[run], run
            assert_trained_as_current(run)

    # Damaged files: the LIDC run's last.pt and the RSNA run's best.pt cut short, then an option that resumes runs.
    redone = study.state()
    for run, name in ((lidc, "last.pt"), (rsna, "best.pt")):
        path = study.workdir / run_folder(run) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    study.config = deep_merge(study.config, {"training": {"inference_repeats": 2}})
    study.run()
    assert_rerun(study, redone, affected={lidc, rsna})  # neither could resume: both trained afresh
    for run in (lidc, rsna):
        assert_trained_as_current(run)

    # An unreadable metrics.json: the job runs again and resumes from its last.pt to the same results.
    finished = study.state()
    metrics_file = study.workdir / run_folder(lidc) / "metrics.json"
    metrics_file.write_text(metrics_file.read_text()[:100])
    study.run()
    assert_rerun(study, finished, affected=set(), resumed={lidc})
    assert_trained_as_current(lidc)
    again = study.state()
    study.run()
    assert study.state() == again  # redone once: nothing reruns


def test_converted_images_overwritten_or_cut_short_outside_the_workflow_are_made_again(fp32_study, tmp_path):
    """A PNG of results/ overwritten (other pixels) or cut short after its listing was written stood through every
    rerun ("Nothing to be done"), and the next run trained on it or failed on it for good (real runs). Each listed
    image is now checked to be no newer than its listing: its step runs again and converts it anew."""
    study = copy_of(fp32_study, tmp_path / "study")
    before = study.state()
    metrics_before = {run: metrics_of(study.workdir, run) for run in before["runs"]}
    rsna_png = sorted((study.workdir / "results/rsna/png/images").rglob("*.png"))[0]
    lidc_png = sorted((study.workdir / "results/lidc/png").glob("*.png"))[0]
    Image.fromarray(255 - np.asarray(Image.open(rsna_png))).save(rsna_png)  # other pixels, no fingerprint chunk
    lidc_png.write_bytes(lidc_png.read_bytes()[:200])  # cut short
    study.run()
    after = study.state()
    for dataset in ("rsna", "lidc"):  # made again: the same bytes as before
        assert {path: state[0] for path, state in after[f"{dataset}_png"].items()} == {
            path: state[0] for path, state in before[f"{dataset}_png"].items()}, dataset
    for run in after["runs"]:  # the same images: the runs resume to the same results
        assert metrics_of(study.workdir, run)["training"]["resumed"] is True, run
        assert stable(metrics_of(study.workdir, run)) == stable(metrics_before[run]), run
    for record in ("rsna_images", "lidc_labels"):
        assert "modified after it was written" in (study.workdir / f"results/options/{record}.json").read_text()
    again = study.state()
    study.run()
    assert study.state() == again  # redone once: nothing reruns


def test_a_change_planned_by_a_run_stopped_before_its_jobs_ran_writes_no_redone_entries(fp32_study, tmp_path):
    """A run stopped after planning (killed, --until, a failed job under --keep-going) leaves the records rewritten
    with the new options, the PNGs of the shards that ran newer than images.csv, and the runs trained under the old
    options. The next run reruns them as Snakemake would (the records are newer); the checks for restored or
    modified files stay silent: a first version called each run "a copy from elsewhere, or an older backup restored"
    and the PNGs "modified", writing "redone" entries a clean run's records lack (found by real runs: killed during
    the conversion, --until split)."""
    study = copy_of(fp32_study, tmp_path / "study")
    runs = (("lidc", "fp32", 1), ("rsna", "fp32", 1))
    study.config = deep_merge(study.config, {"image_size": 40})
    study.run("--until", "dicom_to_png")  # plans every job, rewriting their records; converts the RSNA images only
    assert {metrics_of(study.workdir, run)["test"]["n_images"] for run in runs}  # the runs stand, trained at 32 px
    study.run()
    for run in runs:
        assert metrics_of(study.workdir, run)["training"]["resumed"] is False, run
    assert not [path for path, text in option_records(study.workdir).items() if '"redone"' in text]
    assert {Image.open(png).size for png in (study.workdir / "results/rsna/png").rglob("*.png")} == {(40, 40)}


def test_a_plan_refused_by_another_snakemakes_lock_writes_and_deletes_nothing(fp32_study, tmp_path):
    """Snakemake builds its plan before it takes the folder's lock: a second snakemake, refused with a LockException
    while the first ran, had already rewritten a record of the running one and written "redone" entries (a real run).
    While another Snakemake's lock files stand, the plan now writes and deletes nothing."""
    study = copy_of(fp32_study, tmp_path / "study")
    run_dir = study.workdir / run_folder(("rsna", "fp32", 1))
    best = run_dir / "best.pt"
    best.write_bytes(best.read_bytes()[:100])  # damaged: a run holding the lock would delete it and retrain the run
    records = option_records(study.workdir)
    locks = study.workdir / ".snakemake/locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.output.lock").write_text("results/tables/rsna.md\n")  # as a running Snakemake's lock on its outputs
    study.config = deep_merge(study.config, {"training": {"lr": 2.0e-3}})
    write_config(study.workdir / "study.yaml", study.config)
    process = snakemake_patched(study.workdir, *study.targets, "--cores", "2", "--configfile", "study.yaml")
    assert process.returncode != 0 and "LockException" in process.stdout + process.stderr
    assert option_records(study.workdir) == records and len(best.read_bytes()) == 100
    study.run("--unlock")
    study.run()
    assert metrics_of(study.workdir, ("rsna", "fp32", 1))["training"]["lr"] == 2.0e-3 and best.stat().st_size > 100
