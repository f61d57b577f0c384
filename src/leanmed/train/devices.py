"""One GPU per training job: claim a free GPU with an OS file lock before CUDA starts.

Snakemake's ``gpu`` resource is only a counter: ``snakemake --resources gpu=4`` lets four training jobs run at once
but tells none of them which GPU to use, so all four would run on cuda:0. ``claim_gpu`` picks a free GPU among the
visible ones, holds an exclusive ``fcntl.flock`` on a lock file for it (one file per GPU in ``lock_dir``), and sets
``CUDA_VISIBLE_DEVICES`` to that GPU alone, so the job's ``cuda`` is that GPU and carbontracker's NVML reading
(which follows ``CUDA_VISIBLE_DEVICES``) sees only it.

- The lock belongs to the open file: the kernel drops it when the process ends in any way (SIGKILL, a crash, the
  node's OOM killer), so a killed job frees its GPU without cleanup. ``release`` (also run at exit) drops it
  earlier. Lock files stay in place (removing them would race with a claimant that has just opened one).
- Which GPUs are visible: ``CUDA_VISIBLE_DEVICES`` when set (its entries as given, indices or UUIDs; "" or "-1":
  none), else NVML's device count (pynvml), else ``nvidia-smi -L``, else none. Tests pass ``devices``.
- Under SLURM (``SLURM_JOB_ID`` set and ``CUDA_VISIBLE_DEVICES`` or ``SLURM_JOB_GPUS`` given) the scheduler's
  assignment is kept: nothing is locked or changed.
- With device ``cpu``, an explicit ``cuda:N``, or no GPU visible, nothing is claimed.
- When every visible GPU is held, the claimant waits (checking every ``poll_s``) up to ``timeout_s`` (default from
  ``LEANMED_GPU_WAIT_S``, else 24 h), logging who holds them, then raises ``GpuClaimTimeout`` naming the holders.
- The lock folder: ``lock_dir``, else ``LEANMED_GPU_LOCK_DIR``, else ``<system temp>/leanmed-gpu-locks-<uid>``
  (one user's jobs; set ``LEANMED_GPU_LOCK_DIR`` to a folder every user can write to share GPUs between users).
  It must be on a local file system of the machine that owns the GPUs.

What was claimed is returned as a ``GpuClaim`` and also put into the environment variable ``LEANMED_GPU_CLAIM``
(JSON), which ``leanmed.train.measure.provenance`` copies into metrics.json (``provenance.gpu_claim``).

This module does not import torch: it must run before anything initialises CUDA.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "GpuClaim",
    "GpuClaimTimeout",
    "claim_gpu",
    "visible_gpus",
    "default_lock_dir",
    "CLAIM_ENV",
    "LOCK_DIR_ENV",
    "WAIT_ENV",
]

CLAIM_ENV = "LEANMED_GPU_CLAIM"
LOCK_DIR_ENV = "LEANMED_GPU_LOCK_DIR"
WAIT_ENV = "LEANMED_GPU_WAIT_S"
DEFAULT_TIMEOUT_S = 24 * 3600.0

log = logging.getLogger(__name__)


class GpuClaimTimeout(RuntimeError):
    """Every visible GPU stayed held by other jobs for the whole wait."""


@dataclass
class GpuClaim:
    """What a job claimed. ``source``: "lock" (a free GPU claimed here), "slurm" (the scheduler's assignment
    kept), "none" (nothing claimed; ``reason`` says why)."""

    source: str
    device: str | None = None
    visible: list[str] = field(default_factory=list)
    lock_file: str | None = None
    waited_s: float = 0.0
    reason: str | None = None
    cuda_visible_devices: str | None = None
    _fd: int | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        record = asdict(self)
        record.pop("_fd", None)
        return record

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent). The kernel does the same when the process ends."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "GpuClaim":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def default_lock_dir(environ: MutableMapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"leanmed-gpu-locks-{os.getuid()}"


def _split_devices(text: str) -> list[str]:
    if text.strip() in ("", "-1"):
        return []
    return [item.strip() for item in text.split(",") if item.strip()]


def _query_gpus() -> list[str]:
    """GPU indices from NVML, else from ``nvidia-smi -L``; [] when neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    return [match.group(1) for match in re.finditer(r"^GPU (\d+):", listing.stdout, re.MULTILINE)]


def visible_gpus(environ: MutableMapping[str, str] | None = None) -> tuple[list[str], str]:
    """(GPU ids this process may use, where the list came from)."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return _split_devices(environ["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES"
    return _query_gpus(), "NVML / nvidia-smi"


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", device) + ".lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "?"
    return text or "?"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
             .encode())
    return fd


def _cuda_already_started() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return False


def claim_gpu(
    device: str = "auto",
    *,
    lock_dir: str | Path | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    devices: Sequence[str] | None = None,
    environ: MutableMapping[str, str] | None = None,
    release_at_exit: bool = True,
) -> GpuClaim:
    """Claim one GPU for this process (see the module docstring) and point ``CUDA_VISIBLE_DEVICES`` at it.

    ``device`` is the training device from the configuration ("auto", "cuda", "cuda:N", "cpu"). ``devices``
    replaces the visible-GPU lookup (tests); ``environ`` the process environment (default ``os.environ``, which
    is what CUDA reads: pass another mapping only in tests).
    """
    environ = os.environ if environ is None else environ
    claim = _claim(device, lock_dir, timeout_s, poll_s, devices, environ)
    claim.cuda_visible_devices = environ.get("CUDA_VISIBLE_DEVICES")
    environ[CLAIM_ENV] = json.dumps(claim.as_dict())
    if claim.held and release_at_exit:
        atexit.register(claim.release)
    if claim.source == "lock":
        log.info("GPU claim: device %s of %s (lock %s, waited %.1f s)", claim.device, ",".join(claim.visible),
                 claim.lock_file, claim.waited_s)
    else:
        log.info("GPU claim: %s (%s)", claim.source, claim.reason)
    return claim


def _claim(device, lock_dir, timeout_s, poll_s, devices, environ) -> GpuClaim:
    kind, _, index = str(device).partition(":")
    if kind == "cpu":
        return GpuClaim("none", reason="training device is cpu")
    if kind not in ("auto", "cuda"):
        return GpuClaim("none", reason=f"device {device!r} is not a GPU choice")
    if index:
        return GpuClaim("none", reason=f"device {device!r} names its GPU explicitly: kept as configured")

    if environ.get("SLURM_JOB_ID") and (environ.get("CUDA_VISIBLE_DEVICES") or environ.get("SLURM_JOB_GPUS")):
        assigned = environ.get("CUDA_VISIBLE_DEVICES") or environ.get("SLURM_JOB_GPUS") or ""
        return GpuClaim(
            "slurm", device=assigned, visible=_split_devices(assigned),
            reason=f"SLURM job {environ['SLURM_JOB_ID']}: the scheduler's GPU assignment is kept",
        )

    if devices is not None:
        visible, origin = [str(d) for d in devices], "given list"
    else:
        visible, origin = visible_gpus(environ)
    if not visible:
        return GpuClaim("none", reason=f"no GPU visible ({origin})")
    if _cuda_already_started():
        raise RuntimeError("claim_gpu must run before CUDA is initialised in this process "
                           "(CUDA_VISIBLE_DEVICES is read once, when CUDA starts)")

    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir(environ)
    folder.mkdir(parents=True, exist_ok=True)
    if timeout_s is None:
        timeout_s = float(environ.get(WAIT_ENV) or DEFAULT_TIMEOUT_S)
    started = time.monotonic()
    next_report = started
    while True:
        for candidate in visible:
            path = folder / _lock_name(candidate)
            fd = _try_lock(path)
            if fd is not None:
                if "CUDA_VISIBLE_DEVICES" not in environ and candidate.isdigit():
                    # The ids came from NVML / nvidia-smi, which number GPUs by PCI bus; make CUDA agree.
                    environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
                environ["CUDA_VISIBLE_DEVICES"] = candidate
                return GpuClaim("lock", device=candidate, visible=list(visible), lock_file=str(path),
                                waited_s=round(time.monotonic() - started, 3),
                                reason=f"free GPU among {origin}", _fd=fd)
        now = time.monotonic()
        holders = "; ".join(f"GPU {d}: {_holder(folder / _lock_name(d))}" for d in visible)
        if now - started >= timeout_s:
            raise GpuClaimTimeout(
                f"all {len(visible)} visible GPU(s) ({','.join(visible)}) stayed held by other jobs for "
                f"{now - started:.0f} s (limit {timeout_s:.0f} s, {WAIT_ENV}); holders: {holders}; lock files in "
                f"{folder}. Run at most as many GPU jobs as there are GPUs (snakemake --resources gpu=N)."
            )
        if now >= next_report:
            log.warning("all GPUs held, waiting (%s)", holders)
            next_report = now + 60.0
        time.sleep(max(0.01, min(poll_s, timeout_s - (now - started))))
