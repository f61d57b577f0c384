"""`make gpu-check`: the ratios it prints (crafted runs), the plan of its profile, and the message without a GPU."""
import csv
import json

import pandas as pd
import pytest

from leanmed.report import gpu_check
from workflow_helpers import copy_workflow, planned_jobs, snakemake


def write_run(results, dataset, setting, peak_mib, epoch_seconds, inference_mib=100):
    folder = results / "runs" / dataset / "densenet121" / setting / "s1" / "seed1"
    folder.mkdir(parents=True)
    with open(folder / "epochs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "epoch_train_seconds"])
        writer.writeheader()
        for epoch, seconds in enumerate(epoch_seconds, start=1):
            writer.writerow({"epoch": epoch, "epoch_train_seconds": seconds})
    return {
        "dataset": dataset, "model": "densenet121", "setting": setting, "scale": 1, "seed": 1, "status": "completed",
        "device_name": "NVIDIA H200", "train_peak_bytes": peak_mib * 2**20,
        "inference_peak_bytes": inference_mib * 2**20, "test_balanced_accuracy": 0.8,
    }


def test_ratios_to_fp32_per_dataset_skip_the_first_epoch(tmp_path):
    rows = [
        write_run(tmp_path, "rsna", "fp32", 1000, [9.0, 2.0, 2.2, 2.0]),  # epoch 1: cuDNN autotuning, left out
        write_run(tmp_path, "rsna", "amp", 520, [5.0, 3.0, 3.0, 2.9]),
        write_run(tmp_path, "lidc", "fp32", 800, [4.0]),  # one epoch: that one
        write_run(tmp_path, "lidc", "8bit", 792, [6.0]),
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    table = gpu_check.ratios_table(tmp_path).set_index(["dataset", "setting"])
    assert table.loc[("rsna", "amp"), "memory_vs_fp32"] == pytest.approx(0.52)
    assert table.loc[("rsna", "amp"), "step_time_vs_fp32"] == pytest.approx(3.0 / 2.0)
    assert table.loc[("lidc", "8bit"), "step_time_vs_fp32"] == pytest.approx(1.5)
    assert table.loc[("rsna", "fp32"), "memory_vs_fp32"] == 1.0
    text = gpu_check.format_table(gpu_check.ratios_table(tmp_path))
    assert "NVIDIA H200" in text and "0.52" in text and "1.50" in text


def test_it_names_the_runs_outside_the_accuracy_band_the_data_is_made_for(tmp_path, capsys):
    rows = [write_run(tmp_path, "rsna", setting, 1000, [2.0, 2.0]) for setting in ("fp32", "amp", "8bit")]
    rows[1]["test_balanced_accuracy"], rows[2]["test_balanced_accuracy"] = 1.0, float("nan")
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    assert gpu_check.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "0.70-0.97" in printed and "1 of 3 runs in it" in printed
    assert "outside it: rsna amp 1.000, rsna 8bit nan." in printed
    rows[1]["test_balanced_accuracy"] = rows[2]["test_balanced_accuracy"] = 0.9
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    assert "3 of 3 runs in it; all in it." in gpu_check.format_accuracy_band(gpu_check.ratios_table(tmp_path))


def test_without_a_gpu_it_says_so_at_once(capsys):
    available, _ = gpu_check.gpu_available()
    if available:
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--require-gpu"]) == 2
    message = capsys.readouterr().err
    assert "no CUDA GPU" in message and "gpu=1" in message


@pytest.mark.integration
def test_the_gpu_check_profile_plans_the_chain_on_one_gpu_into_its_own_folder(tmp_path):
    workdir = copy_workflow(tmp_path / "study")
    jobs = planned_jobs(workdir, "--profile", "profiles/gpu-check")
    assert jobs["train"] == 11  # 5 settings x 2 datasets + one downsampling point
    assert jobs["demo_rsna"] == jobs["demo_lidc"] == 1 and jobs["all"] == 1
    plan = snakemake(workdir, "-n", "--profile", "profiles/gpu-check").stdout
    assert "results/gpu-check/runs/rsna/densenet121/half_8bit/s1/seed1/metrics.json" in plan
    assert "results/gpu-check/runs/rsna/densenet121/fp32/s2/seed1/metrics.json" in plan
    assert " results/runs/" not in plan and "gpu=1" in plan


def test_each_training_jobs_fixed_cost_is_its_wall_time_outside_training(tmp_path):
    benchmark = tmp_path / "benchmarks/runs/rsna/densenet121/amp/s1"
    benchmark.mkdir(parents=True)
    (benchmark / "seed1.tsv").write_text("s\th:m:s\tmax_rss\n21.5\t0:00:21\t900\n")
    run = tmp_path / "runs/rsna/densenet121/amp/s1/seed1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "training": {"train_time_total_s": 4.0, "validation_time_total_s": 1.5},
        "energy": {"train": {"measured": True, "estimated": False}},
        "provenance": {"gpu_claim": {"device": "2"}},
    }))
    jobs = gpu_check.jobs_table(tmp_path)
    assert jobs.loc[0, ["setting", "wall_s", "train_val_s", "fixed_s", "gpu", "energy"]].tolist() == [
        "amp", 21.5, 5.5, 16.0, "2", "measured"]
    assert "fixed part median 16.0 s" in gpu_check.format_jobs(jobs)
