"""Deployment on non-specialised hardware: CPU inference of every trained best checkpoint.

The paper's motivation is running critical models on cheap hardware. For each finished run this module loads the
best-validation checkpoint (``best.pt``) onto the CPU of the machine running it, with float32 weights (a model trained
with half or bf16 weights is cast up: CPUs run float32 fastest, see docs/measurements.md), and times its forward
passes over that run's own test images with ``leanmed.train.measure.time_inference``:

- ``per_image_latency_ms``: median over repeats of the mean batch-1 forward time over the first ``latency_images``
  (at most 64) of the timed images, milliseconds;
- ``test_set_seconds_batch32``: median over repeats of one pass over the ``n_test_images`` timed images (the first
  ``deployment.max_images`` of the test split) in batches of 32, seconds;
- ``throughput_images_per_s``: ``n_test_images`` / ``test_set_seconds_batch32``.

Decoding PNGs is not included (images are loaded first); one untimed batch-32 pass precedes the timed ones, and four
untimed batch-1 forwards the latency passes.
"""

from __future__ import annotations

import json
from pathlib import Path

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
        "latency_images": timing["latency_images"],
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
