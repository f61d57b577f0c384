"""The energy record of a phase (``metrics.json``'s ``energy.train`` / ``energy.inference``): its keys, the record
of a phase that could not be measured, the totals read from carbontracker's logs, and whether a figure is measured
(a real counter was read) or estimated (an assumed constant power x time).
"""

from __future__ import annotations

import re
from pathlib import Path

from leanmed.train.carbontracker_setup import carbontracker_version

__all__ = ["ENERGY_KEYS", "COUNTER_HANDLERS", "ASSUMED_POWER_HANDLERS", "unmeasured", "read_energy_logs",
           "reading_kind"]

ENERGY_KEYS = ("measured", "estimated", "assumed_power_w", "estimated_components", "energy_kwh", "energy_kwh_pue",
               "pue", "co2eq_g", "components", "method", "note")
# carbontracker handlers that read a real energy or power counter, and those that assume a constant power.
COUNTER_HANDLERS = {"IntelCPU": "RAPL", "NvidiaGPU": "NVML", "AppleSiliconCPU": "powermetrics",
                    "AppleSiliconGPU": "powermetrics"}
ASSUMED_POWER_HANDLERS = ("GenericCPU", "SimulatedCPUHandler", "SimulatedGPUHandler")
_CONSTANT_POWER_TEXT = re.compile(r"constant power of ([0-9.]+) W")


def unmeasured(reason: str, components: list[str] | None = None, method: str | None = None) -> dict:
    """An energy record for a phase that could not be measured: numbers null, the reason in ``note``."""
    return {
        "measured": False,
        "estimated": False,
        "assumed_power_w": None,
        "estimated_components": [],
        "energy_kwh": None,
        "energy_kwh_pue": None,
        "pue": None,
        "co2eq_g": None,
        "components": components or [],
        "method": method or f"carbontracker {carbontracker_version()}",
        "note": reason,
    }


def read_energy_logs(log_dir: str | Path) -> dict:
    """Sum the "actual" blocks of all carbontracker logs in ``log_dir``.

    Returns {"n_logs", "n_with_actual", "energy_kwh_pue", "co2eq_g", "duration_s"}; energies are None when no log
    holds an actual block. Raises what carbontracker's parser raises (callers guard it).
    """
    from carbontracker import parser

    log_dir = Path(log_dir)
    entries = parser.parse_all_logs(str(log_dir)) if log_dir.is_dir() else []
    actual_blocks = [entry["actual"] for entry in entries if entry.get("actual")]
    usable = [block for block in actual_blocks if block.get("energy (kWh)") is not None]
    return {
        "n_logs": len(entries),
        "n_with_actual": len(usable),
        "energy_kwh_pue": sum(block["energy (kWh)"] for block in usable) if usable else None,
        "co2eq_g": sum(block["co2eq (g)"] for block in usable if block.get("co2eq (g)") is not None)
        if usable else None,
        "duration_s": sum(block.get("duration (s)") or 0.0 for block in usable) if usable else None,
    }


def reading_kind(readings: dict, method: str = "") -> dict:
    """``measured`` / ``estimated`` / ``assumed_power_w`` / ``estimated_components`` from what each component
    read (``readings``: component -> "counter" or the assumed W). Without readings (a log written by an older
    leanmed), the method text decides: "constant power of X W" marks the CPU as assumed."""
    counters = [name for name, value in readings.items() if value == "counter"]
    assumed = {name: float(value) for name, value in readings.items() if value != "counter"}
    if not readings:
        match = _CONSTANT_POWER_TEXT.search(method or "")
        if match:
            assumed = {"cpu": float(match.group(1))}
            counters = ["gpu"] if "NVML" in (method or "") else []
        else:
            counters = ["unknown"]  # as before: a figure carbontracker reported counts as measured
    return {
        "measured": bool(counters),
        "estimated": bool(assumed),
        "assumed_power_w": sum(assumed.values()) if assumed else None,
        "estimated_components": sorted(assumed),
    }
