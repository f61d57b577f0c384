"""What a training job writes besides checkpoints: metrics.json (its content, schema and definitions), epochs.csv and
predictions.csv.
"""

from __future__ import annotations

import csv
import json
import math
from importlib import resources
from pathlib import Path
from typing import Sequence

from leanmed.atomic import atomic_path, write_text_atomically
from leanmed.train.measure import parameter_bytes, provenance
from leanmed.train.models import get_model_spec, has_pretrained_weights
from leanmed.train.weights import describe as describe_cached_weights

__all__ = [
    "SCHEMA_VERSION",
    "EPOCH_COLUMNS",
    "PREDICTION_COLUMNS",
    "DEFINITIONS",
    "load_schema",
    "validate_metrics",
    "write_csv",
    "write_json",
    "finite_or_none",
    "memory_block",
    "metrics_record",
    "pretrained_record",
]

SCHEMA_VERSION = 1
EPOCH_COLUMNS = (
    "epoch", "train_loss", "val_loss", "val_accuracy", "val_roc_auc", "epoch_train_seconds", "epoch_val_seconds", "lr",
)
PREDICTION_COLUMNS = ("image_id", "subject_id", "label", "probability", "prediction")


def finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})


def write_json(path: Path, payload: dict) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def load_schema() -> dict:
    """The JSON Schema (draft 2020-12) of metrics.json."""
    text = resources.files("leanmed").joinpath("schemas", "metrics.schema.json").read_text()
    return json.loads(text)


def validate_metrics(metrics: dict) -> None:
    """Raise jsonschema.ValidationError when ``metrics`` does not follow metrics.schema.json."""
    import jsonschema

    schema = load_schema()
    jsonschema.validators.validator_for(schema)(schema).validate(metrics)


DEFINITIONS = {
    # Keys are field paths of metrics.json; "*" stands for any part of one (fnmatch), and a key covers the fields below
    # it. A test checks that every field of a run's metrics.json is covered, and docs/measurements.md repeats them.
    "schema_version": "version of this file's layout (leanmed's metrics.schema.json)",
    "run": "which run: dataset, model (leanmed alias) and its timm_name, setting, scale S, seed, and downsample_mode "
           "(none at S = 1)",
    "status": "completed: training ended by early stopping or max_epochs; diverged: a NaN/inf training or validation "
              "loss stopped it (the paper's *)",
    "diverged": "true when status is diverged",
    "*.note": "why a figure of its block is null, or what the block's figures include or lack; null: nothing to add",
    "setting": "what ran: weight dtype, autocast dtype (null without autocast), GradScaler, optimiser class and its "
               "state width for tensors of >= 4096 elements (smaller ones keep 32-bit state with bitsandbytes)",
    "setting.step": "the training step's speed options: requested (training.tuned_step: channels_last, "
                    "cudnn_benchmark, fused_adam; training.compile: compile), applied on this device, and not_applied "
                    "with the reason (cudnn_benchmark and fused_adam are CUDA only; fused_adam only for torch Adam); "
                    "label as the table caption prints it. None requested: the paper's eager step (the default). "
                    "Step times, and so the time ratios between settings, depend on it",
    "model.n_parameters*": "number of parameters (1 input channel, 1 output logit); n_parameters_millions: the same "
                           "in millions",
    "model.image_size": "side (pixels) images are resized to before downsampling",
    "model.input_size": "side (pixels) of the model input: image_size / scale with smaller_input, else image_size",
    "model.pretrained": "what initialised the model: false (random initialisation), true (timm's weights), the "
                        "weights file with its source and sha256, or why true fell back to random initialisation",
    "training.epochs_run": "epochs started, including an epoch cut short by divergence",
    "training.best_epoch": "epoch (1-based) with the lowest validation loss; its checkpoint is evaluated on the "
                           "test set",
    "training.best_val_loss": "validation loss of best_epoch: mean BCE per image; null when no epoch ended with a "
                              "finite one",
    "training.early_stopped": "true when patience epochs passed without a lower validation loss",
    "training.max_epochs": "the stopping rule's limit: at most this many epochs",
    "training.patience": "epochs without a lower validation loss after which training stops early",
    "training.lr": "the optimiser's learning rate (Adam, constant over the epochs)",
    "training.batch_size": "images per training, validation and test-evaluation batch",
    "training.time_to_best_s": "seconds of training passes (loading, transfer, forward, backward, optimiser step over "
                               "the training batches; validation, checkpoints and energy logging excluded) summed "
                               "over epochs 1..best_epoch: the time to convergence T_c",
    "training.train_time_total_s": "seconds of training passes over all epochs run (validation excluded)",
    "training.validation_time_total_s": "seconds of validation passes over all epochs",
    "training.resumed": "true when the job continued from a last.pt written by an earlier process",
    "test": "metrics of the best-validation checkpoint (best_epoch) on the test split at threshold 0.5 (prediction "
            "positive when sigmoid(logit) >= 0.5); roc_auc is rank-based; loss is the mean BCE per image; n_images "
            "and n_positive count the test images and those with label 1; null when no checkpoint or undefined",
    "memory.kind": "cuda_max_memory_allocated_bytes: torch.cuda.max_memory_allocated after a reset at the phase start "
                   "(tensors of this process on the GPU); cpu_peak_rss_bytes: peak resident set size of the whole "
                   "process during the phase, sampled every 10 ms",
    "memory.train_peak_bytes": "peak over the training phase (training and validation passes; the maximum over "
                               "processes for a resumed job), in bytes",
    "memory.inference_peak_bytes": "peak during the inference timing (batch-32 passes and batch-1 latency), in bytes; "
                                   "the optimiser state and gradients are released before it (CUDA: and the "
                                   "allocator's cache emptied), so it holds the weights, the test images' batches "
                                   "and activations, comparable across settings",
    "memory.*_reserved_bytes": "torch.cuda.max_memory_reserved (bytes the caching allocator held); null on CPU",
    "memory.*_start_bytes": "allocated bytes (CUDA) or RSS (CPU) at the start of the phase",
    "memory.weights_bytes": "bytes of the model parameters in their training dtype (buffers excluded)",
    "memory.gradients_bytes": "bytes of the parameters' gradient tensors after a training step",
    "memory.optimizer_state_bytes": "bytes of all tensors in the optimiser state at the end of training "
                                    "(moments, step counters, 8-bit quantisation maps and block absmax; shared "
                                    "tensors once)",
    "inference.test_set_seconds": "median over repeats of one pass over the test set in batches of batch_size (32) "
                                  "with the best checkpoint: host-to-device copy, forward under the setting's "
                                  "precision, no_grad, CUDA synchronised; images already decoded in memory; warm-up "
                                  "passes excluded",
    "inference.batch_size": "images per batch of the timed test-set passes (32)",
    "inference.repeats": "timed batch-32 passes really run: inference_repeats (the configured count), or fewer once "
                         "the timed passes have taken budget_s seconds (inference_budget_s; at least one pass); "
                         "latency_repeats: the same for the batch-1 latency passes; energy.inference is divided by "
                         "the passes really run",
    "inference.latency_repeats": "see inference.repeats",
    "inference.budget_s": "see inference.repeats; null: no time budget",
    "inference.warmup": "untimed batch-32 passes before the timed ones: 0 at batch size 32, where the test "
                        "evaluation (the same batches, eval mode, no_grad, the setting's precision) was the warm-up "
                        "(note says so); the latency passes' warm-up is 4 batch-1 forwards per configured warm-up pass",
    "inference.latency_images": "test images (the first ones, at most 64) of each batch-1 latency pass",
    "inference.per_image_latency_ms": "median over repeats of the mean batch-1 forward time over latency_images test "
                                      "images, in milliseconds",
    "energy.train": "carbontracker over the training epochs (training and validation passes), all processes of a "
                    "resumed job summed; energy_kwh excludes and energy_kwh_pue includes carbontracker's PUE; CO2eq "
                    "in grams; see method for what was really measured",
    "energy.inference": "carbontracker over the timed batch-32 test-set passes, per single pass (total / repeats)",
    "energy.*.measured": "true when a real energy counter was read (RAPL for the CPU, NVML for the GPU); estimated: the "
                         "figure is, wholly or in part, carbontracker's assumed constant power (assumed_power_w, for "
                         "estimated_components) x time",
    "energy.*.components": "what the figure covers: cpu (RAPL's package counter, or an assumed power) and, on CUDA, "
                           "gpu: NVML power of the GPU the job computes on only (found by its UUID), not of every GPU "
                           "of the machine (carbontracker 2.4.7 alone would read the GPUs whose integer indices are "
                           "in CUDA_VISIBLE_DEVICES, and all GPUs when it is unset or holds UUIDs)",
    "energy.*.pue": "carbontracker's power usage effectiveness of a data centre (2023 value): energy_kwh_pue = "
                    "energy_kwh x pue",
    "energy.*.carbon_intensity_g_per_kwh": "grams CO2eq per kWh (PUE included) that co2eq_g was computed with; note "
                                           "names its source",
    "energy.*.tracker_*_seconds": "seconds carbontracker took to construct its tracker and to stop it: outside the "
                                  "measured stretches, part of the job's fixed cost",
    "inputs": "what the job read, by content: sha256 of split.csv and one sha256 over every listed image's path and "
              "PNG image (its bytes but the text and time chunks, so a PNG made again with the same pixels and a new "
              "recorded fingerprint counts as the same); a last.pt is resumed only when these, the job's options and "
              "the code match",
    "provenance": "where test and inference were measured: host, device (as the setting records it) and its name, "
                  "torch threads, versions (python, torch, timm, bitsandbytes, carbontracker, numpy, cuDNN, leanmed)",
    "provenance.config_hash": "hash of the job's options that decide its training (the workflow's config_hash, with "
                              "the setting's and model's registry entries and the training code); a last.pt is "
                              "resumed only when it matches",
    "provenance.gpu_claim": "the GPU the job claimed (leanmed.train.devices): source (lock, slurm, none), device, the "
                            "visible GPUs, lock file, seconds waited; null when the job did not claim one",
    "provenance.cuda": "CUDA version torch was built with, when the job ran on a GPU",
    "provenance.training_environments": "where the training epochs were measured: device, its name, torch, CUDA, "
                                        "cuDNN, bitsandbytes, timm and torch threads of each process that trained "
                                        "epochs, in order, repeats merged; the rest of provenance is the process that "
                                        "measured test and inference",
    "provenance.git_*": "git_revision: commit of the leanmed checkout that ran (null outside git); git_dirty: "
                        "uncommitted changes to tracked files",
}




def memory_block(state, model, gradients_measured, inference_memory, optimizer_bytes: int) -> dict:
    """The memory block. ``gradients_measured``: bytes of the gradients after a training step (None when no step ran
    in this process); ``optimizer_bytes``: the optimiser state, both measured before the job released them for the
    inference phase."""
    notes = []
    gradients = gradients_measured
    if gradients is None:
        # No step ran in this process (a resumed job whose training had finished): a gradient always has its
        # parameter's shape and dtype, so its size is the parameters' size.
        gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        notes.append("gradients_bytes from the parameters' shapes and dtypes (no training step in this process)")
    kind = state.memory_kind or ("cuda_max_memory_allocated_bytes" if inference_memory is not None
                                 and inference_memory.on_cuda else "cpu_peak_rss_bytes")
    if kind == "cpu_peak_rss_bytes":
        notes.append("CPU: peaks are the resident set size of the whole process (interpreter, libraries, cached "
                     "images included), sampled every 10 ms")
    if inference_memory is None:
        notes.append("no inference peak: no checkpoint was evaluated")
    return {
        "kind": kind,
        "train_peak_bytes": state.train_peak_bytes,
        "inference_peak_bytes": inference_memory.peak_bytes if inference_memory is not None else None,
        "train_peak_reserved_bytes": state.train_peak_reserved_bytes,
        "inference_peak_reserved_bytes": inference_memory.peak_reserved_bytes if inference_memory is not None else None,
        "inference_start_bytes": inference_memory.start_bytes if inference_memory is not None else None,
        "weights_bytes": parameter_bytes(model),
        "gradients_bytes": int(gradients),
        "optimizer_state_bytes": optimizer_bytes,
        "note": "; ".join(notes) if notes else None,
    }


def metrics_record(cfg, state, resolved, model, input_size, test_block, memory_block, inference_block,
             energy_train, energy_inference, inputs) -> dict:
    spec = get_model_spec(cfg.model)
    n_parameters = sum(parameter.numel() for parameter in model.parameters())
    best_rows = [row for row in state.history if state.best_epoch is not None and row["epoch"] <= state.best_epoch]
    training_note = state.divergence
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "dataset": cfg.dataset, "model": cfg.model, "timm_name": spec.timm_name, "setting": cfg.setting,
            "scale": cfg.scale, "seed": cfg.seed, "downsample_mode": cfg.downsample_mode,
        },
        "status": "diverged" if state.diverged else "completed",
        "diverged": state.diverged,
        "setting": resolved.record(),
        "model": {
            "n_parameters": n_parameters, "n_parameters_millions": n_parameters / 1e6,
            "image_size": cfg.image_size, "input_size": input_size,
            "pretrained": pretrained_record(cfg),
        },
        "training": {
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "best_val_loss": finite_or_none(state.best_val_loss),
            "early_stopped": state.early_stopped,
            "max_epochs": cfg.max_epochs,
            "patience": cfg.patience,
            "time_to_best_s": float(sum(row["epoch_train_seconds"] for row in best_rows)) if best_rows else None,
            "train_time_total_s": state.train_seconds,
            "validation_time_total_s": state.val_seconds,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "resumed": state.segments > 1,
            "note": training_note,
        },
        "test": test_block,
        "memory": memory_block,
        "inference": inference_block,
        "energy": {
            "train": energy_train.result(),
            "inference": energy_inference,
        },
        "inputs": inputs,
        "provenance": provenance(cfg.config_hash, resolved.device, state.training_environments),
        "definitions": dict(DEFINITIONS),
    }




def pretrained_record(cfg) -> bool | str:
    """What initialised the model: false, true (timm's weights), a weights file, or why true fell back to random."""
    if cfg.pretrained is True and not has_pretrained_weights(cfg.model):
        return "none available in timm: random initialisation"
    if isinstance(cfg.pretrained, bool):
        return cfg.pretrained
    # A file of the workflow's weights cache: its manifest says where it came from (hub repository, commit, sha256).
    return describe_cached_weights(cfg.pretrained) or str(cfg.pretrained)


