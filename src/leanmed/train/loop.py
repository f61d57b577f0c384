"""One training job: train with early stopping, evaluate the best checkpoint on the test split, write the run folder.

The job (``run(cfg)``) writes into ``cfg.out_dir`` (see docs/architecture.md): ``metrics.json`` (validated against
``leanmed/schemas/metrics.schema.json``), ``epochs.csv``, ``predictions.csv``, ``best.pt``, ``last.pt`` and
carbontracker logs under ``energy/train/`` and ``energy/inference/``.

Behaviour that the pipeline relies on:

- Adam at ``cfg.lr`` (settings decide torch or bitsandbytes 8-bit), BCE-with-logits on one logit, batches of
  ``cfg.batch_size``, at most ``cfg.max_epochs`` epochs, early stopping when the validation loss has not improved
  (strictly decreased) for ``cfg.patience`` epochs.
- Seeded: python, numpy and torch are seeded with ``cfg.seed`` before the model is built; the training order of
  epoch e is drawn from a generator seeded with (seed, e). On CPU deterministic algorithms are switched on, so the same
  job twice gives the same losses, predictions and metrics (only timings, memory and energy differ).
- Checkpoints: ``last.pt`` after every epoch and ``best.pt`` at every improvement, each written to a temporary file
  and renamed (atomic). ``best.pt`` holds the model weights and bookkeeping, without optimiser state (it is only
  evaluated, and this halves the disk space of big models).
- Resume: with ``last.pt`` present the job continues from it (model, optimiser, scaler, history, RNG states), and ends
  with the same metrics as an uninterrupted run. A ``last.pt`` from a different configuration is refused.
- SIGTERM (e.g. a cluster's time limit): the current batch finishes, the epoch is abandoned, ``last.pt`` keeps the
  last finished epoch, and ``TrainingInterrupted`` (a SystemExit with code 143) ends the job non-zero so the workflow
  reruns it, which resumes.
- Divergence: a NaN/inf training loss (checked every step on CPU, every 25 steps on CUDA to avoid a sync per step)
  or validation loss stops training; the job still evaluates the best checkpoint (if an epoch finished with a finite
  validation loss before), writes ``metrics.json`` with ``"status": "diverged"`` and returns normally.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from leanmed.atomic import atomic_path, write_text_atomically
from leanmed.data.images import ImageDataset, make_loader, reseed_shuffle, split_fingerprint
from leanmed.metrics import binary_metrics
from leanmed.train.energy import EnergyMeter, prefetch_cpu_info, unmeasured
from leanmed.train.measure import (
    PeakMemoryMeter,
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    provenance,
    synchronize,
    time_inference,
)
from leanmed.train.models import build_model, has_pretrained_weights, get_model_spec
from leanmed.train.settings import ResolvedSetting, build_optimizer, make_grad_scaler, resolve, resolve_device

__all__ = [
    "TrainConfig",
    "TrainingInterrupted",
    "EpochResult",
    "EvaluationResult",
    "run",
    "train_one_epoch",
    "evaluate",
    "seed_everything",
    "load_schema",
    "validate_metrics",
    "DEFINITIONS",
    "main",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECKPOINT_FORMAT = 1
THRESHOLD = 0.5
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a SIGTERM-killed process
EPOCH_COLUMNS = (
    "epoch", "train_loss", "val_loss", "val_accuracy", "val_roc_auc", "epoch_train_seconds", "epoch_val_seconds", "lr",
)
PREDICTION_COLUMNS = ("image_id", "subject_id", "label", "probability", "prediction")
# Fields of TrainConfig that change results: a last.pt written under other values is not resumed.
RESULT_FIELDS = (
    "dataset", "model", "setting", "seed", "scale", "downsample_mode", "image_size", "lr", "batch_size", "patience",
    "pretrained",
)


@dataclass
class TrainConfig:
    """One training job (one dataset x model x setting x scale x seed).

    split_csv: path of split.csv. out_dir: the run folder. image_size: side the images are resized to before any
    downsampling. scale, downsample_mode: see leanmed.data.images. threads: torch CPU threads (None: torch's
    default). pretrained: False, True (timm's weights) or a path to a weights file. device: "auto", "cpu", "cuda".
    energy: measure energy with carbontracker. inference_repeats: timed passes over the test set. config_hash: hash of
    the workflow configuration, recorded in provenance. energy_country: ISO code whose grid intensity carbontracker
    uses (None: its world average).
    """

    split_csv: str
    out_dir: str
    dataset: str
    model: str
    setting: str
    seed: int
    scale: int = 1
    downsample_mode: str = "pooled_upsampled"
    image_size: int = 256
    lr: float = 1e-5
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    num_workers: int = 0
    threads: int | None = None
    pretrained: bool | str = False
    device: str = "auto"
    energy: bool = True
    inference_repeats: int = 5
    config_hash: str = ""
    energy_country: str | None = None
    inference_warmup: int = 1


class TrainingInterrupted(SystemExit):
    """The job stopped on SIGTERM; ``last.pt`` holds the last finished epoch. Exit code 143."""

    def __init__(self, message: str):
        super().__init__(INTERRUPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class EpochResult:
    """One pass over the training set. seconds: wall-clock of the pass (loading, transfer, forward, backward,
    optimiser step), CUDA synchronised at both ends. mean_loss: mean BCE per image over the batches run."""

    mean_loss: float
    n_images: int
    steps: int
    seconds: float
    diverged: bool = False
    interrupted: bool = False


@dataclass
class EvaluationResult:
    """One no-grad pass: mean BCE per image, sigmoid probabilities and labels in loader order, wall-clock seconds."""

    mean_loss: float
    probabilities: np.ndarray
    labels: np.ndarray
    seconds: float
    interrupted: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Seeding and determinism


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the training order of ``epoch``: a function of (seed, epoch) only, so a resumed job draws the same."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**63


def _rng_states(device: str) -> dict:
    numpy_state = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": numpy_state[0], "key": numpy_state[1].tolist(), "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.device(device).type == "cuda" else None,
    }


def _restore_rng_states(states: dict) -> None:
    random.setstate(_as_tuples(states["python"]))
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["kind"], np.array(numpy_state["key"], dtype=np.uint32), numpy_state["pos"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value):
    """random.setstate wants nested tuples; a checkpoint may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value


class _Determinism:
    """On CPU switch on torch's deterministic algorithms for the job, and restore the previous choice afterwards.

    On CUDA nothing is forced: deterministic kernels would change the timings this project measures.
    """

    def __init__(self, device: str):
        self.enable = torch.device(device).type == "cpu"

    def __enter__(self):
        self.previous = torch.are_deterministic_algorithms_enabled()
        self.previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        if self.enable:
            torch.use_deterministic_algorithms(True, warn_only=True)
        return self

    def __exit__(self, *exc_info):
        torch.use_deterministic_algorithms(self.previous, warn_only=self.previous_warn)


class _StopOnSigterm:
    """Turn SIGTERM into a flag checked between batches (only possible in the main thread; elsewhere a no-op)."""

    def __init__(self):
        self.requested = threading.Event()
        self._previous = None
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        self.requested.set()

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


# --------------------------------------------------------------------------------------------------------------------
# Training and evaluation passes


def train_one_epoch(
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    resolved: ResolvedSetting,
    stop_requested: Callable[[], bool] | None = None,
    divergence_check_every: int | None = None,
) -> EpochResult:
    """One pass of the training loader: per batch, forward under the setting's autocast, BCE-with-logits in float32,
    backward (scaled when a GradScaler is used) and an optimiser step.

    Stops early when the running loss turns NaN/inf (checked every ``divergence_check_every`` steps: 1 on CPU, 25 on
    CUDA, where a check is a device sync) or when ``stop_requested()`` is true after a batch.
    """
    device = torch.device(resolved.device)
    check_every = divergence_check_every or (1 if device.type == "cpu" else 25)
    weight_dtype = resolved.weight_dtype
    non_blocking = device.type == "cuda"
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    n_images = steps = 0
    diverged = interrupted = False
    synchronize(device)
    started = time.perf_counter()
    for images, labels in loader:
        images = images.to(device=device, dtype=weight_dtype, non_blocking=non_blocking)
        labels = labels.to(device=device, non_blocking=non_blocking)
        optimizer.zero_grad(set_to_none=True)
        with resolved.autocast():
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        batch_size = labels.shape[0]
        loss_sum += loss.detach() * batch_size
        n_images += batch_size
        steps += 1
        if steps % check_every == 0 and not bool(torch.isfinite(loss_sum)):
            diverged = True
            break
        if stop_requested is not None and stop_requested():
            interrupted = True
            break
    mean_loss = float(loss_sum) / n_images if n_images else float("nan")
    synchronize(device)
    seconds = time.perf_counter() - started
    diverged = diverged or (n_images > 0 and not math.isfinite(mean_loss))
    return EpochResult(mean_loss, n_images, steps, seconds, diverged=diverged, interrupted=interrupted)


def evaluate(
    model: torch.nn.Module,
    loader,
    resolved: ResolvedSetting,
    stop_requested: Callable[[], bool] | None = None,
) -> EvaluationResult:
    """No-grad pass in eval mode: mean BCE per image (float32) and sigmoid probabilities, in loader order."""
    device = torch.device(resolved.device)
    non_blocking = device.type == "cuda"
    model.eval()
    losses, probabilities, all_labels = [], [], []
    interrupted = False
    synchronize(device)
    started = time.perf_counter()
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(device=device, dtype=resolved.weight_dtype, non_blocking=non_blocking)
            labels = labels.to(device=device, non_blocking=non_blocking)
            with resolved.autocast():
                logits = model(images)
            logits = logits.float().squeeze(1)
            losses.append(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
            probabilities.append(torch.sigmoid(logits))
            all_labels.append(labels)
            if stop_requested is not None and stop_requested():
                interrupted = True
                break
    synchronize(device)
    seconds = time.perf_counter() - started
    model.train()
    n_images = sum(labels.shape[0] for labels in all_labels)
    mean_loss = float(torch.stack(losses).sum()) / n_images if n_images else float("nan")
    return EvaluationResult(
        mean_loss=mean_loss,
        probabilities=torch.cat(probabilities).cpu().numpy().astype(np.float64) if probabilities else np.zeros(0),
        labels=torch.cat(all_labels).cpu().numpy().astype(np.int64) if all_labels else np.zeros(0, dtype=np.int64),
        seconds=seconds,
        interrupted=interrupted,
    )


# --------------------------------------------------------------------------------------------------------------------
# Job state and checkpoints


@dataclass
class _JobState:
    """Everything about the training so far that a checkpoint must carry besides weights and RNG states."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)
    early_stopped: bool = False
    diverged: bool = False
    divergence: str | None = None
    segments: int = 0
    train_peak_bytes: int | None = None
    train_peak_reserved_bytes: int | None = None
    memory_kind: str | None = None

    @property
    def train_seconds(self) -> float:
        return float(sum(row["epoch_train_seconds"] for row in self.history))

    @property
    def val_seconds(self) -> float:
        return float(sum(row["epoch_val_seconds"] or 0.0 for row in self.history))


def _fingerprint(cfg: TrainConfig, device: str, inputs: dict) -> dict:
    """What a last.pt must match to be resumed. The workflow's config_hash covers every option of the job and the
    registry entries and training code behind it; ``inputs`` (``split_fingerprint``) covers the content of split.csv
    and of every image it lists. A rerun after any change of options, code, split, labels or images starts over
    instead of continuing (or re-scoring) weights trained under another definition or on other data."""
    values = {name: getattr(cfg, name) for name in RESULT_FIELDS}
    values["config_hash"] = cfg.config_hash
    values["inputs"] = {key: inputs[key] for key in ("split_csv_sha256", "images_sha256", "n_images")}
    values["pretrained"] = str(values["pretrained"])
    values["device_type"] = torch.device(device).type
    return values


def _atomic_save(payload: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path`` (atomic on POSIX)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _checkpoint(
    cfg: TrainConfig, state: _JobState, model, optimizer, scaler, input_size: int, fingerprint: dict, full: bool
) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict() if full else None,
        "scaler_state": scaler.state_dict() if (full and scaler is not None) else None,
        "epoch": state.epoch,
        "best_val_loss": state.best_val_loss,
        "best_epoch": state.best_epoch,
        "epochs_without_improvement": state.epochs_without_improvement,
        "history": [dict(row) for row in state.history],
        "rng_states": _rng_states(str(next(model.parameters()).device)) if full else None,
        "elapsed": {"train": state.train_seconds, "val": state.val_seconds},
        "model": cfg.model,
        "image_size": cfg.image_size,
        "input_size": input_size,
        "setting": cfg.setting,
        "early_stopped": state.early_stopped,
        "diverged": state.diverged,
        "divergence": state.divergence,
        "segments": state.segments,
        "train_peak_bytes": state.train_peak_bytes,
        "train_peak_reserved_bytes": state.train_peak_reserved_bytes,
        "memory_kind": state.memory_kind,
        "fingerprint": fingerprint,
    }


def _load_checkpoint(path: Path) -> dict:
    """Load on the CPU: RNG states must stay CPU byte tensors; load_state_dict copies weights and optimiser state
    to the parameters' device."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _resumable_checkpoint(path: Path, fingerprint: dict) -> dict | None:
    """The last.pt at ``path`` when it was written by this very configuration (an interrupted or finished run of this
    job), else None (no file, or another configuration: the job starts over)."""
    if not path.is_file():
        return None
    checkpoint = _load_checkpoint(path)
    written_by = checkpoint.get("fingerprint")
    if written_by != fingerprint:
        logger.warning(
            "%s was written by another configuration (%s, now %s): starting this job over", path, written_by,
            fingerprint,
        )
        return None
    return checkpoint


def _resume(checkpoint: dict, model, optimizer, scaler) -> _JobState:
    model.load_state_dict(checkpoint["model_state"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    if scaler is not None and checkpoint.get("scaler_state") is not None:
        scaler.load_state_dict(checkpoint["scaler_state"])
    _restore_rng_states(checkpoint["rng_states"])
    return _JobState(
        epoch=int(checkpoint["epoch"]),
        best_val_loss=float(checkpoint["best_val_loss"]),
        best_epoch=checkpoint["best_epoch"],
        epochs_without_improvement=int(checkpoint["epochs_without_improvement"]),
        history=[dict(row) for row in checkpoint["history"]],
        early_stopped=bool(checkpoint["early_stopped"]),
        diverged=bool(checkpoint["diverged"]),
        divergence=checkpoint.get("divergence"),
        segments=int(checkpoint.get("segments", 1)),
        train_peak_bytes=checkpoint.get("train_peak_bytes"),
        train_peak_reserved_bytes=checkpoint.get("train_peak_reserved_bytes"),
        memory_kind=checkpoint.get("memory_kind"),
    )


# --------------------------------------------------------------------------------------------------------------------
# Output files


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})


def _write_json(path: Path, payload: dict) -> None:
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
    "status": "completed: training ended by early stopping or max_epochs; diverged: a NaN/inf training or validation "
              "loss stopped it (the paper's *)",
    "setting": "what ran: weight dtype, autocast dtype (null without autocast), GradScaler, optimiser class and its "
               "state width for tensors of >= 4096 elements (smaller ones keep 32-bit state with bitsandbytes)",
    "model.n_parameters": "number of parameters (1 input channel, 1 output logit)",
    "model.image_size": "side (pixels) images are resized to before downsampling",
    "model.input_size": "side (pixels) of the model input: image_size / scale with smaller_input, else image_size",
    "training.epochs_run": "epochs started, including an epoch cut short by divergence",
    "training.best_epoch": "epoch (1-based) with the lowest validation loss; its checkpoint is evaluated on the "
                           "test set",
    "training.early_stopped": "true when patience epochs passed without a lower validation loss",
    "training.time_to_best_s": "seconds of training passes (loading, transfer, forward, backward, optimiser step over "
                               "the training batches; validation, checkpoints and energy logging excluded) summed "
                               "over epochs 1..best_epoch: the time to convergence T_c",
    "training.train_time_total_s": "seconds of training passes over all epochs run (validation excluded)",
    "training.validation_time_total_s": "seconds of validation passes over all epochs",
    "training.resumed": "true when the job continued from a last.pt written by an earlier process",
    "test": "metrics of the best-validation checkpoint on the test split at threshold 0.5 (prediction positive when "
            "sigmoid(logit) >= 0.5); roc_auc is rank-based; loss is the mean BCE per image; null when no checkpoint "
            "or undefined",
    "memory.kind": "cuda_max_memory_allocated_bytes: torch.cuda.max_memory_allocated after a reset at the phase start "
                   "(tensors of this process on the GPU); cpu_peak_rss_bytes: peak resident set size of the whole "
                   "process during the phase, sampled every 10 ms",
    "memory.train_peak_bytes": "peak over the training phase (training and validation passes; the maximum over "
                               "processes for a resumed job), in bytes",
    "memory.inference_peak_bytes": "peak during the inference timing (batch-32 passes and batch-1 latency), in bytes",
    "memory.*_reserved_bytes": "torch.cuda.max_memory_reserved (bytes the caching allocator held); null on CPU",
    "memory.*_start_bytes": "allocated bytes (CUDA) or RSS (CPU) at the start of the phase",
    "memory.weights_bytes": "bytes of the model parameters in their training dtype (buffers excluded)",
    "memory.gradients_bytes": "bytes of the parameters' gradient tensors after a training step",
    "memory.optimizer_state_bytes": "bytes of all tensors in the optimiser state at the end of training "
                                    "(moments, step counters, 8-bit quantisation maps and block absmax; shared "
                                    "tensors once)",
    "inference.test_set_seconds": "median over repeats of one pass over the test set in batches of 32 with the best "
                                  "checkpoint: host-to-device copy, forward under the setting's precision, no_grad, "
                                  "CUDA synchronised; images already decoded in memory; warm-up passes excluded",
    "inference.per_image_latency_ms": "median over repeats of the mean batch-1 forward time over latency_images test "
                                      "images, in milliseconds",
    "energy.train": "carbontracker over the training epochs (training and validation passes), all processes of a "
                    "resumed job summed; energy_kwh excludes and energy_kwh_pue includes carbontracker's PUE; CO2eq "
                    "in grams; see method for what was really measured",
    "energy.inference": "carbontracker over the timed batch-32 test-set passes, per single pass (total / repeats)",
    "inputs": "what the job read, by content: sha256 of split.csv and one sha256 over every listed image's path and "
              "PNG bytes; a last.pt is resumed only when these, the job's options and the code match",
    "provenance.cuda": "CUDA version torch was built with, when the job ran on a GPU",
    "provenance.git_revision": "commit of the leanmed checkout that ran (null outside git); git_dirty: uncommitted "
                               "changes to tracked files",
}


# --------------------------------------------------------------------------------------------------------------------
# The job


def run(cfg: TrainConfig, on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Run the job described by ``cfg`` (resuming from ``last.pt`` when present) and return metrics.json's content.

    ``on_epoch_end(epoch)`` is called after each finished epoch's checkpoints are written (tests use it to interrupt).
    Raises TrainingInterrupted on SIGTERM; returns normally for completed and diverged runs.
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.energy:
        prefetch_cpu_info()
    resolved = resolve(cfg.setting, device)
    with _Determinism(device), _StopOnSigterm() as stop:
        return _run(cfg, out_dir, device, resolved, stop, on_epoch_end)


def _run(cfg, out_dir: Path, device: str, resolved: ResolvedSetting, stop: _StopOnSigterm, on_epoch_end) -> dict:
    seed_everything(cfg.seed)
    datasets = {
        split: ImageDataset(cfg.split_csv, split, cfg.scale, cfg.downsample_mode, cfg.image_size)
        for split in ("train", "val", "test")
    }
    input_size = datasets["train"].input_size
    pin_memory = torch.device(device).type == "cuda"
    loaders = {
        split: make_loader(dataset, cfg.batch_size, shuffle=(split == "train"), seed=cfg.seed,
                           num_workers=cfg.num_workers, pin_memory=pin_memory)
        for split, dataset in datasets.items()
    }
    model = build_model(cfg.model, input_size, pretrained=cfg.pretrained)
    model = model.to(device=device, dtype=resolved.weight_dtype)
    optimizer = build_optimizer(model.parameters(), resolved, cfg.lr)
    scaler = make_grad_scaler(resolved)
    inputs = split_fingerprint(cfg.split_csv)
    fingerprint = _fingerprint(cfg, device, inputs)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    checkpoint = _resumable_checkpoint(last_path, fingerprint)
    resumed_now = checkpoint is not None
    if resumed_now:
        state = _resume(checkpoint, model, optimizer, scaler)
        del checkpoint  # its tensors are copied into the model and optimiser
    else:
        state = _JobState()
        for stale in (last_path, best_path, out_dir / "metrics.json"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(out_dir / "energy" / "train", ignore_errors=True)
    state.segments += 1

    # ---- training ---------------------------------------------------------------------------------------------
    gradients_measured = None
    epochs_left = 0 if (state.early_stopped or state.diverged) else max(cfg.max_epochs - state.epoch, 0)
    energy_train = EnergyMeter("train", out_dir / "energy" / "train", device, enabled=cfg.energy,
                               epochs=max(epochs_left, 1), country=cfg.energy_country)
    if epochs_left:
        memory = PeakMemoryMeter(device)
        state.memory_kind = memory.kind
        try:
            with memory:
                while epochs_left and not (state.early_stopped or state.diverged) and state.epoch < cfg.max_epochs:
                    _train_epoch(cfg, state, model, optimizer, scaler, resolved, loaders, energy_train, memory, stop)
                    if gradients_measured is None:
                        gradients_measured = gradient_bytes(model)
                    _save_epoch(cfg, state, model, optimizer, scaler, input_size, fingerprint, last_path, best_path)
                    if on_epoch_end is not None:
                        on_epoch_end(state.epoch)
                    if stop.requested.is_set():
                        raise TrainingInterrupted(f"SIGTERM after epoch {state.epoch}: {last_path} holds it")
        finally:
            energy_train.finish()

    # ---- test evaluation and inference timing with the best checkpoint -----------------------------------------
    test_block, inference_block, inference_memory, energy_inference = _test_and_time(
        cfg, state, model, resolved, datasets["test"], loaders["test"], best_path, out_dir, device, stop
    )
    if stop.requested.is_set():
        raise TrainingInterrupted("SIGTERM during the test evaluation; training is complete in last.pt")

    # ---- record ---------------------------------------------------------------------------------------------------
    memory_block = _memory_block(state, model, optimizer, gradients_measured, inference_memory)
    metrics = _metrics(cfg, state, resolved, model, input_size, test_block, memory_block, inference_block,
                       energy_train, energy_inference, inputs)
    _write_csv(out_dir / "epochs.csv", EPOCH_COLUMNS, state.history)
    validate_metrics(metrics)
    _write_json(out_dir / "metrics.json", metrics)
    return metrics


def _train_epoch(cfg, state, model, optimizer, scaler, resolved, loaders, energy_train, memory, stop) -> None:
    """Train and validate one epoch; update ``state`` (history, best, patience, divergence)."""
    epoch = state.epoch + 1
    reseed_shuffle(loaders["train"], _epoch_seed(cfg.seed, epoch))
    energy_train.epoch_start()
    trained = train_one_epoch(model, loaders["train"], optimizer, scaler, resolved, stop.requested.is_set)
    if trained.interrupted:
        energy_train.epoch_end()
        raise TrainingInterrupted(f"SIGTERM during epoch {epoch}; last.pt holds epoch {state.epoch}")
    validated = None
    if not trained.diverged:
        validated = evaluate(model, loaders["val"], resolved, stop.requested.is_set)
        if validated.interrupted:
            energy_train.epoch_end()
            raise TrainingInterrupted(f"SIGTERM during validation of epoch {epoch}; last.pt holds epoch {state.epoch}")
    energy_train.epoch_end()

    row = {
        "epoch": epoch,
        "train_loss": trained.mean_loss,
        "val_loss": None,
        "val_accuracy": None,
        "val_roc_auc": None,
        "epoch_train_seconds": trained.seconds,
        "epoch_val_seconds": None,
        "lr": cfg.lr,
    }
    state.epoch = epoch
    if trained.diverged:
        state.diverged = True
        state.divergence = f"training loss became {trained.mean_loss} in epoch {epoch} (after {trained.steps} steps)"
    else:
        val_metrics = binary_metrics(validated.labels, validated.probabilities, THRESHOLD)
        row.update(val_loss=validated.mean_loss, val_accuracy=val_metrics["accuracy"],
                   val_roc_auc=val_metrics["roc_auc"], epoch_val_seconds=validated.seconds)
        if not math.isfinite(validated.mean_loss):
            state.diverged = True
            state.divergence = f"validation loss became {validated.mean_loss} in epoch {epoch}"
        elif validated.mean_loss < state.best_val_loss:
            state.best_val_loss = validated.mean_loss
            state.best_epoch = epoch
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1
            if state.epochs_without_improvement >= cfg.patience:
                state.early_stopped = True
    state.history.append(row)
    running_peak = memory.current_peak()
    state.train_peak_bytes = _max_or_none(state.train_peak_bytes, running_peak[0])
    state.train_peak_reserved_bytes = _max_or_none(state.train_peak_reserved_bytes, running_peak[1])


def _max_or_none(*values):
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _save_epoch(cfg, state, model, optimizer, scaler, input_size, fingerprint, last_path, best_path) -> None:
    if state.best_epoch == state.epoch and not state.diverged:
        _atomic_save(_checkpoint(cfg, state, model, optimizer, scaler, input_size, fingerprint, full=False), best_path)
    _atomic_save(_checkpoint(cfg, state, model, optimizer, scaler, input_size, fingerprint, full=True), last_path)
    # epochs.csv follows the checkpoint, so progress can be watched while the job runs
    _write_csv(last_path.parent / "epochs.csv", EPOCH_COLUMNS, state.history)


def _test_and_time(cfg, state, model, resolved, test_dataset, test_loader, best_path, out_dir, device, stop):
    """Evaluate the best checkpoint on the test split, write predictions.csv, time inference and measure its energy."""
    energy_dir = out_dir / "energy" / "inference"
    shutil.rmtree(energy_dir, ignore_errors=True)
    test_block = {
        "checkpoint": None, "n_images": len(test_dataset), "threshold": THRESHOLD, "accuracy": None, "roc_auc": None,
        "sensitivity": None, "specificity": None, "balanced_accuracy": None, "loss": None, "note": None,
    }
    inference_block = {
        "test_set_seconds": None, "batch_size": 32, "per_image_latency_ms": None, "repeats": cfg.inference_repeats,
        "warmup": cfg.inference_warmup, "latency_images": None, "note": None,
    }
    (out_dir / "predictions.csv").unlink(missing_ok=True)
    if state.best_epoch is None or not best_path.is_file():
        reason = "no checkpoint: training diverged before any epoch finished with a finite validation loss"
        test_block["note"] = inference_block["note"] = reason
        # Every run ends with all its declared outputs: no test predictions, but the file with its header.
        _write_csv(out_dir / "predictions.csv", PREDICTION_COLUMNS, [])
        return test_block, inference_block, None, unmeasured(reason)

    best = _load_checkpoint(best_path)
    model.load_state_dict(best["model_state"])
    evaluated = evaluate(model, test_loader, resolved, stop.requested.is_set)
    if evaluated.interrupted:
        return test_block, inference_block, None, unmeasured("interrupted")
    values = binary_metrics(evaluated.labels, evaluated.probabilities, THRESHOLD)
    test_block.update(
        checkpoint="best", best_epoch=int(best["epoch"]),
        **{key: _finite_or_none(values[key]) for key in
           ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy")},
        loss=_finite_or_none(evaluated.mean_loss),
        n_positive=values["n_positive"],
    )
    undefined = [key for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy", "loss")
                 if test_block[key] is None]
    if undefined:
        test_block["note"] = (f"undefined for this test set or model output (one class present, or non-finite "
                              f"probabilities): {', '.join(undefined)}")
    _write_csv(out_dir / "predictions.csv", PREDICTION_COLUMNS, [
        {"image_id": image_id, "subject_id": subject_id, "label": int(label), "probability": float(probability),
         "prediction": int(probability >= THRESHOLD)}
        for image_id, subject_id, label, probability in zip(
            test_dataset.image_ids, test_dataset.subject_ids, evaluated.labels, evaluated.probabilities)
    ])

    images = torch.cat([batch for batch, _ in test_loader])
    energy_inference = EnergyMeter("inference", energy_dir, device, enabled=cfg.energy, epochs=1,
                                   country=cfg.energy_country)
    memory = PeakMemoryMeter(device)
    try:
        with memory:
            timing = time_inference(model, images, resolved, batch_size=32, repeats=cfg.inference_repeats,
                                    warmup=cfg.inference_warmup, energy_meter=energy_inference)
    finally:
        energy_inference.finish()
    inference_block.update({key: timing[key] for key in
                            ("test_set_seconds", "batch_size", "per_image_latency_ms", "repeats", "warmup",
                             "latency_images")})
    energy_record = energy_inference.result(divide_by=cfg.inference_repeats,
                                            what="timed pass over the test set (batch 32)")
    return test_block, inference_block, memory, energy_record


def _memory_block(state, model, optimizer, gradients_measured, inference_memory) -> dict:
    notes = []
    gradients = gradients_measured
    if gradients is None:
        gradients = gradient_bytes(model)
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
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "note": "; ".join(notes) if notes else None,
    }


def _metrics(cfg, state, resolved, model, input_size, test_block, memory_block, inference_block,
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
            "pretrained": _pretrained_record(cfg),
        },
        "training": {
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "best_val_loss": _finite_or_none(state.best_val_loss),
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
        "provenance": provenance(cfg.config_hash, resolved.device),
        "definitions": dict(DEFINITIONS),
    }


# --------------------------------------------------------------------------------------------------------------------
# Command line


def _pretrained_record(cfg: TrainConfig) -> bool | str:
    """What initialised the model: false, true (timm's weights), a weights file, or why true fell back to random."""
    if cfg.pretrained is True and not has_pretrained_weights(cfg.model):
        return "none available in timm: random initialisation"
    return cfg.pretrained if isinstance(cfg.pretrained, bool) else str(cfg.pretrained)


def _parse_pretrained(value: str) -> bool | str:
    lowered = value.strip().lower()
    if lowered in ("false", "no", "0", "none", ""):
        return False
    if lowered in ("true", "yes", "1"):
        return True
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: every TrainConfig field as --option (e.g. --split-csv, --out-dir). Exit 0 for completed and
    diverged runs, 143 after SIGTERM (rerun to resume), 1 on errors."""
    parser = argparse.ArgumentParser(prog="python -m leanmed.train.loop", description=__doc__.splitlines()[0])
    for config_field in dataclasses.fields(TrainConfig):
        option = "--" + config_field.name.replace("_", "-")
        required = config_field.default is dataclasses.MISSING
        kind = {"int": int, "float": float, "int | None": int, "str | None": str}.get(str(config_field.type), str)
        if config_field.name == "pretrained":
            parser.add_argument(option, type=_parse_pretrained, default=False)
        elif config_field.type == "bool":
            parser.add_argument(option, type=_parse_pretrained, default=config_field.default)
        else:
            parser.add_argument(option, type=kind, required=required,
                                default=None if required else config_field.default)
    arguments = vars(parser.parse_args(argv))
    cfg = TrainConfig(**arguments)
    try:
        metrics = run(cfg)
    except TrainingInterrupted as interrupted:
        print(f"leanmed: {interrupted}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    print(f"leanmed: {metrics['status']} {cfg.out_dir} test accuracy {metrics['test']['accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
