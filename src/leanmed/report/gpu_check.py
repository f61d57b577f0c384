"""`make gpu-check`: is there a GPU, and what did the GPU check study measure per setting, as ratios to fp32.

    python -m leanmed.report.gpu_check --require-gpu     # exit 2 at once, saying so, when torch sees no CUDA GPU
    python -m leanmed.report.gpu_check RESULTS_DIR       # the ratios table of a finished study (its summary.csv)

The table has one row per dataset and setting at scale 1:
- peak memory: ``memory.train_peak_bytes`` (on CUDA torch.cuda.max_memory_allocated over the training phase), in MiB,
  and its ratio to the fp32 run of the same dataset;
- step time: the median over epochs 2.. of ``epoch_train_seconds`` (epochs.csv; epoch 1 carries cuDNN autotuning and
  allocator warm-up; with one epoch, epoch 1), in seconds, and its ratio to fp32. Every setting of a dataset runs the
  same number of steps per epoch (same split, same batch size), so the epoch ratio is the step-time ratio;
- inference peak memory ratio, test balanced accuracy, status, and the device the run used.

Below it, whether each test balanced accuracy lies in ACCURACY_BAND, the band the check's generated data is made for
(profiles/gpu-check/gpu-check-study.yaml): above it the data is too easy to show a setting losing accuracy, below it
the model did not learn within the short schedule.

Then one line per training job: its wall seconds (Snakemake's benchmark file: process start to end), the seconds of
its training and validation passes (metrics.json), and the rest, the job's fixed cost (imports, CUDA start, model
build, energy tracker, test evaluation, inference timing, writing), with the GPU it claimed and whether its energy was
measured (NVML) or estimated.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from leanmed.report.aggregate import run_dir

MIB = 2**20
#: Test balanced accuracy the GPU check's data is made for: densenet121 at 128 px (BENCHMARKS.md, "The GPU check's
#: data").
ACCURACY_BAND = (0.70, 0.97)
NO_GPU_MESSAGE = (
    "make gpu-check: no CUDA GPU is visible here (torch.cuda.is_available() is False{detail}). The GPU check study "
    "trains on one GPU with --resources gpu=1; run it on a machine with an NVIDIA GPU and a CUDA build of torch."
)


def gpu_available() -> tuple[bool, str]:
    """(True, device name) when torch sees a CUDA GPU, else (False, why)."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - torch is a dependency
        return False, f"; torch does not import: {error}"
    if not torch.cuda.is_available():
        return False, f"; torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
    return True, torch.cuda.get_device_name(0)


def steady_epoch_seconds(epochs_csv: str | Path) -> float:
    """Median of epoch_train_seconds over epochs 2.. (epoch 1 alone when only one ran); NaN without epochs."""
    try:
        with open(epochs_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return math.nan
    seconds = [float(row["epoch_train_seconds"]) for row in rows if row.get("epoch_train_seconds")]
    steady = seconds[1:] or seconds
    return float(pd.Series(steady).median()) if steady else math.nan


def ratios_table(results_dir: str | Path) -> pd.DataFrame:
    """The per-setting figures of a finished study, with ratios to fp32 per dataset (see the module docstring)."""
    results_dir = Path(results_dir)
    summary = pd.read_csv(results_dir / "summary.csv")
    summary = summary[summary["scale"] == 1]
    rows = []
    for record in summary.to_dict("records"):
        folder = run_dir(results_dir / "runs", record["dataset"], record["model"], record["setting"], record["scale"],
                         record["seed"])
        rows.append({
            "dataset": record["dataset"],
            "model": record["model"],
            "setting": record["setting"],
            "seed": record["seed"],
            "status": record["status"],
            "device": record.get("device_name") or record.get("device"),
            "train_peak_mib": record.get("train_peak_bytes", math.nan) / MIB,
            "inference_peak_mib": record.get("inference_peak_bytes", math.nan) / MIB,
            "epoch_seconds": steady_epoch_seconds(folder / "epochs.csv"),
            "balanced_accuracy": record.get("test_balanced_accuracy", math.nan),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.groupby(["dataset", "model", "setting"], sort=False, as_index=False).agg({
        "seed": "count", "status": lambda values: ",".join(sorted(set(values))), "device": "first",
        "train_peak_mib": "mean", "inference_peak_mib": "mean", "epoch_seconds": "mean", "balanced_accuracy": "mean",
    }).rename(columns={"seed": "runs"})
    for column, ratio in (("train_peak_mib", "memory_vs_fp32"), ("epoch_seconds", "step_time_vs_fp32"),
                          ("inference_peak_mib", "inference_memory_vs_fp32")):
        baseline = table[table["setting"] == "fp32"].set_index(["dataset", "model"])[column]
        table[ratio] = [
            value / baseline.get((dataset, model), math.nan)
            for dataset, model, value in zip(table["dataset"], table["model"], table[column])
        ]
    return table


def jobs_table(results_dir: str | Path) -> pd.DataFrame:
    """One row per training job with a benchmark file: wall_s, train_val_s, fixed_s, claimed GPU, energy kind."""
    results_dir = Path(results_dir)
    rows = []
    for tsv in sorted((results_dir / "benchmarks" / "runs").glob("*/*/*/s*/seed*.tsv")):
        dataset, model, setting, scale = tsv.parts[-5:-1]
        metrics_path = results_dir / "runs" / dataset / model / setting / scale / tsv.stem / "metrics.json"
        wall = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        row = {"dataset": dataset, "model": model, "setting": setting, "scale": scale, "seed": tsv.stem,
               "wall_s": wall, "train_val_s": math.nan, "fixed_s": math.nan, "gpu": None, "energy": None}
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text())
            train_val = metrics["training"]["train_time_total_s"] + metrics["training"]["validation_time_total_s"]
            energy = metrics["energy"]["train"]
            row.update(train_val_s=train_val, fixed_s=wall - train_val,
                       gpu=(metrics["provenance"].get("gpu_claim") or {}).get("device"),
                       energy="estimated" if energy.get("estimated") else
                       ("measured" if energy.get("measured") else "not measured"))
        rows.append(row)
    return pd.DataFrame(rows)


def format_jobs(jobs: pd.DataFrame) -> str:
    if jobs.empty:
        return "no training job benchmark files"
    shown = jobs.copy()
    for column in ("wall_s", "train_val_s", "fixed_s"):
        shown[column] = shown[column].map(lambda value: f"{value:.1f}")
    return (f"Training jobs: wall seconds (process start to end), of which training + validation passes, and the "
            f"rest (fixed cost). {len(jobs)} jobs, {jobs['wall_s'].sum():.0f} s in all; fixed part median "
            f"{jobs['fixed_s'].median():.1f} s, max {jobs['fixed_s'].max():.1f} s.\n" + shown.to_string(index=False))


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "no finished runs at scale 1"
    columns = ["dataset", "model", "setting", "status", "train_peak_mib", "memory_vs_fp32", "epoch_seconds",
               "step_time_vs_fp32", "inference_memory_vs_fp32", "balanced_accuracy"]
    shown = table[columns].copy()
    for column in ("train_peak_mib",):
        shown[column] = shown[column].map(lambda value: f"{value:.0f}")
    for column in ("memory_vs_fp32", "step_time_vs_fp32", "inference_memory_vs_fp32", "balanced_accuracy"):
        shown[column] = shown[column].map(lambda value: f"{value:.2f}")
    shown["epoch_seconds"] = shown["epoch_seconds"].map(lambda value: f"{value:.3f}")
    devices = ", ".join(sorted({str(device) for device in table["device"]}))
    return (f"GPU check: per setting, ratios to fp32 of the same dataset (device: {devices}).\n"
            "train_peak_mib = peak memory of the training phase; epoch_seconds = median training seconds of epochs "
            "2.. (same steps per epoch for every setting: the step-time ratio)\n" + shown.to_string(index=False))


def format_accuracy_band(table: pd.DataFrame) -> str:
    """One line: do the runs' test balanced accuracies lie in ACCURACY_BAND, naming those that do not."""
    low, high = ACCURACY_BAND
    outside = [
        f"{row.dataset} {row.setting} {row.balanced_accuracy:.3f}"
        for row in table.itertuples()
        if not low <= row.balanced_accuracy <= high  # NaN (no test result) counts as outside
    ]
    verdict = "all in it" if not outside else "outside it: " + ", ".join(outside)
    return (f"Test balanced accuracy against the band the check's data is made for ({low:.2f}-{high:.2f}; above: too "
            f"easy to show a loss, below: not learned): {len(table) - len(outside)} of {len(table)} runs in it; "
            f"{verdict}.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanmed.report.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", nargs="?", help="results folder of the GPU check study (holds summary.csv)")
    parser.add_argument("--require-gpu", action="store_true", help="exit 2 at once when no CUDA GPU is visible")
    args = parser.parse_args(argv)
    if args.require_gpu:
        available, detail = gpu_available()
        if not available:
            print(NO_GPU_MESSAGE.format(detail=detail), file=sys.stderr)
            return 2
        print(f"make gpu-check: GPU found: {detail}")
    if args.results_dir:
        if (Path(args.results_dir) / "summary.csv").is_file():
            table = ratios_table(args.results_dir)
            print(format_table(table))
            if not table.empty:
                print(format_accuracy_band(table))
        else:
            print(f"{args.results_dir}/summary.csv not found: the study did not finish (ratios need every run)")
        print()
        print(format_jobs(jobs_table(args.results_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
