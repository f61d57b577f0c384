"""Measurements of a training job: peak memory per phase, bytes of tensors, inference timing, provenance.

Peak memory
    CUDA: ``torch.cuda.reset_peak_memory_stats`` at the start of a phase, then ``max_memory_allocated`` (bytes held
    by tensors at the peak) and ``max_memory_reserved`` (bytes the caching allocator held from the driver) at its end.
    Both count only this process's PyTorch allocations on that device (not the CUDA context, ~0.3-0.5 GB).
    CPU: the peak resident set size (RSS) of this process during the phase, sampled by a background thread every
    ``sample_interval_s`` (10 ms) with psutil, plus one sample at the start and one at the end. ``ru_maxrss`` cannot
    be used: it is a lifetime peak that cannot be reset between phases. RSS counts everything resident in the process
    (interpreter, libraries, cached images, model, optimiser state, activations), so compare settings by it rather
    than reading it as the model's footprint; a peak shorter than the sampling interval can be missed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import psutil
import torch

__all__ = [
    "PeakMemoryMeter",
    "tensor_bytes",
    "parameter_bytes",
    "gradient_bytes",
    "optimizer_state_bytes",
    "optimizer_state_tensors",
    "release_training_state",
    "synchronize",
    "time_inference",
    "provenance",
    "git_revision",
    "device_name",
]


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU), so wall-clock timings include it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemoryMeter:
    """Peak memory of one phase (a ``with`` block): see the module docstring for what is counted.

    After the block: ``peak_bytes`` (CUDA max allocated, or CPU peak RSS), ``peak_reserved_bytes`` (CUDA max reserved;
    None on CPU), ``start_bytes`` (allocated or RSS at the start), ``kind`` (what the numbers are).
    """

    def __init__(self, device: str | torch.device, sample_interval_s: float = 0.01):
        self.device = torch.device(device)
        self.sample_interval_s = sample_interval_s
        self.on_cuda = self.device.type == "cuda"
        self.kind = "cuda_max_memory_allocated_bytes" if self.on_cuda else "cpu_peak_rss_bytes"
        self.peak_bytes: int | None = None
        self.peak_reserved_bytes: int | None = None
        self.start_bytes: int | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_peak = 0

    def __enter__(self) -> "PeakMemoryMeter":
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
        else:
            self.start_bytes = self._cpu_peak = int(self._process.memory_info().rss)
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="leanmed-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            rss = self._process.memory_info().rss
            if rss > self._cpu_peak:
                self._cpu_peak = rss

    def current_peak(self) -> tuple[int | None, int | None]:
        """(peak, reserved peak) since the phase started, read while it is still running."""
        if self.on_cuda:
            return int(torch.cuda.max_memory_allocated(self.device)), int(torch.cuda.max_memory_reserved(self.device))
        return max(self._cpu_peak, int(self._process.memory_info().rss)), None

    def __exit__(self, *exc_info) -> None:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.peak_reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self._cpu_peak, int(self._process.memory_info().rss))


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by several tensors counts once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (weights and biases; buffers such as BatchNorm statistics excluded)."""
    return tensor_bytes(model.parameters())


def gradient_bytes(model: torch.nn.Module) -> int | None:
    """Bytes of the parameters' ``.grad`` tensors that exist now; None when no parameter has a gradient."""
    gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    return tensor_bytes(gradients) if gradients else None


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor held in ``optimizer.state`` (moments, step counters, bitsandbytes quantisation maps and absmax)."""
    found: list[torch.Tensor] = []

    def walk(value) -> None:
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for state in optimizer.state.values():
        walk(state)
    return found


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser state: distinct storages of all tensors in ``optimizer.state`` (shared maps once)."""
    return tensor_bytes(optimizer_state_tensors(optimizer))


def release_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           device: str | torch.device) -> None:
    """Free what only training needs, before the inference phase: the optimiser state (moments, step counters,
    8-bit maps), the parameters' gradients and, on CUDA, the caching allocator's now unused blocks. The optimiser
    cannot step afterwards (its state is in last.pt); measure ``optimizer_state_bytes`` first."""
    optimizer.state.clear()
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def time_inference(
    model: torch.nn.Module,
    images: torch.Tensor,
    resolved,
    batch_size: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    latency_images: int = 64,
    energy_meter=None,
    budget_s: float | None = None,
    latency_warmup: int | None = None,
    latency_warmup_images: int = 4,
) -> dict:
    """Time the forward passes of ``model`` over ``images`` (N x 1 x H x W, held in CPU memory).

    test_set_seconds: median over the timed passes of the wall-clock time of one pass over all N images in batches of
    ``batch_size``: host-to-device copy, cast to the weight dtype, forward under the setting's autocast, no_grad,
    CUDA synchronised at the end; ``warmup`` untimed passes come first. No sigmoid, no metrics, no data decoding.
    per_image_latency_ms: median over the timed latency passes of the mean time of a batch-1 forward over the first
    ``latency_images`` images (CUDA synchronised after each one), in milliseconds; each of the ``latency_warmup``
    (default ``warmup``) untimed latency warm-ups is ``latency_warmup_images`` batch-1 forwards (the model is warm
    already; they warm the batch-1 shape).
    Number of timed passes: ``repeats``, or fewer when ``budget_s`` is given: after each timed pass the repeats
    stop once the timed passes of that kind have taken ``budget_s`` seconds (at least one pass always). ``repeats``
    and ``latency_repeats`` in the result are the passes really timed.
    energy_meter: an object with ``epoch_start()``/``epoch_end()`` (e.g. leanmed.train.energy.EnergyMeter), called
    around the timed batch-``batch_size`` passes only (not the warm-up, not the latency passes).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    device = torch.device(resolved.device)
    if device.type == "cuda":
        images = images.pin_memory()
    was_training = model.training
    model.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device=device, dtype=resolved.weight_dtype, non_blocking=True)
        with resolved.autocast():
            return model(batch)

    def one_pass() -> float:
        synchronize(device)
        started = time.perf_counter()
        for start in range(0, images.shape[0], batch_size):
            forward(images[start : start + batch_size])
        synchronize(device)
        return time.perf_counter() - started

    n_latency = min(latency_images, images.shape[0])

    def latency_pass(count: int = n_latency) -> float:
        started = time.perf_counter()
        for index in range(count):
            forward(images[index : index + 1])
            synchronize(device)
        return (time.perf_counter() - started) / count * 1000.0

    def timed_passes(one, seconds_of) -> list[float]:
        values: list[float] = []
        spent = 0.0
        while len(values) < repeats:
            values.append(one())
            spent += seconds_of(values[-1])
            if budget_s is not None and spent >= budget_s:
                break
        return values

    with torch.no_grad():
        for _ in range(warmup):
            one_pass()
        if energy_meter is not None:
            energy_meter.epoch_start()
        pass_seconds = timed_passes(one_pass, lambda seconds: seconds)
        if energy_meter is not None:
            energy_meter.epoch_end()
        for _ in range(warmup if latency_warmup is None else latency_warmup):
            latency_pass(max(min(latency_warmup_images, n_latency), 1))
        latency_ms = timed_passes(latency_pass, lambda ms: ms * n_latency / 1000.0)
    model.train(was_training)
    return {
        "test_set_seconds": statistics.median(pass_seconds),
        "batch_size": batch_size,
        "per_image_latency_ms": statistics.median(latency_ms),
        "repeats": len(pass_seconds),
        "latency_repeats": len(latency_ms),
        "repeats_requested": repeats,
        "budget_s": budget_s,
        "warmup": warmup,
        "latency_images": n_latency,
        "n_images": int(images.shape[0]),
        "test_set_seconds_all": pass_seconds,
        "per_image_latency_ms_all": latency_ms,
    }


def device_name(device: str | torch.device) -> str:
    """GPU name from CUDA, or the CPU model name from /proc/cpuinfo (platform strings as a fallback)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes to tracked files) of the git checkout holding ``path`` (default: this
    package's source); (None, None) when it is not in a git checkout or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if revision.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return revision.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def measurement_environment(device: str | torch.device) -> dict:
    """What this process's time, memory and energy figures depend on, under the names summary.csv gives them
    (leanmed.report.environments labels it): the device and its name, torch, CUDA and cuDNN (GPU only), bitsandbytes,
    timm, and torch's CPU threads."""
    on_cuda = torch.device(device).type == "cuda"
    return {
        "device": str(device),  # as the setting block records it (summary.csv's column device)
        "device_name": device_name(device),
        "torch_version": str(torch.__version__),  # a str subclass torch.load(weights_only=True) refuses
        "cuda_version": torch.version.cuda if on_cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "bitsandbytes_version": _package_version("bitsandbytes"),
        "timm_version": _package_version("timm"),
        "torch_threads": torch.get_num_threads(),
    }


def provenance(config_hash: str, device: str | torch.device, training_environments: list[dict] | None = None) -> dict:
    """The "provenance" block: where and with what the job ran. ``cuda`` is the CUDA version torch was built with,
    given only when the job ran on a GPU (None on CPU). ``training_environments``: the ``measurement_environment`` of
    each process that trained epochs of the run, in order, repeats merged (one entry unless the run was resumed
    elsewhere: another GPU model, torch or thread count); the rest of the block is this process's, which measured the
    test and inference figures."""
    import leanmed

    revision, dirty = git_revision()
    here = measurement_environment(device)
    return {
        "host": socket.gethostname(),
        "device_name": here["device_name"],
        "torch": here["torch_version"],
        "timm": here["timm_version"],
        "bitsandbytes": here["bitsandbytes_version"],
        "carbontracker": _package_version("carbontracker"),
        "numpy": _package_version("numpy"),
        "cuda": here["cuda_version"],
        "cudnn": here["cudnn_version"],
        "python": sys.version.split()[0],
        "leanmed": leanmed.__version__,
        "torch_threads": here["torch_threads"],
        "git_revision": revision,
        "git_dirty": dirty,
        "config_hash": config_hash,
        "gpu_claim": _gpu_claim(),
        "training_environments": list(training_environments or []),
    }


def _gpu_claim() -> dict | None:
    """What ``leanmed.train.devices.claim_gpu`` claimed for this process (from its environment variable), or None
    when the job did not go through it (e.g. the loop run directly)."""
    text = os.environ.get("LEANMED_GPU_CLAIM")
    if not text:
        return None
    try:
        claim = json.loads(text)
    except ValueError:
        return None
    return claim if isinstance(claim, dict) else None
