"""Runs measured in different environments (GPU models of a cluster, a torch upgrade between seeds): the tables,
figures and findings say where each figure was measured, and flag time, memory and energy compared across them."""

from __future__ import annotations

import math

from leanmed.report import aggregate, environments, findings, grouping, pareto, tables
from test_report_tables import make_metrics, write_run

H100 = "cuda (NVIDIA H100), torch 2.14.1, CUDA 12.8, bitsandbytes 0.50.2, timm 1.0.31"
A100 = "cuda (NVIDIA A100-SXM4-80GB), torch 2.14.1, CUDA 12.8, bitsandbytes 0.50.2, timm 1.0.31"


def measured_on(metrics, device_name="NVIDIA H100", torch="2.14.1", **provenance):
    metrics["provenance"].update(device_name=device_name, torch=torch, **provenance)
    return metrics


def summary_of(tmp_path, runs):
    """summary.csv of the given metrics.json contents, written and read back as the report rules do."""
    root = tmp_path / "runs"
    for metrics in runs:
        write_run(root, metrics)
    path = aggregate.write_summary(aggregate.collect([m["run"] for m in runs], root), tmp_path / "summary.csv")
    return aggregate.read_summary(path)


def test_a_runs_environment_is_named_from_its_provenance(tmp_path):
    cpu = {"device": "cpu", "device_name": "AMD EPYC 7B13", "torch_threads": 2.0, "torch_version": "2.14.1+cu130",
           "cuda_version": math.nan, "cudnn_version": math.nan, "bitsandbytes_version": "0.50.2",
           "timm_version": "1.0.31"}
    assert environments.run_environment(cpu) == (
        "cpu (AMD EPYC 7B13), 2 CPU threads, torch 2.14.1+cu130, bitsandbytes 0.50.2, timm 1.0.31")
    assert environments.run_environment({**cpu, "torch_threads": 1}).startswith("cpu (AMD EPYC 7B13), 1 CPU thread,")
    gpu = {**cpu, "device": "cuda", "device_name": "NVIDIA H200", "cuda_version": "13.0", "cudnn_version": 91002.0}
    assert environments.run_environment(gpu) == (
        "cuda (NVIDIA H200), torch 2.14.1+cu130, CUDA 13.0, cuDNN 91002, bitsandbytes 0.50.2, timm 1.0.31")
    assert environments.run_environment({"device": math.nan}) == environments.UNKNOWN_ENVIRONMENT

    # summary.csv carries what the label needs, threads and cuDNN included.
    summary = summary_of(tmp_path, [measured_on(make_metrics("rsna", "densenet121", "fp32", 1, 1, accuracy=0.7),
                                                cudnn=91002, torch_threads=8, cuda="13.0")])
    assert summary.loc[0, "cudnn_version"] == 91002 and summary.loc[0, "torch_threads"] == 8
    # CUDA "13.0" stays text through the CSV (read as a number, it printed "CUDA 13").
    assert environments.run_environment(summary.loc[0]) == H100.replace("CUDA 12.8", "CUDA 13.0, cuDNN 91002")


def mixed_study(tmp_path):
    """fp32 on H100; amp seed 1 on H100, seed 2 on A100 (a cluster's two GPU partitions); half_8bit on A100."""
    runs = []
    for seed in (1, 2):
        runs.append(measured_on(make_metrics("rsna", "densenet121", "fp32", 1, seed, accuracy=0.7)))
        runs.append(measured_on(make_metrics("rsna", "densenet121", "amp", 1, seed, accuracy=0.7,
                                             train_peak_bytes=1.5e9),
                                device_name="NVIDIA H100" if seed == 1 else "NVIDIA A100-SXM4-80GB"))
        runs.append(measured_on(make_metrics("rsna", "densenet121", "half_8bit", 1, seed, accuracy=0.7,
                                             train_peak_bytes=1e9), device_name="NVIDIA A100-SXM4-80GB"))
    return summary_of(tmp_path, runs)


def test_a_table_of_runs_from_two_environments_names_each_rows(tmp_path):
    summary = mixed_study(tmp_path)
    table = tables.paper_table(summary, "rsna")
    assert list(table[tables.ENVIRONMENT_COLUMN]) == ["E1", "E1+E2", "E2"]
    assert list(table.columns).index(tables.ENVIRONMENT_COLUMN) == list(table.columns).index("Runs") - 1
    caption = table.attrs["caption"]
    assert "MIXED environments, so time, memory and energy compare only between runs of one environment" in caption
    assert f"E1 = {H100}; E2 = {A100}" in caption and "column Env gives each row's" in caption

    text = findings.findings_markdown(summary, [])
    amp = next(line for line in text.splitlines() if line.startswith("- amp:"))
    half = next(line for line in text.splitlines() if line.startswith("- half_8bit:"))
    for line in (amp, half):
        assert f"peak training memory {0.5 if line is amp else 1 / 3:.2f}x ({findings.OTHER_ENVIRONMENTS})" in line
        assert f"time to convergence 1.00x ({findings.OTHER_ENVIRONMENTS})" in line

    front = pareto.pareto_front(summary, "rsna")
    assert list(front["environment"]) == [H100, f"{H100}{environments.ENVIRONMENT_SEPARATOR}{A100}", A100]
    assert "MIXED environments" in front.attrs["caption"]


def test_a_torch_upgrade_between_seeds_is_another_environment(tmp_path):
    runs = [measured_on(make_metrics("rsna", "densenet121", "fp32", 1, seed, accuracy=0.7),
                        torch="2.14.1" if seed == 1 else "2.15.0") for seed in (1, 2)]
    table = tables.paper_table(summary_of(tmp_path, runs), "rsna")
    assert list(table[tables.ENVIRONMENT_COLUMN]) == ["E1+E2"]
    assert f"E2 = {H100.replace('torch 2.14.1', 'torch 2.15.0')}" in table.attrs["caption"]


def test_one_environment_keeps_the_papers_layout_and_is_named(tmp_path):
    runs = [measured_on(make_metrics("rsna", "densenet121", setting, 1, seed, accuracy=0.7))
            for setting in ("fp32", "amp") for seed in (1, 2)]
    summary = summary_of(tmp_path, runs)
    table = tables.paper_table(summary, "rsna")
    assert list(table.columns) == list(tables.PAPER_TABLE_COLUMNS)
    assert f"Measured on: {H100}; training step" in table.attrs["caption"] and "MIXED" not in table.attrs["caption"]
    assert findings.OTHER_ENVIRONMENTS not in findings.findings_markdown(summary, [])


def trained_in(device_name, torch_threads=None):
    """A provenance.training_environments entry as leanmed.train.measure.measurement_environment writes it."""
    return {"device": "cuda", "device_name": device_name, "torch_version": "2.14.1", "cuda_version": "12.8",
            "cudnn_version": None, "bitsandbytes_version": "0.50.2", "timm_version": "1.0.31",
            "torch_threads": torch_threads or 4}


def test_a_run_resumed_on_another_gpu_names_both_and_its_group_is_mixed(tmp_path):
    """A run requeued onto a cluster's other GPU partition trained part of its epochs on each GPU: its time, memory and
    energy mix two GPUs. It used to report only the GPU it finished on, and its group one environment."""
    runs = []
    for seed in (1, 2):
        runs.append(measured_on(make_metrics("rsna", "densenet121", "fp32", 1, seed, accuracy=0.7),
                                training_environments=[trained_in("NVIDIA H100")]))
    resumed = measured_on(make_metrics("rsna", "densenet121", "amp", 1, 1, accuracy=0.7),
                          training_environments=[trained_in("NVIDIA A100-SXM4-80GB"), trained_in("NVIDIA H100")])
    runs += [resumed, measured_on(make_metrics("rsna", "densenet121", "amp", 1, 2, accuracy=0.7),
                                  training_environments=[trained_in("NVIDIA H100")])]
    summary = summary_of(tmp_path, runs)

    labels = [environments.run_environment(row) for _, row in summary.iterrows()]
    assert labels.count(H100) == 3  # trained and tested on the H100: the label as before
    assert f"training in {A100} then in {H100}, test and inference in {H100}" in labels
    groups = grouping.group_summary(summary)
    amp = groups[groups["setting"] == "amp"].iloc[0]
    fp32 = groups[groups["setting"] == "fp32"].iloc[0]
    assert not environments.same_environment(amp, fp32)
    assert environments.describe_environments(groups).startswith("MIXED environments")
