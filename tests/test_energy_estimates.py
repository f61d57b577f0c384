"""Energy that is carbontracker's assumed constant power x time is labelled an estimate everywhere it appears."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import types
from importlib import resources

import jsonschema
import pytest

from leanmed.report import aggregate, grouping, pareto, plots, tables
from leanmed.train import carbontracker_setup, energy_records
from leanmed.train import energy as energy_module
from test_report_tables import make_metrics

CPU_METHOD = (
    "carbontracker 2.4.7; CPU 'AMD EPYC': no RAPL counters, so a constant power of 60.0 W is assumed "
    "(carbontracker's table TDP of 'AMD EPYC 7232P', 120.0 W, / 2: matched by name to this CPU's brand 'AMD EPYC', "
    "the whole package whatever the cores used); energy = that power x phase time"
)
GPU_METHOD = "carbontracker 2.4.7; GPU: NVML power draw of NVIDIA H200, sampled every 0.1 s; CPU: RAPL energy counters"
ESTIMATE = {"measured": False, "estimated": True, "assumed_power_w": 60.0, "estimated_components": ["cpu"],
            "method": CPU_METHOD, "co2eq_g": 0.5}
SETTINGS = ("fp32", "amp")


def _study(tmp_path, per_setting_energy):
    """One model, two settings, one seed each; ``per_setting_energy[setting]`` = energy_extra for metrics.json."""
    runs = []
    for setting in SETTINGS:
        run = {"dataset": "rsna", "model": "densenet121", "setting": setting, "scale": 1, "seed": 1}
        runs.append(run)
        directory = aggregate.run_dir(tmp_path, "rsna", "densenet121", setting, 1, 1)
        directory.mkdir(parents=True)
        metrics = make_metrics("rsna", "densenet121", setting, 1, 1, accuracy=0.7, energy_kwh_pue=0.02,
                               energy_extra=per_setting_energy[setting])
        metrics["setting"]["device"] = "cpu"
        (directory / "metrics.json").write_text(json.dumps(metrics))
    return aggregate.collect(runs, tmp_path)


def _schema():
    return json.loads(resources.files("leanmed.schemas").joinpath("metrics.schema.json").read_text())


def test_schema_accepts_estimates_and_the_gpu_claim():
    metrics = make_metrics("rsna", "densenet121", "fp32", 1, 1, accuracy=0.7, energy_extra=ESTIMATE)
    metrics["provenance"]["gpu_claim"] = {"source": "lock", "device": "2", "visible": ["0", "1", "2"],
                                          "lock_file": "/tmp/x/gpu-2.lock", "waited_s": 0.0, "reason": "free GPU",
                                          "cuda_visible_devices": "2"}
    jsonschema.validate(metrics, _schema())
    # An estimate must carry its numbers, like a measurement.
    metrics["energy"]["train"]["energy_kwh"] = None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(metrics, _schema())


def test_cpu_estimate_is_counted_and_shown_as_est_with_the_method_whole(tmp_path):
    summary = _study(tmp_path, {"fp32": ESTIMATE, "amp": ESTIMATE})
    assert list(summary["energy_estimated"]) == [True, True]
    assert list(summary["energy_assumed_power_w"]) == [60.0, 60.0]
    groups = grouping.group_summary(summary, "rsna", 1)
    assert list(groups["energy_n_estimated"]) == [1, 1] and list(groups["energy_n_measured"]) == [0, 0]
    table = tables.paper_table(summary, "rsna")
    assert all(cell.endswith("(est.)") for cell in table["E (Wh)"])
    caption = table.attrs["caption"]
    assert CPU_METHOD in caption  # whole, in its own order, not split at "; " and sorted
    assert "constant power of 60 W times the training time" in caption
    assert "measured as:" not in caption


def test_measured_energy_is_not_labelled_an_estimate(tmp_path):
    measured = {"measured": True, "estimated": False, "assumed_power_w": None, "estimated_components": [],
                "method": GPU_METHOD}
    summary = _study(tmp_path, {"fp32": measured, "amp": measured})
    table = tables.paper_table(summary, "rsna")
    assert not any("est." in cell for cell in table["E (Wh)"])
    assert "est." not in table.attrs["caption"] and GPU_METHOD in table.attrs["caption"]


def test_two_methods_are_each_printed_whole(tmp_path):
    other = dict(ESTIMATE, method=CPU_METHOD.replace("60.0", "35.6"), assumed_power_w=35.6)
    summary = _study(tmp_path, {"fp32": ESTIMATE, "amp": other})
    caption = tables.paper_table(summary, "rsna").attrs["caption"]
    assert f"(1) {CPU_METHOD} (2) {other['method']}" in caption
    assert "35.6, 60 W" in caption


def test_older_metrics_without_the_flag_are_recognised_by_their_method(tmp_path):
    # Written before `estimated` existed: measured true, method stating the assumed constant power.
    summary = _study(tmp_path, {"fp32": {"measured": True, "method": CPU_METHOD},
                                "amp": {"measured": True, "method": GPU_METHOD}})
    groups = grouping.group_summary(summary, "rsna", 1)
    assert list(groups["energy_n_estimated"]) == [1, 0]
    cells = list(tables.paper_table(summary, "rsna")["E (Wh)"])
    assert cells[0].endswith("(est.)") and "est." not in cells[1]


def test_figures_say_est_for_estimated_energy(tmp_path):
    summary = _study(tmp_path, {"fp32": ESTIMATE, "amp": ESTIMATE})
    radar = plots.radar(summary, "rsna", "densenet121", tmp_path / "r.png", tmp_path / "r.pdf")
    labels = [label.get_text() for label in radar.axes.get_xticklabels()]
    energy_label = next(label for label in labels if "training energy" in label)
    assert "est." in energy_label
    legend = [text.get_text() for text in radar.axes.get_legend().get_texts()]
    assert all("(E est.)" in text for text in legend)
    footnotes = " ".join(text.get_text() for text in radar.figure.texts)
    assert "E (est.)" in footnotes and "60 W" in footnotes

    front = pareto.pareto_front(summary, "rsna")
    assert "est." in front.attrs["cost_label"] and "est." in front.attrs["caption"]
    scatter = plots.pareto_scatter(front, tmp_path / "p.png", tmp_path / "p.pdf")
    assert "est." in scatter.axes.get_xlabel()
    assert all(text.get_text().endswith("(est.)") for text in scatter.axes.texts)


def test_figures_without_estimates_say_no_est(tmp_path):
    measured = {"measured": True, "estimated": False, "method": GPU_METHOD}
    summary = _study(tmp_path, {"fp32": measured, "amp": measured})
    radar = plots.radar(summary, "rsna", "densenet121", tmp_path / "r.png", tmp_path / "r.pdf")
    assert not any("est." in label.get_text() for label in radar.axes.get_xticklabels())
    scatter = plots.pareto_scatter(pareto.pareto_front(summary, "rsna"), tmp_path / "p.png", tmp_path / "p.pdf")
    assert "est." not in scatter.axes.get_xlabel()


@pytest.mark.parametrize(
    "readings, method, expected",
    [
        ({"cpu": 60.0}, "", (False, True, 60.0, ["cpu"])),
        ({"cpu": "counter"}, "", (True, False, None, [])),
        ({"cpu": 35.6, "gpu": "counter"}, "", (True, True, 35.6, ["cpu"])),
        ({}, CPU_METHOD, (False, True, 60.0, ["cpu"])),  # an older method file: only the text is known
        ({}, GPU_METHOD, (True, False, None, [])),
    ],
)
def test_reading_kind(readings, method, expected):
    kind = energy_records.reading_kind(readings, method)
    assert (kind["measured"], kind["estimated"], kind["assumed_power_w"], kind["estimated_components"]) == expected


def test_unmeasured_record_is_neither():
    record = energy_records.unmeasured("switched off")
    assert record["measured"] is False and record["estimated"] is False and record["assumed_power_w"] is None
    assert set(energy_records.ENERGY_KEYS) <= set(record)


def test_older_method_file_still_loads(tmp_path):
    (tmp_path / energy_module.METHOD_FILE).write_text(json.dumps(["CPU 'x': no RAPL counters, so a constant power "
                                                                  "of 35.6 W is assumed"]))
    meter = energy_module.EnergyMeter("train", tmp_path, "cpu")
    assert "35.6 W" in meter.method()
    assert energy_records.reading_kind(meter._readings, meter.method())["assumed_power_w"] == 35.6


class FakeNvml:
    """NVML stand-in: GPUs by index with UUIDs."""

    def __init__(self, uuids):
        self.uuids = uuids

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.uuids:
            raise LookupError(uuid)
        return ("handle", self.uuids.index(uuid))

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.uuids):
            raise LookupError(index)
        return ("handle", index)


def test_nvml_reads_the_jobs_gpu_only():
    nvml = FakeNvml(["GPU-aaaa", "GPU-bbbb", "GPU-cccc", "GPU-dddd"])
    # torch's UUID (without NVML's prefix) finds the GPU whatever CUDA_VISIBLE_DEVICES says.
    handles, how = carbontracker_setup.nvml_handles_for_job(nvml, 0, "2", "cccc")
    assert handles == [("handle", 2)] and "UUID GPU-cccc" in how
    # No UUID from torch: the job's entry of CUDA_VISIBLE_DEVICES (an NVML index under PCI_BUS_ID order) ...
    assert carbontracker_setup.nvml_handles_for_job(nvml, 0, "3", None)[0] == [("handle", 3)]
    assert carbontracker_setup.nvml_handles_for_job(nvml, 1, "0,3", None)[0] == [("handle", 3)]
    # ... or a UUID there (carbontracker itself would then read every GPU of the machine).
    assert carbontracker_setup.nvml_handles_for_job(nvml, 0, "GPU-bbbb", None)[0] == [("handle", 1)]
    # Nothing set: the CUDA index.
    assert carbontracker_setup.nvml_handles_for_job(nvml, 1, None, None)[0] == [("handle", 1)]


def test_the_energy_description_waits_for_carbontrackers_thread_to_set_the_cpu_power():
    # carbontracker's GenericCPU handler gets its TDP in the tracker's thread, just after construction; the job's
    # one-line description must state that power, not fail on the unset value (a loaded CI machine hit that race).
    handler = types.SimpleNamespace(tdp=None)
    setter = threading.Timer(0.2, lambda: setattr(handler, "tdp", 60))
    setter.start()
    assert energy_module.wait_for_assumed_cpu_power(handler, timeout_s=5.0) == 60.0
    setter.join()
    started = time.monotonic()
    assert energy_module.wait_for_assumed_cpu_power(types.SimpleNamespace(tdp=None), timeout_s=0.1) is None
    assert time.monotonic() - started < 1.0


def test_carbontracker_start_up_messages_sent_late_by_its_thread_stay_out_of_the_job_log(caplog):
    """Its informational messages (the CPU matched, the power assumed) come from its own thread, on a loaded machine
    after the tracker is built: always DEBUG. Its warnings while measuring keep their level."""
    caplog.set_level(logging.DEBUG, logger="leanmed.train.energy")
    forward = carbontracker_setup.FORWARD
    assert forward.constructing == 0
    source = logging.getLogger("carbontracker.test-forward")
    source.propagate = False
    source.setLevel(logging.DEBUG)
    source.addHandler(forward)
    try:
        source.info("Using TDP of 60.00W for AMD EPYC at 50% utilization")
        source.warning("Epoch duration is too short for a measurement to be collected.")
        forward.constructing = 1
        source.warning("No API keys provided.")
    finally:
        forward.constructing = 0
        source.removeHandler(forward)
    levels = [(record.levelno, record.getMessage()) for record in caplog.records if record.name == "leanmed.train.energy"]
    assert levels == [
        (logging.DEBUG, "carbontracker info: Using TDP of 60.00W for AMD EPYC at 50% utilization"),
        (logging.WARNING, "carbontracker warning: Epoch duration is too short for a measurement to be collected."),
        (logging.DEBUG, "carbontracker warning: No API keys provided."),
    ]


def carbontrackers_cpu_handler(brand):
    """carbontracker's own GenericCPU handler with its real TDP table, for a CPU brand string (no thread started)."""
    from carbontracker.components.cpu.generic import GenericCPU

    handler = GenericCPU.__new__(GenericCPU)
    handler.cpu_brand = brand
    handler.cpu_power_data = handler.load_cpu_power_data()
    handler.average_tdp = handler.calculate_average_tdp()
    return handler


def test_the_method_names_the_table_entry_the_assumed_cpu_power_comes_from():
    # /proc/cpuinfo of this kind of cloud machine says only "AMD EPYC": carbontracker takes the first table entry
    # containing it, an 8-core part, whatever the machine's cores; the record says so rather than "the matched model".
    handler = carbontrackers_cpu_handler("AMD EPYC")
    handler.init()
    source = energy_module.assumed_cpu_power_source(handler)
    matched = re.search(r"TDP of '([^']+)'", source).group(1)
    assert "AMD EPYC" in matched and f"{handler.cpu_power_data[matched]:.1f} W" in source
    assert handler.tdp == handler.cpu_power_data[matched] / 2  # what carbontracker assumes: that entry's TDP / 2
    unknown = carbontrackers_cpu_handler("Imaginary CPU 9000 @ 3.0GHz")
    unknown.init()
    assert energy_module.assumed_cpu_power_source(unknown) == (
        "the average TDP of carbontracker's table / 2: no entry matches this CPU's brand 'Imaginary CPU 9000 @ 3.0GHz'")
    assert unknown.tdp == unknown.calculate_average_tdp()
