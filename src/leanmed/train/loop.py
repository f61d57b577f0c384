"""The epoch loop of a training job: one pass over the training set, one no-grad evaluation pass, and the seeding,
determinism and SIGTERM handling they run under. The job around it (resume, checkpoints, test evaluation, metrics.json)
is ``leanmed.train.job``.

- Adam at the job's learning rate (settings decide torch or bitsandbytes 8-bit), BCE-with-logits in float32 on one
  logit, the forward pass under the setting's autocast, a GradScaler where the setting uses one.
- The step's speed options (``ResolvedSetting.step``): with channels_last applied, each image batch is converted to
  channels_last after its transfer; without it the batches are used as the loader gives them (the paper's eager step).
- Seeded: ``seed_everything`` seeds python, numpy and torch; the training order of epoch e is drawn from a generator
  seeded with ``epoch_seed(seed, e)``, so a resumed job draws the same. On CPU ``Determinism`` switches on torch's
  deterministic algorithms, so the same job twice gives the same losses and predictions.
- Divergence: a NaN/inf running training loss stops the pass (checked every step on CPU, every 25 steps on CUDA to
  avoid a sync per step).
- SIGTERM (e.g. a cluster's time limit): ``StopOnSigterm`` turns it into a flag checked between batches.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from leanmed.train.measure import synchronize
from leanmed.train.settings import ResolvedSetting, to_step_format

__all__ = [
    "EpochResult",
    "EvaluationResult",
    "seed_everything",
    "epoch_seed",
    "rng_states",
    "restore_rng_states",
    "Determinism",
    "StopOnSigterm",
    "train_one_epoch",
    "evaluate",
]


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


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the training order of ``epoch``: a function of (seed, epoch) only, so a resumed job draws the same."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**63


def rng_states(device: str) -> dict:
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


def restore_rng_states(states: dict) -> None:
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


class Determinism:
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


class StopOnSigterm:
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
    channels_last = resolved.step.channels_last
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    n_images = steps = 0
    diverged = interrupted = False
    synchronize(device)
    started = time.perf_counter()
    for images, labels in loader:
        images = images.to(device=device, dtype=weight_dtype, non_blocking=non_blocking)
        if channels_last:
            images = to_step_format(images, resolved)
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
    channels_last = resolved.step.channels_last
    model.eval()
    losses, probabilities, all_labels = [], [], []
    interrupted = False
    synchronize(device)
    started = time.perf_counter()
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(device=device, dtype=resolved.weight_dtype, non_blocking=non_blocking)
            if channels_last:
                images = to_step_format(images, resolved)
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


