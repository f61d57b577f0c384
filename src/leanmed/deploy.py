"""Deployment on non-specialised hardware: CPU inference of every trained best checkpoint.

The paper's motivation is running critical models on cheap hardware. For each finished run this module loads the
best-validation checkpoint (``best.pt``) onto the CPU of the machine running it, with float32 weights (a model trained
with half or bf16 weights is cast up: CPUs run float32 fastest, see docs/measurements.md), and times its forward
passes over that run's own test images with ``leanmed.train.measure.time_inference``:

- ``per_image_latency_ms``: median over repeats of the mean batch-1 forward time, milliseconds;
- ``test_set_seconds_batch32``: median over repeats of one pass over the test set in batches of 32, seconds;
- ``throughput_images_per_s``: test images / ``test_set_seconds_batch32``.

Decoding PNGs is not included (images are loaded first); a warm-up pass precedes the timed ones.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd
import torch

from leanmed.data.images import ImageDataset
from leanmed.report.aggregate import run_dir
from leanmed.train.measure import device_name, time_inference
from leanmed.train.models import build_model
from leanmed.train.settings import resolve

BATCH_SIZE = 32


def load_best_model(checkpoint_path) -> tuple[torch.nn.Module, dict]:
    """The model of a best checkpoint on the CPU with float32 weights, and the checkpoint's metadata."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = build_model(checkpoint["model"], checkpoint["input_size"])
    state = {name: tensor.float() if tensor.is_floating_point() else tensor
             for name, tensor in checkpoint["model_state"].items()}
    model.load_state_dict(state)
    return model.float().eval(), checkpoint


def benchmark_run(directory, split_csv, repeats=5, threads=1, max_images=256) -> dict:
    """CPU inference figures of one run's best checkpoint over its own test images (see the module docstring).

    At most ``max_images`` test images (the first ones of split.csv) are timed: latency and throughput do not depend
    on which images, and the full RSNA test set would take many minutes per large model on a CPU."""
    directory = Path(directory)
    metrics = json.loads((directory / "metrics.json").read_text())
    torch.set_num_threads(threads)
    model, checkpoint = load_best_model(directory / "best.pt")
    test = ImageDataset(
        split_csv,
        "test",
        scale=metrics["run"]["scale"],
        downsample_mode=metrics["run"].get("downsample_mode", "pooled_upsampled"),
        image_size=checkpoint["image_size"],
        preload=False,  # decode only the max_images timed below, not the whole test split
    )
    images = torch.stack([test[index][0] for index in range(min(len(test), max_images))])
    timing = time_inference(model, images, resolve("fp32", "cpu"), batch_size=BATCH_SIZE, repeats=repeats)
    return {
        "per_image_latency_ms": timing["per_image_latency_ms"],
        "test_set_seconds_batch32": timing["test_set_seconds"],
        "throughput_images_per_s": timing["n_images"] / timing["test_set_seconds"],
        "n_test_images": timing["n_images"],
        "input_size": checkpoint["input_size"],
        "trained_weight_dtype": metrics["setting"]["weight_dtype"],
        "deployed_weight_dtype": "float32",
        "cpu": device_name("cpu"),
        "threads": threads,
        "repeats": repeats,
    }


class CheckpointMissing(FileNotFoundError):
    """A finished run's best checkpoint is gone: its figures cannot be measured, and a note would misreport it."""


def deployment_record(run, runs_root, split_csv, repeats=5, threads=1, max_images=256) -> dict:
    """One run's CPU deployment figures, or a note saying why there are none: the run diverged before any epoch
    finished, so it has no best checkpoint. A best.pt missing although metrics.json reports a best epoch (deleted
    outside the workflow) raises CheckpointMissing naming the file (the workflow retrains such a run first)."""
    record = {key: run[key] for key in ("dataset", "model", "setting", "scale", "seed")}
    directory = run_dir(runs_root, run["dataset"], run["model"], run["setting"], run["scale"], run["seed"])
    if not (directory / "best.pt").exists():
        best_epoch = json.loads((directory / "metrics.json").read_text())["training"]["best_epoch"]
        if best_epoch is not None:
            raise CheckpointMissing(
                f"{directory / 'best.pt'} is missing, yet {directory / 'metrics.json'} reports best epoch "
                f"{best_epoch}: "
                "the checkpoint was deleted outside the workflow; run the workflow again, which retrains this run"
            )
        record["note"] = f"no best checkpoint in {directory} (the run diverged before its first epoch)"
        return record
    record.update(benchmark_run(directory, split_csv, repeats=repeats, threads=threads, max_images=max_images))
    record["note"] = ""
    return record


# The table's columns in order, whatever the first run holds (a diverged run has the run keys and a note only), and
# those holding whole numbers (kept integers where some run has none, as a clean run of other runs would write them).
DEPLOYMENT_COLUMNS = (
    "dataset", "model", "setting", "scale", "seed", "per_image_latency_ms", "test_set_seconds_batch32",
    "throughput_images_per_s", "n_test_images", "input_size", "trained_weight_dtype", "deployed_weight_dtype", "cpu",
    "threads", "repeats", "note",
)
INTEGER_COLUMNS = ("scale", "seed", "n_test_images", "input_size", "threads", "repeats")


def deployment_frame(rows) -> pd.DataFrame:
    """``deployment_record`` rows (dicts or a DataFrame) with DEPLOYMENT_COLUMNS in order, whole numbers as integers
    (empty where a run has none), the note empty rather than missing."""
    frame = pd.DataFrame(rows).reindex(columns=list(DEPLOYMENT_COLUMNS))
    frame = frame.astype({column: "Int64" for column in INTEGER_COLUMNS})
    frame["note"] = frame["note"].fillna("")
    return frame


def deployment_table(table_paths) -> pd.DataFrame:
    """Tables of ``deployment_record`` rows (CSV files, e.g. one per model) as one table, in the given order."""
    return deployment_frame(pd.concat([pd.read_csv(path) for path in table_paths], ignore_index=True))


def deployment_caption(table: pd.DataFrame) -> str:
    cpus = ", ".join(sorted(set(table.get("cpu", pd.Series(dtype=str)).dropna())))
    threads = sorted({int(value) for value in table.get("threads", pd.Series(dtype=float)).dropna()})
    images = sorted({int(value) for value in table.get("n_test_images", pd.Series(dtype=float)).dropna()})
    return (
        f"CPU inference of the best-validation checkpoint of {len(table)} runs on {cpus or 'this machine'} "
        f"({platform.machine()}), float32 weights, {'/'.join(map(str, threads)) or 'n/a'} thread(s), "
        f"{'/'.join(map(str, images)) or 'n/a'} test images per run. Latency: median over repeats of the mean batch-1 "
        "forward time (ms). Throughput: images per second in batches of 32 (median pass). Image decoding excluded; "
        "one warm-up pass first. Runs without a best checkpoint are listed with a note."
    )
