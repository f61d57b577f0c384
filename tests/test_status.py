"""`python -m leanmed.study.status` on a crafted results folder: each run state counted, progress and estimates."""
import json
import os
import time

import pytest

from leanmed.study import status
from workflow_helpers import copy_workflow, write_config

STUDY = {  # merged over config.yaml as Snakemake merges (its RSNA models stay: waiting runs)
    "datasets": {"lidc": {"models": ["mlp_small"]}},
    "settings": ["fp32", "amp", "8bit", "amp_8bit", "half_8bit", "half"],
    "seeds": [1],
    "downsampling": {"runs": []},
    "training": {"max_epochs": 10, "gpus_per_job": 1},
}
EPOCH_HEADER = "epoch,train_loss,val_loss,val_accuracy,val_roc_auc,epoch_train_seconds,epoch_val_seconds,lr\n"


def run_folder(workdir, setting, root="results/runs"):
    folder = workdir / root / "lidc/mlp_small" / setting / "s1/seed1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_log(workdir, setting, text):
    log = workdir / "logs/runs/lidc/mlp_small" / setting / "s1/seed1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    return log


def finished(workdir, setting, status_value, wall_seconds):
    folder = run_folder(workdir, setting)
    (folder / "metrics.json").write_text(json.dumps(
        {"status": status_value, "training": {"epochs_run": 4, "best_val_loss": 0.5}}))
    benchmark = run_folder(workdir, setting, "results/benchmarks/runs").parent / "seed1.tsv"
    benchmark.write_text(f"s\th:m:s\n{wall_seconds}\t0:01:00\n")


def partial(workdir, setting, epochs, age_seconds=0):
    folder = run_folder(workdir, setting)
    rows = "".join(f"{e},0.7,{0.9 - e / 10},0.6,0.7,30.0,5.0,0.001\n" for e in range(1, epochs + 1))
    (folder / "epochs.csv").write_text(EPOCH_HEADER + rows)
    (folder / "last.pt").write_bytes(b"checkpoint")
    stamp = time.time() - age_seconds
    for path in (folder / "epochs.csv", folder / "last.pt"):
        os.utime(path, (stamp, stamp))
    return folder


@pytest.fixture
def study(tmp_path):
    workdir = copy_workflow(tmp_path / "study")
    write_config(workdir / "study.yaml", STUDY)
    finished(workdir, "fp32", "completed", 600)
    finished(workdir, "amp", "diverged", 400)
    partial(workdir, "8bit", epochs=3)  # running: progress just now
    write_log(workdir, "8bit", "2026-11-27 10:00:00 INFO epoch 3 of 10\n")
    partial(workdir, "amp_8bit", epochs=2)  # failed: the log ends in a traceback written after the last epoch
    log = write_log(workdir, "amp_8bit", "2026-11-27 10:00:00 INFO start\nTraceback (most recent call last):\n"
                    '  File "x.py", line 1\ntorch.OutOfMemoryError: CUDA out of memory\n')
    later = time.time() + 5
    os.utime(log, (later, later))
    partial(workdir, "half_8bit", epochs=1, age_seconds=3 * 3600)  # stalled: no progress for 3 hours
    return workdir  # "half": waiting


def test_each_state_is_counted_with_progress_and_estimates(study):
    config = status.load_config(["study.yaml"], root=study)
    result = status.study_status(config, root=study)
    lidc = [run for run in result["runs"] if run["dataset"] == "lidc"]
    states = {run["setting"]: run["state"] for run in lidc}
    assert states == {"fp32": "completed", "amp": "diverged", "8bit": "running", "amp_8bit": "failed",
                      "half_8bit": "stalled", "half": "waiting"}
    running = next(run for run in lidc if run["setting"] == "8bit")
    assert running["epochs"] == 3 and running["best_val_loss"] == pytest.approx(0.6)
    # spent: finished jobs 600 + 400 s; running/stalled/failed-with-epochs: 35 s per epoch (3 + 2 + 1 epochs)
    assert result["hours_spent"] == pytest.approx((1000 + 6 * 35) / 3600)
    # left at the median of 500 s: waiting 1 + failed 1 (whole jobs), running 7/10 and stalled 9/10 of one; the RSNA
    # models of config.yaml have no finished job: no estimate for them, and said so
    assert result["hours_left"] == pytest.approx(500 * (1 + 1 + 0.7 + 0.9) / 3600)
    assert "densenet121" in result["models_without_estimate"] and "mlp_small" not in result["models_without_estimate"]
    text = status.format_status(result)
    assert "GPU-hours" in text and "epoch 3, best validation loss 0.6000" in text
    lidc_row = next(line for line in text.splitlines() if line.startswith("lidc"))
    assert lidc_row.split() == ["lidc", "mlp_small", "1", "1", "1", "1", "1", "1", "6"]


def test_a_rerun_after_a_failure_is_running_again(study):
    log = study / "logs/runs/lidc/mlp_small/amp_8bit/s1/seed1.log"
    log.write_text(log.read_text() + "2026-11-27 11:00:00 INFO start (rerun)\n")
    config = status.load_config(["study.yaml"], root=study)
    runs = status.study_status(config, root=study)["runs"]
    assert next(run for run in runs if run["dataset"] == "lidc" and run["setting"] == "amp_8bit")["state"] == "running"


def test_the_profile_names_its_config_files(study):
    assert status.profile_configfiles(study / "profiles/demo") == ["profiles/demo/demo-study.yaml"]
