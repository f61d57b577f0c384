"""Measurement helpers: byte counts, CPU peak memory, inference timing, provenance, and the carbontracker wrapper."""

import statistics
import time

import pytest
import torch

from leanmed.train.energy import EnergyMeter
from leanmed.train.energy_records import ENERGY_KEYS, read_energy_logs
from leanmed.train.measure import (
    PeakMemoryMeter,
    gradient_bytes,
    git_revision,
    optimizer_state_bytes,
    parameter_bytes,
    provenance,
    tensor_bytes,
    time_inference,
)
from leanmed.train.settings import resolve


def test_tensor_bytes_counts_shared_storage_once():
    base = torch.zeros(100)
    view = base[10:20]
    assert tensor_bytes([base, view, torch.zeros(10, dtype=torch.float16)]) == 400 + 20


def test_parameter_gradient_and_adam_state_bytes_are_exact():
    model = torch.nn.Linear(512, 512)  # 262144 + 512 parameters
    n_parameters = 512 * 512 + 512
    assert parameter_bytes(model) == 4 * n_parameters
    assert gradient_bytes(model) is None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 512)).sum().backward()
    optimizer.step()
    assert gradient_bytes(model) == 4 * n_parameters
    # two float32 moments per parameter plus one float32 step counter per tensor
    assert optimizer_state_bytes(optimizer) == 8 * n_parameters + 2 * 4


def test_cpu_peak_memory_sees_a_short_lived_allocation():
    with PeakMemoryMeter("cpu") as meter:
        block = torch.ones(200 * 1024 * 1024 // 4)  # 200 MiB, touched
        time.sleep(0.1)
        del block
    assert meter.kind == "cpu_peak_rss_bytes" and meter.peak_reserved_bytes is None
    assert meter.peak_bytes - meter.start_bytes > 150 * 1024 * 1024


def test_inference_timing_fields():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    timing = time_inference(model, torch.rand(40, 1, 8, 8), resolve("fp32", "cpu"), batch_size=32, repeats=3,
                            warmup=1, latency_images=10)
    assert timing["test_set_seconds"] > 0 and timing["per_image_latency_ms"] > 0
    assert timing["repeats"] == 3 and len(timing["test_set_seconds_all"]) == 3
    assert timing["latency_images"] == 10 and timing["n_images"] == 40
    # The figures are the medians of what was timed, one entry per timed pass.
    assert timing["test_set_seconds"] == statistics.median(timing["test_set_seconds_all"])
    assert len(timing["per_image_latency_ms_all"]) == timing["latency_repeats"] == 3
    assert timing["per_image_latency_ms"] == statistics.median(timing["per_image_latency_ms_all"])


def test_provenance_and_git_outside_a_checkout(tmp_path):
    record = provenance("abc123", "cpu")
    for key in ("host", "device_name", "torch", "timm", "bitsandbytes", "cuda", "python", "git_revision",
                "config_hash"):
        assert key in record
    assert record["config_hash"] == "abc123" and record["cuda"] is None
    assert git_revision(tmp_path) == (None, None)


def _count_geolocation_calls(monkeypatch):
    import geocoder

    calls = []
    monkeypatch.setattr(geocoder, "ip", lambda *args, **kwargs: calls.append(args) or None)
    return calls


def test_energy_meter_measures_without_network_and_quickly(tmp_path, monkeypatch):
    calls = _count_geolocation_calls(monkeypatch)
    meter = EnergyMeter("train", tmp_path / "energy", "cpu", epochs=2)
    started = time.perf_counter()
    for _ in range(2):
        meter.epoch_start()
        time.sleep(0.05)
        meter.epoch_end()
    meter.finish()
    overhead = time.perf_counter() - started - 0.1
    record = meter.result()
    assert calls == []  # geolocation never asked
    assert overhead < 2.0 and meter.construct_seconds < 2.0
    assert record["components"] == ["cpu"]
    if "constant power" in record["method"]:  # no RAPL: carbontracker's assumed power x time, an estimate
        assert record["measured"] is False and record["estimated"] is True
        assert record["assumed_power_w"] > 0 and record["estimated_components"] == ["cpu"]
        assert f"constant power of {record['assumed_power_w']:.1f} W" in record["method"]
        assert record["note"].startswith("estimate: cpu energy is an assumed constant power")
    else:
        assert record["measured"] is True and record["estimated"] is False and record["assumed_power_w"] is None
    assert record["energy_kwh"] > 0 and record["energy_kwh_pue"] == pytest.approx(record["energy_kwh"] * 1.58)
    assert record["co2eq_g"] > 0 and record["method"].startswith("carbontracker ")
    assert ("constant power" in record["method"]) or ("RAPL" in record["method"])
    assert read_energy_logs(tmp_path / "energy")["n_with_actual"] == 1


def test_energy_meter_failure_is_recorded_not_raised(tmp_path, monkeypatch):
    from carbontracker import tracker

    def broken(*args, **kwargs):
        raise RuntimeError("simulated carbontracker failure")

    monkeypatch.setattr(tracker, "CarbonTracker", broken)
    meter = EnergyMeter("train", tmp_path / "energy", "cpu")
    meter.epoch_start()
    meter.epoch_end()
    record = meter.result()
    assert record["measured"] is False and record["energy_kwh"] is None
    assert "simulated carbontracker failure" in record["note"]


def test_energy_meter_survives_sys_exit_from_carbontracker(tmp_path, monkeypatch):
    from carbontracker import tracker

    def exits(*args, **kwargs):
        raise SystemExit(70)

    monkeypatch.setattr(tracker, "CarbonTracker", exits)
    meter = EnergyMeter("inference", tmp_path / "energy", "cpu")
    meter.epoch_start()
    meter.epoch_end()
    assert meter.result()["measured"] is False


def test_energy_switched_off(tmp_path):
    record = EnergyMeter("train", tmp_path / "energy", "cpu", enabled=False).result()
    assert record["measured"] is False and "switched off" in record["note"]
    assert set(ENERGY_KEYS) <= set(record)
