"""Checkpoints of a training job and when they may be resumed.

``last.pt`` (weights, optimiser and scaler state, RNG states, history: after an epoch as often as
``LastCheckpointSchedule`` says, and when training ends) and ``best.pt`` (at every improvement: weights and
bookkeeping only) are written atomically. A ``last.pt`` is resumed only when its fingerprint
is the job's: the options that change results (``RESULT_FIELDS``), the workflow's ``config_hash`` (every option of the
job, the registry entries and training code behind it) and the content of the job's inputs (split.csv and every image
it lists). Any other rerun starts over. The stopping rule (patience, max_epochs) is not part of the fingerprint: a
checkpoint's history replayed under the new rule (``stop_under``) says whether it is finished, goes on, or trained
past the new stop (then the job starts over).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from leanmed.atomic import atomic_path
from leanmed.train.loop import restore_rng_states, rng_states
from leanmed.train.weights import weights_identity

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESULT_FIELDS",
    "JobState",
    "LastCheckpointSchedule",
    "job_fingerprint",
    "save_atomically",
    "checkpoint_payload",
    "load_checkpoint",
    "checkpoint_for_resume",
    "validation_outcome",
    "stop_under",
    "resume_state",
]

CHECKPOINT_FORMAT = 1
# Fields of the job's TrainConfig that change results: a last.pt written under other values is not resumed. Not the
# stopping rule (patience, max_epochs): it decides only where training ends, and ``stop_under`` replays a checkpoint's
# history to tell whether a run under the new rule stops where it stopped, goes on from it, or stopped earlier.
RESULT_FIELDS = (
    "dataset", "model", "setting", "seed", "scale", "downsample_mode", "image_size", "lr", "batch_size",
    "pretrained", "tuned_step", "compile",
)





@dataclass
class JobState:
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
    # measurement_environment of each process that trained epochs, in order, repeats merged
    training_environments: list[dict] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return float(sum(row["epoch_train_seconds"] for row in self.history))

    @property
    def val_seconds(self) -> float:
        return float(sum(row["epoch_val_seconds"] or 0.0 for row in self.history))


def job_fingerprint(cfg, device: str, inputs: dict) -> dict:
    """What a last.pt must match to be resumed. The workflow's config_hash covers every option of the job (but
    inference_repeats, which decides only how the finished model is timed, and device, compared here as the device
    type the run trained on) and the registry entries and training code behind it; ``inputs``
    (``split_fingerprint``) covers the content of split.csv and the pixels of every image it lists. A rerun after a
    change of those options, the code, the split, the labels or the pixels starts over instead of continuing (or
    re-scoring) weights trained under another definition or on other data. Pretrained weights count by their content
    (``weights_identity``): a weights file moved, or the weights cache put elsewhere, resumes."""
    values = {name: getattr(cfg, name) for name in RESULT_FIELDS}
    values["config_hash"] = cfg.config_hash
    values["inputs"] = {key: inputs[key] for key in ("split_csv_sha256", "images_sha256", "n_images")}
    values["pretrained"] = weights_identity(values["pretrained"])  # the weights, not where their file lies
    values["device_type"] = torch.device(device).type
    return values


class LastCheckpointSchedule:
    """When the training loop writes last.pt: after the first epoch ending ``interval_s`` seconds or more after the
    loop started or last.pt was last written, and whenever ``due(True)`` is asked (training ended, SIGTERM);
    ``interval_s`` 0: after every epoch.

    Why not after every epoch: last.pt holds the optimiser state, and a large model's costs seconds to write (ViT-B/32+
    with Adam: 1.4 GB, 0.9-4.2 s with fsync on this project's 2-core machine, more on a cluster's network file system)
    against epochs of a few seconds on a GPU. Checkpoint writing is outside every training time leanmed reports, but it
    is the job's wall time. What it risks: a job killed without SIGTERM (a node failure, SIGKILL) trains the epochs
    after its last.pt again when rerun, and so does one stopped by SIGTERM in the middle of an epoch (the weights are
    then part-way through it, no state to save): the result is the same (the RNG states are in last.pt; on CPU bit for
    bit). SIGTERM between epochs writes last.pt."""

    def __init__(self, interval_s: float, epoch: int = 0, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.written_at = clock()
        self.epoch = epoch  # the epoch last.pt holds (0: none; a resumed job starts from the one it read)

    def due(self, forced: bool = False) -> bool:
        return forced or self.interval_s <= 0 or self.clock() - self.written_at >= self.interval_s

    def written(self, epoch: int) -> None:
        self.written_at = self.clock()
        self.epoch = epoch


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path`` (atomic on POSIX)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_payload(
    cfg, state: JobState, model, optimizer, scaler, input_size: int, fingerprint: dict, full: bool
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
        "rng_states": rng_states(str(next(model.parameters()).device)) if full else None,
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
        "training_environments": [dict(environment) for environment in state.training_environments],
        "fingerprint": fingerprint,
    }


def load_checkpoint(path: Path) -> dict:
    """Load on the CPU: RNG states must stay CPU byte tensors; load_state_dict copies weights and optimiser state
    to the parameters' device."""
    return torch.load(path, map_location="cpu", weights_only=True)


def validation_outcome(val_loss: float | None, best_val_loss: float, epochs_without_improvement: int,
                       patience: int) -> tuple[str, int]:
    """The stopping rule for one epoch: its outcome ("diverged", "improved", "early_stopped" or "continue") and the
    epochs without improvement after it. ``val_loss`` None: the training loss diverged, there was no validation. A
    non-finite validation loss is a divergence; a loss below the best so far (strictly) is an improvement;
    ``patience`` epochs without one stop early. The job applies it as it trains, ``stop_under`` replays it."""
    if val_loss is None or not math.isfinite(val_loss):
        return "diverged", epochs_without_improvement
    if val_loss < best_val_loss:
        return "improved", 0
    since_best = epochs_without_improvement + 1
    return ("early_stopped" if since_best >= patience else "continue"), since_best


def stop_under(history: list[dict], patience: int, max_epochs: int) -> tuple[int, str] | None:
    """Where a run with this history stops under the stopping rule ``patience`` / ``max_epochs``: (epoch, why) with
    why one of "diverged", "early_stopped", "max_epochs"; None when it would train past the history.

    ``validation_outcome`` replayed on the recorded validation losses, and no run trains past ``max_epochs``. The
    replay needs only the history because the rule changes nothing but where training ends: every epoch before that
    is the same under either rule."""
    best, since_best = math.inf, 0
    for row in history:
        epoch = int(row["epoch"])
        if epoch > max_epochs:
            return max_epochs, "max_epochs"
        outcome, since_best = validation_outcome(row.get("val_loss"), best, since_best, patience)
        if outcome in ("diverged", "early_stopped"):
            return epoch, outcome
        if outcome == "improved":
            best = row["val_loss"]
        if epoch == max_epochs:
            return epoch, "max_epochs"
    return None


def checkpoint_for_resume(path: Path, fingerprint: dict, patience: int, max_epochs: int
                          ) -> tuple[dict | None, str | None]:
    """(the last.pt at ``path`` if this very configuration wrote it, else None; why a last.pt present was refused,
    else None). The reason is one short line naming what differs; both fingerprints are logged at DEBUG.

    Under another stopping rule (``patience``, ``max_epochs``) the checkpoint is resumed where a run under the new
    rule would have passed through it (``stop_under``): a finished run whose new stop is where it stopped stays
    finished; one stopped early or at the old limit that the new rule lets go on continues training; one that trained
    past where the new rule stops it is refused (its last.pt is not the state of that epoch)."""
    if not path.is_file():
        return None, None
    checkpoint = load_checkpoint(path)
    written_by = checkpoint.get("fingerprint")
    if written_by == fingerprint:
        stop = stop_under(checkpoint["history"], patience, max_epochs)
        epoch = int(checkpoint["epoch"])
        if stop is not None and stop[0] < epoch:
            return None, (f"{path.name} trained {epoch} epochs; with patience {patience} and max_epochs {max_epochs} "
                          f"training stops after epoch {stop[0]} ({stop[1]})")
        checkpoint["early_stopped"] = stop is not None and stop[1] == "early_stopped"
        return checkpoint, None
    logging.getLogger(__name__).debug("%s fingerprint %s, this job's %s", path, written_by, fingerprint)
    if isinstance(written_by, dict):
        differs = sorted(key for key in set(written_by) | set(fingerprint)
                         if written_by.get(key) != fingerprint.get(key))
        what = "differs in " + ", ".join(differs)
    else:
        what = "written without a fingerprint"
    return None, f"{path.name} of another configuration/inputs ({what})"


def resume_state(checkpoint: dict, model, optimizer, scaler) -> JobState:
    model.load_state_dict(checkpoint["model_state"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    if scaler is not None and checkpoint.get("scaler_state") is not None:
        scaler.load_state_dict(checkpoint["scaler_state"])
    restore_rng_states(checkpoint["rng_states"])
    return JobState(
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
        training_environments=[dict(environment) for environment in checkpoint.get("training_environments", [])],
    )


