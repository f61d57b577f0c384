"""Energy of a training or inference phase, measured by carbontracker, without ever stalling or crashing the job.

What carbontracker 2.4.7 measures, and what this wrapper changes:

- CPU: with Intel RAPL counters readable (``/sys/class/powercap``), the energy of the whole CPU package and DRAM
  (every process on the machine). Without RAPL it measures nothing: it assumes a constant power, half the TDP of the
  CPU model it matches in its table (or half the table's average TDP), for as long as the phase runs. ``method``
  says which case applied and the wattage.
- Measured or estimated: ``measured`` is true when a real counter was read (RAPL for the CPU, NVML for the GPU,
  powermetrics on Apple silicon); ``estimated`` is true when the figure is, wholly or in part, an assumed constant
  power x time (carbontracker's generic CPU without RAPL, or its simulated components), with ``assumed_power_w``
  (before PUE) and ``estimated_components``. A CPU-only job without RAPL is ``measured: false, estimated: true``;
  a GPU job on such a machine is both (NVML for the GPU, the CPU part assumed).
- GPU (only when the job runs on CUDA): carbontracker 2.4.7 reads NVML power for the GPUs whose integer indices
  are in CUDA_VISIBLE_DEVICES (as NVML indices), and for every GPU of the machine when it is unset or holds UUIDs.
  Here the NVML handle is chosen instead as the GPU this job computes on (torch's device UUID, else its
  CUDA_VISIBLE_DEVICES entry), so a job measures its own GPU only (``leanmed.train.devices`` gives each job
  one); sampled every ``update_interval_s`` (0.1 s: a stretch without any sample gets the previous stretch's energy
  from carbontracker, so sampling often keeps short epochs honest; RAPL readings take 1 s each regardless).
- carbontracker multiplies its energy by a data-centre PUE (1.58); ``energy_kwh`` is the figure divided by it,
  ``energy_kwh_pue`` the figure as carbontracker reports it.
- CO2-eq: carbontracker geolocates the machine over the network when constructed (a stall of seconds behind a silent
  proxy). The lookup is replaced here by a fixed answer: no location (carbontracker then uses its world-average
  intensity), or the configured ISO country code (its table's intensity for that country).
- Totals are read from the "actual" block of each log (``parser.parse_all_logs``), summed over the logs in the
  phase's folder (one per process that ran the phase: a resumed job adds one), never from
  ``aggregate_consumption``, which can return predicted totals.
- Every call is guarded: a failure stops measuring, records the reason, and lets the job go on. ``ignore_errors=True``
  matters: without it carbontracker calls ``sys.exit(70)`` on errors.

The pieces: ``leanmed.train.carbontracker_setup`` (carbontracker's console output, its CPU lookup and version, the
NVML handle of the job's GPU) and ``leanmed.train.energy_records`` (the record's keys, the record of an unmeasured
phase, the logs' totals, measured or estimated); ``EnergyMeter`` here.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch

from leanmed.train.carbontracker_setup import (
    FORWARD,
    cached_cpu_info,
    carbontracker_version,
    nvml_handles_for_job,
    prefetch_cpu_info,
    quiet_console,
)
from leanmed.train.energy_records import (
    ASSUMED_POWER_HANDLERS,
    COUNTER_HANDLERS,
    read_energy_logs,
    reading_kind,
    unmeasured,
)

__all__ = ["EnergyMeter"]

log = logging.getLogger(__name__)

METHOD_FILE = "leanmed_method.json"


#: How long the job's one-line energy description waits for carbontracker's thread to initialise its components:
#: the thread starts with the tracker and only then reads the CPU's TDP from its table (measured: milliseconds, but
#: on a loaded machine the description was once written before it, and said nothing of the assumed power).
COMPONENT_INIT_WAIT_S = 5.0


def wait_for_assumed_cpu_power(handler, timeout_s: float) -> float | None:
    """The constant power (W) carbontracker's GenericCPU handler assumes, once its thread has set it (``tdp``);
    None when it is still unset after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while getattr(handler, "tdp", None) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    tdp = getattr(handler, "tdp", None)
    return None if tdp is None else float(tdp)


def assumed_cpu_power_source(handler) -> str:
    """Where the constant power that carbontracker's GenericCPU handler assumes comes from, as carbontracker 2.4.7
    finds it (``GenericCPU.find_matching_tdp``): the TDP of the first table entry whose name is the CPU's brand string
    or contains it without its frequency, halved (50 % utilisation); else the table's average TDP, halved. A match by
    name, not by core count: the whole package's figure however many of its cores the job uses."""
    brand = str(getattr(handler, "cpu_brand", "") or "")
    table = getattr(handler, "cpu_power_data", None) or {}
    without_frequency = brand.split("@")[0].strip()
    matched = brand if brand in table else next((name for name in table if without_frequency in name), None)
    if brand and matched is not None:
        return (f"carbontracker's table TDP of '{matched}', {float(table[matched]):.1f} W, / 2: matched by name to "
                f"this CPU's brand '{brand}', the whole package whatever the cores used")
    return f"the average TDP of carbontracker's table / 2: no entry matches this CPU's brand '{brand}'"


class EnergyMeter:
    """carbontracker around one phase (its "epochs" are the phase's epochs, or one block for inference).

    Use: ``epoch_start()`` / ``epoch_end()`` around each measured stretch, ``finish()`` at the end (also after an
    interruption), then ``result(divide_by=1)``. Nothing here raises; problems end up in ``result()["note"]``.
    The tracker is built at the first ``epoch_start`` (``construct_seconds`` records how long that took).
    """

    def __init__(
        self,
        phase: str,
        log_dir: str | Path,
        device: str | torch.device,
        enabled: bool = True,
        epochs: int = 1,
        update_interval_s: float = 0.1,
        country: str | None = None,
        announce: bool = True,
    ):
        self.phase = phase
        self.announce = announce  # log what is measured and assumed, in one line, once the tracker is built
        self.announced = False
        self.log_dir = Path(log_dir)
        self.device = torch.device(device)
        self.enabled = enabled
        self.epochs = max(int(epochs), 1)
        self.update_interval_s = update_interval_s
        self.country = country.upper() if country else None
        self.components = ["cpu", "gpu"] if self.device.type == "cuda" and torch.cuda.is_available() else ["cpu"]
        self.problems: list[str] = []
        self.construct_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.epochs_started = 0
        self.epochs_without_power_sample = 0
        self._tracker = None
        self._loggers: list[logging.Logger] = []
        self._method_parts: list[str] = []
        # component -> "counter" (a real counter was read) or the constant power assumed (W)
        self._readings: dict[str, str | float] = {}
        self._finished = False
        if enabled:
            prefetch_cpu_info()

    # -- construction -------------------------------------------------------------------------------------------
    def _fixed_location(self, service):
        """Stands in for carbontracker's network geolocation: the configured country, or "unknown"."""
        if self.country is None:
            return None
        from carbontracker.emissions.intensity.location import Location

        return Location(ok=True, address=f"configured country {self.country}", country=self.country)

    def _construct(self) -> None:
        started = time.perf_counter()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            from carbontracker.components.cpu import generic as generic_cpu
            from carbontracker.emissions.intensity import intensity
            from carbontracker.tracker import CarbonTracker

            meter = self
            # carbontracker's module-level logger (the CPU model, its TDP match) and the tracker's own loggers
            # print to stdout: quiet during construction (leanmed states the assumptions once, see _announce)
            quiet_console(generic_cpu.logger.logger_err)
            with ExitStack() as patches:
                patches.enter_context(contextlib.redirect_stdout(io.StringIO()))  # the new tracker's console handlers
                FORWARD.constructing += 1
                patches.callback(setattr, FORWARD, "constructing", 0)
                patches.enter_context(mock.patch.object(
                    intensity.IntensityService, "_fetch_geo_location", lambda service: meter._fixed_location(service)
                ))
                patches.enter_context(mock.patch.object(generic_cpu.cpuinfo, "get_cpu_info", cached_cpu_info))
                tracker = CarbonTracker(
                    epochs=self.epochs,
                    epochs_before_pred=0,  # no predictions: only the actual figures are wanted
                    monitor_epochs=-1,
                    update_interval=self.update_interval_s,
                    # carbontracker's own parser finds the actual block only when the "equivalent to" lines
                    # follow it (its regex needs them to consume the line break): keep interpretable=True.
                    interpretable=True,
                    ignore_errors=True,  # otherwise errors end the process with sys.exit(70)
                    components=",".join(self.components),
                    devices_by_pid=False,  # by-pid lookup finds no GPU inside containers without --pid=host
                    log_dir=str(self.log_dir),
                    log_file_prefix=self.phase,
                    verbose=0,
                    decimal_precision=15,
                )
            if getattr(tracker, "deleted", True) or not hasattr(tracker, "tracker"):
                self.problems.append("carbontracker stopped itself during construction (see its _err.log)")
            else:
                self._tracker = tracker
                self._select_job_gpu()
                logger = tracker.logger
                self._loggers = [logger.logger, logger.logger_output, logger.logger_err]
                quiet_console(logger.logger_output, forward=False)
                quiet_console(logger.logger_err)
                self._announce()
        except BaseException as error:  # SystemExit included: carbontracker may call sys.exit
            self.problems.append(f"carbontracker construction failed: {type(error).__name__}: {error}")
            self._tracker = None
        finally:
            self.construct_seconds = time.perf_counter() - started

    def _announce(self) -> None:
        """One leanmed line: what carbontracker measures and what it assumes (once per job: see ``announce``)."""
        if not self.announce or self.announced:
            return
        self.announced = True
        try:
            from carbontracker import constants

            parts = []
            for component in self._tracker.tracker.components:
                handler = component._handler
                name = type(handler).__name__
                if name == "GenericCPU":
                    tdp = wait_for_assumed_cpu_power(handler, COMPONENT_INIT_WAIT_S)
                    if tdp is None:
                        parts.append(f"CPU '{handler.cpu_brand}': no RAPL counters readable, so a constant power is "
                                     "assumed (not yet known when this was written: see metrics.json) x phase time: "
                                     "an estimate")
                    else:
                        parts.append(f"CPU '{handler.cpu_brand}': no RAPL counters readable, so a constant {tdp:.1f} W "
                                     f"is assumed ({assumed_cpu_power_source(handler)}) x phase time: an estimate")
                elif name == "IntelCPU":
                    parts.append("CPU: RAPL energy counters (package and DRAM, all processes)")
                elif name == "NvidiaGPU":
                    parts.append(f"GPU: NVML power draw of this job's GPU, sampled every {self.update_interval_s} s")
                else:
                    parts.append(f"{component.name.upper()}: {name}")
            if "gpu" not in self.components:
                parts.append("no GPU (the job runs on the CPU)")
            if self.country:
                parts.append(f"CO2eq at carbontracker's intensity for {self.country}")
            else:
                parts.append(f"CO2eq at carbontracker's world average, {constants.WORLD_AVG_CARBON_INTENSITY} "
                             f"gCO2eq/kWh ({constants.WORLD_AVG_CARBON_INTENSITY_YEAR}; no location lookup)")
            parts.append(f"its figures include a PUE of {constants.PUE_2023} (energy_kwh is without it)")
            log.info("energy: carbontracker %s measures training and inference; %s; its own logs in %s",
                     carbontracker_version(), "; ".join(parts), self.log_dir.parent)
        except Exception as error:  # a description only: never a reason to fail
            log.info("energy: carbontracker %s measures training and inference (%s: %s describing it)",
                     carbontracker_version(), type(error).__name__, error)

    def _select_job_gpu(self) -> None:
        """Make carbontracker's NVML handler read the GPU this job computes on, not every GPU of the machine."""
        if "gpu" not in self.components:
            return
        index = self.device.index if self.device.index is not None else 0
        try:
            torch_uuid = str(torch.cuda.get_device_properties(index).uuid)
        except Exception:
            torch_uuid = None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        for component in self._tracker.tracker.components:
            handler = component._handler
            if type(handler).__name__ != "NvidiaGPU":
                continue

            def job_handles(handler=handler):
                import pynvml

                handles, how = nvml_handles_for_job(pynvml, index, visible, torch_uuid)
                handler.leanmed_gpu_selection = how
                return handles

            handler._get_handles = job_handles

    # -- phase control ------------------------------------------------------------------------------------------
    def epoch_start(self) -> None:
        if not self.enabled or self._finished:
            return
        if self._tracker is None and self.construct_seconds is None:
            self._construct()
        if self._tracker is None or self._tracker.deleted:
            return
        try:
            self._tracker.epoch_start()
            self.epochs_started += 1
        except BaseException as error:
            self._fail("epoch_start", error)

    def epoch_end(self) -> None:
        if self._tracker is None or self._tracker.deleted or self._finished:
            return
        try:
            self._note_power_samples()
            if not self._method_parts:
                self._describe_components()
            # carbontracker deletes itself after its last epoch (epochs = max_epochs), hence describing first.
            self._tracker.epoch_end()
        except BaseException as error:
            self._fail("epoch_end", error)

    def _note_power_samples(self) -> None:
        """Count epochs in which carbontracker's sampler took no power reading (a stretch shorter than its cycle)."""
        components = self._tracker.tracker.components
        epoch = self._tracker.tracker.epoch_counter
        for component in components:
            usages = component.power_usages
            if len(usages) < epoch or not usages[epoch - 1]:
                self.epochs_without_power_sample += 1
                return

    def _describe_components(self) -> None:
        """Record what each measured component really is (RAPL, constant power, NVML) for ``method``."""
        parts = []
        readings: dict[str, str | float] = {}
        for component in self._tracker.tracker.components:
            handler = component._handler
            handler_name = type(handler).__name__
            if handler_name in COUNTER_HANDLERS:
                readings[component.name] = "counter"
            elif handler_name in ASSUMED_POWER_HANDLERS:
                try:
                    power = float(handler.tdp) if handler_name == "GenericCPU" else float(sum(handler.power_usage()))
                except Exception:
                    power = float("nan")
                readings[component.name] = power
            try:
                devices = ", ".join(handler.devices())
            except Exception:
                devices = "?"
            if handler_name == "GenericCPU":
                parts.append(
                    f"CPU '{devices}': no RAPL counters, so a constant power of {float(handler.tdp):.1f} W is assumed "
                    f"({assumed_cpu_power_source(handler)}); energy = that power x phase time"
                )
            elif handler_name == "IntelCPU":
                parts.append(f"CPU: RAPL energy counters ({devices}), whole package and DRAM, all processes")
            elif handler_name == "NvidiaGPU":
                selection = getattr(handler, "leanmed_gpu_selection", None)
                parts.append(f"GPU: NVML power draw of {devices}" + (f" ({selection})" if selection else "")
                             + f", sampled every {self.update_interval_s} s")
            elif handler_name in ASSUMED_POWER_HANDLERS:
                parts.append(f"{component.name.upper()} '{devices}': simulated by carbontracker, a constant power of "
                             f"{readings[component.name]:.1f} W is assumed; energy = that power x phase time")
            else:
                parts.append(f"{component.name.upper()}: {handler_name} ({devices})")
        self._method_parts = parts
        self._readings = readings

    def finish(self) -> None:
        """Stop measuring and write carbontracker's actual totals to its log. Safe to call more than once."""
        if self._finished:
            return
        self._finished = True
        if self._tracker is None:
            return
        started = time.perf_counter()
        try:
            if not self._tracker.deleted:
                if not self._method_parts:
                    self._describe_components()
                self._tracker.stop()
        except BaseException as error:
            self._fail("stop", error)
        finally:
            self.stop_seconds = time.perf_counter() - started
            self._close_log_files()
            self._save_method()

    def _save_method(self) -> None:
        """Keep the description next to the logs, for a resumed job whose last process measured nothing itself."""
        if self._method_parts:
            try:
                (self.log_dir / METHOD_FILE).write_text(
                    json.dumps({"parts": self._method_parts, "readings": self._readings})
                )
            except OSError as error:
                self.problems.append(f"could not save the method description: {error}")

    def _load_method(self) -> None:
        path = self.log_dir / METHOD_FILE
        if not self._method_parts and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                return
            if isinstance(saved, dict):
                self._method_parts = list(saved.get("parts") or [])
                self._readings = dict(saved.get("readings") or {})
            else:  # written by an earlier leanmed: the parts alone
                self._method_parts = list(saved)

    def _fail(self, step: str, error: BaseException) -> None:
        self.problems.append(f"carbontracker {step} failed: {type(error).__name__}: {error}")
        try:
            if self._tracker is not None and not self._tracker.deleted:
                self._tracker._delete()
        except BaseException:
            self.problems.append("carbontracker could not be stopped cleanly: " + traceback.format_exc(limit=1))

    def _close_log_files(self) -> None:
        """carbontracker never closes its log handlers; close them so that jobs do not leak file descriptors."""
        for logger in self._loggers:
            for handler in list(logger.handlers):
                try:
                    handler.close()
                finally:
                    logger.removeHandler(handler)
        self._loggers = []

    # -- results ------------------------------------------------------------------------------------------------
    def method(self) -> str:
        self._load_method()
        text = f"carbontracker {carbontracker_version()}"
        if self._method_parts:
            text += "; " + "; ".join(self._method_parts)
        return text

    def result(self, divide_by: int = 1, what: str | None = None) -> dict:
        """The energy record of the phase (ENERGY_KEYS plus details), from all logs in ``log_dir``.

        ``divide_by`` splits the totals over that many equal repetitions (e.g. timed test-set passes), and ``what``
        says what one share is, for the note.
        """
        self.finish()
        if not self.enabled:
            return unmeasured("energy measurement switched off in the configuration", self.components)
        try:
            totals = read_energy_logs(self.log_dir)
        except Exception as error:
            return unmeasured(
                f"carbontracker logs could not be read: {type(error).__name__}: {error}. "
                + " ".join(self.problems),
                self.components,
                self.method(),
            )
        if totals["energy_kwh_pue"] is None:
            reason = "no carbontracker log with an actual-consumption block"
            if self.problems:
                reason += ": " + " ".join(self.problems)
            return unmeasured(reason, self.components, self.method())

        if totals["energy_kwh_pue"] == 0 and self.epochs_without_power_sample:
            # Not a measured zero: no power sample fell inside the phase, so nothing was measured at all.
            return unmeasured(
                f"no power sample: the measured stretches were shorter than carbontracker's "
                f"{self.update_interval_s} s sampling interval",
                self.components,
                self.method(),
            )

        from carbontracker import constants

        pue = float(constants.PUE_2023)
        energy_kwh_pue = totals["energy_kwh_pue"] / divide_by
        co2eq_g = totals["co2eq_g"] / divide_by if totals["co2eq_g"] is not None else None
        notes = []
        if what:
            notes.append(f"figures are per {what} (totals divided by {divide_by})")
        if totals["n_logs"] > 1:
            notes.append(f"summed over {totals['n_with_actual']} process segments (resumed job)")
        if totals["n_with_actual"] < totals["n_logs"]:
            notes.append(
                f"{totals['n_logs'] - totals['n_with_actual']} segment(s) ended without a total (killed): "
                "their energy is missing, so the figure is a lower bound"
            )
        if self.epochs_without_power_sample:
            notes.append(
                f"{self.epochs_without_power_sample} of {self.epochs_started} measured stretches got no power "
                f"sample (shorter than the {self.update_interval_s} s sampling interval); carbontracker gives such a "
                "stretch the energy of the stretch before it, so the total can be overestimated"
            )
        intensity = co2eq_g / energy_kwh_pue if (co2eq_g is not None and energy_kwh_pue) else None
        if intensity is not None:
            source = (
                f"carbontracker's table value for {self.country}" if self.country
                else "carbontracker's world average (network geolocation disabled)"
            )
            notes.append(f"CO2eq at {intensity:.1f} gCO2eq/kWh: {source}")
        notes.extend(self.problems)
        method = self.method()
        kind = reading_kind(self._readings, method)
        if kind["estimated"]:
            notes.insert(0, "estimate: " + ", ".join(kind["estimated_components"]) + " energy is an assumed constant "
                         f"power ({kind['assumed_power_w']:.1f} W) x time, no energy counter was read for it")
        return {
            **kind,
            "energy_kwh": energy_kwh_pue / pue,
            "energy_kwh_pue": energy_kwh_pue,
            "pue": pue,
            "co2eq_g": co2eq_g,
            "components": list(self.components),
            "method": method,
            "note": "; ".join(notes) if notes else None,
            "carbon_intensity_g_per_kwh": intensity,
            "tracker_construct_seconds": self.construct_seconds,
            "tracker_stop_seconds": self.stop_seconds,
        }

