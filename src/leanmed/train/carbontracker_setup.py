"""How carbontracker is made to behave inside a training job (the plumbing behind ``leanmed.train.energy``).

- Its console output: carbontracker's stdout handlers are replaced by one that forwards its messages to the energy
  logger (at DEBUG while a tracker is being built), see ``quiet_console``.
- Its CPU lookup: the CPU model (from /proc/cpuinfo, else py-cpuinfo) and carbontracker's own imports are done once
  per process, in the background from the job's start (``prefetch_cpu_info``), and served from a cache.
- Its version, as measurement methods name it.
- The GPU it reads: the NVML handle of the GPU this job computes on (``nvml_handles_for_job``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading

__all__ = ["FORWARD", "quiet_console", "carbontracker_version", "prefetch_cpu_info", "cached_cpu_info",
           "nvml_handles_for_job"]

# The energy measurement's logger: carbontracker's forwarded messages go where leanmed's own energy lines go.
log = logging.getLogger("leanmed.train.energy")


class _ForwardToLeanmed(logging.Handler):
    """Stands in for carbontracker's console handlers (which print every start-up message to stdout, once per
    tracker built): its messages go to leanmed's logger instead. Its informational messages always at DEBUG: they
    are start-up chatter (the CPU matched, the power assumed), which leanmed states itself once, and its own thread
    may send them after the tracker is built (seen on a loaded machine). Its warnings at DEBUG while a tracker is
    being built and at their own level afterwards (warnings while measuring). carbontracker's log files are
    untouched."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.constructing = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logging.DEBUG if self.constructing or record.levelno < logging.WARNING else record.levelno
            log.log(level, "carbontracker %s: %s", record.levelname.lower(), record.getMessage())
        except Exception:
            self.handleError(record)


FORWARD = _ForwardToLeanmed()


def quiet_console(logger: logging.Logger, forward: bool = True) -> None:
    """Replace ``logger``'s console handlers (stream handlers that are not files) with ``FORWARD`` (or with
    nothing, for loggers whose console output carbontracker filters anyway)."""
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
    if forward and FORWARD not in logger.handlers:
        logger.addHandler(FORWARD)


_cpu_info_lock = threading.Lock()
_cpu_info_cache: dict | None = None
_cpu_info_thread: threading.Thread | None = None


def carbontracker_version() -> str:
    try:
        return importlib.metadata.version("carbontracker")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _proc_cpuinfo_brand() -> str | None:
    """The CPU model as Linux reports it (``model name`` in /proc/cpuinfo: the CPUID brand string, the same text
    py-cpuinfo's ``brand_raw`` holds), or None where there is no such line."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        return None
    return None


def _load_cpu_info() -> None:
    global _cpu_info_cache
    brand = _proc_cpuinfo_brand()
    if brand is not None:
        info = {"brand_raw": brand}  # all carbontracker reads; py-cpuinfo would spend ~1 s in a subprocess
    else:
        try:
            import cpuinfo

            info = cpuinfo.get_cpu_info()
        except Exception:  # carbontracker copes with an empty brand; so do we
            info = {}
    try:  # carbontracker's modules (pandas among them: ~0.5 s), imported here, off the job's main thread
        import carbontracker.tracker  # noqa: F401
        from carbontracker.components.cpu import generic  # noqa: F401
        from carbontracker.emissions.intensity import intensity  # noqa: F401
    except Exception:  # reported by the construction, where the import is repeated
        pass
    with _cpu_info_lock:
        if _cpu_info_cache is None:
            _cpu_info_cache = info


def prefetch_cpu_info() -> None:
    """Start reading the CPU model and importing carbontracker in the background, so that constructing
    carbontracker later does not wait for them (the job calls this first thing). Idempotent."""
    global _cpu_info_thread
    with _cpu_info_lock:
        if _cpu_info_cache is not None or _cpu_info_thread is not None:
            return
        _cpu_info_thread = threading.Thread(target=_load_cpu_info, name="leanmed-cpuinfo", daemon=True)
        _cpu_info_thread.start()


def cached_cpu_info() -> dict:
    """py-cpuinfo's answer, computed once per process."""
    prefetch_cpu_info()
    thread = _cpu_info_thread
    if thread is not None:
        thread.join()
    if _cpu_info_cache is None:
        _load_cpu_info()
    return dict(_cpu_info_cache or {})


def nvml_handles_for_job(nvml, cuda_index: int, visible: str | None, torch_uuid: str | None) -> tuple[list, str]:
    """NVML handle of the GPU a job computes on (its CUDA device ``cuda_index``), and how it was found.

    First by the UUID torch reports for the device (NVML spells it "GPU-..." or "MIG-..."); else by the job's
    entry in ``visible`` (CUDA_VISIBLE_DEVICES: an NVML index, right when CUDA_DEVICE_ORDER=PCI_BUS_ID, which
    ``leanmed.train.devices`` sets, or a UUID); else NVML index ``cuda_index``. Raises what NVML raises when none
    resolves (carbontracker then stops measuring and the energy is recorded as not measured).
    """
    if torch_uuid:
        for candidate in (torch_uuid, "GPU-" + torch_uuid, "MIG-" + torch_uuid):
            try:
                return [nvml.nvmlDeviceGetHandleByUUID(candidate)], f"this job's GPU, NVML UUID {candidate}"
            except Exception:
                continue
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
        if cuda_index < len(entries):
            entry = entries[cuda_index]
            if entry.isdigit():
                return [nvml.nvmlDeviceGetHandleByIndex(int(entry))], f"this job's GPU, NVML index {entry}"
            return [nvml.nvmlDeviceGetHandleByUUID(entry)], f"this job's GPU, NVML UUID {entry}"
    return [nvml.nvmlDeviceGetHandleByIndex(cuda_index)], f"NVML index {cuda_index}"
