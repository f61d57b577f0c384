"""The inference phase of a training job: what it holds in memory, how many passes it times, its warm-up (CPU)."""

import pytest
import torch

from leanmed.synthetic import write_split
from leanmed.train import carbontracker_setup
from leanmed.train import job as job_module
from leanmed.train.job import TrainConfig, run
from leanmed.train.measure import release_training_state, time_inference
from leanmed.train.settings import resolve


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory):
    """32 train / 8 val / 40 test grey 16x16 PNGs (two test batches of 32)."""
    return write_split(tmp_path_factory.mktemp("data"), {"train": 32, "val": 8, "test": 40}, size=16)


def _config(split_csv, out_dir, **changes):
    values = dict(split_csv=split_csv, out_dir=str(out_dir), dataset="demo", model="mlp_small", setting="fp32",
                  seed=3, image_size=16, lr=1e-2, batch_size=32, max_epochs=2, patience=5, energy=False,
                  inference_repeats=3, threads=1)
    values.update(changes)
    return TrainConfig(**values)


@pytest.mark.parametrize("setting", ["fp32", "8bit"])
def test_optimizer_state_and_gradients_are_released_before_inference_timing(split_csv, tmp_path, monkeypatch,
                                                                            setting):
    built = []
    build_optimizer = job_module.build_optimizer

    def recording_build_optimizer(*args, **kwargs):
        built.append(build_optimizer(*args, **kwargs))
        return built[-1]

    seen = {}
    real_time_inference = job_module.time_inference

    def checking_time_inference(model, *args, **kwargs):
        seen["optimizer_state_entries"] = len(built[-1].state)
        seen["gradients"] = [p.grad for p in model.parameters() if p.grad is not None]
        return real_time_inference(model, *args, **kwargs)

    monkeypatch.setattr(job_module, "build_optimizer", recording_build_optimizer)
    monkeypatch.setattr(job_module, "time_inference", checking_time_inference)
    metrics = run(_config(split_csv, tmp_path, setting=setting))
    assert metrics["status"] == "completed"
    assert seen == {"optimizer_state_entries": 0, "gradients": []}
    # ... yet the memory block reports what training held, measured before the release
    memory = metrics["memory"]
    assert memory["gradients_bytes"] == memory["weights_bytes"]  # float32 gradients of float32 weights
    assert memory["optimizer_state_bytes"] > (0 if setting == "8bit" else 2 * memory["weights_bytes"])
    assert "no training step" not in (memory["note"] or "")
    assert "optimiser state and gradients are released" in metrics["definitions"]["memory.inference_peak_bytes"]


def test_release_training_state_frees_state_and_gradients():
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(4, 8)).sum().backward()
    optimizer.step()
    release_training_state(model, optimizer, "cpu")
    assert len(optimizer.state) == 0 and all(p.grad is None for p in model.parameters())


def test_test_evaluation_is_the_warm_up_at_batch_32(split_csv, tmp_path):
    metrics = run(_config(split_csv, tmp_path / "b32"))
    inference = metrics["inference"]
    assert inference["warmup"] == 0 and "test evaluation" in inference["note"]
    assert 1 <= inference["repeats"] <= 3 and 1 <= inference["latency_repeats"] <= 3
    assert inference["budget_s"] == 1.0
    other = run(_config(split_csv, tmp_path / "b16", batch_size=16))["inference"]
    assert other["warmup"] == 1 and other["note"] is None


def test_repeats_stop_at_the_time_budget_and_energy_divides_by_the_passes_run():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    images = torch.rand(40, 1, 8, 8)
    calls = []

    class Meter:
        def epoch_start(self):
            calls.append("start")

        def epoch_end(self):
            calls.append("end")

    unlimited = time_inference(model, images, resolve("fp32", "cpu"), repeats=4, warmup=1, latency_images=10)
    assert unlimited["repeats"] == 4 and unlimited["latency_repeats"] == 4 and unlimited["budget_s"] is None
    budgeted = time_inference(model, images, resolve("fp32", "cpu"), repeats=4, warmup=0, latency_images=10,
                              budget_s=0.0, energy_meter=Meter())
    assert budgeted["repeats"] == 1 and budgeted["latency_repeats"] == 1 and budgeted["repeats_requested"] == 4
    assert len(budgeted["test_set_seconds_all"]) == 1 and calls == ["start", "end"]


def test_cpu_model_comes_from_proc_cpuinfo_as_py_cpuinfo_gives_it():
    brand = carbontracker_setup._proc_cpuinfo_brand()
    if brand is None:
        pytest.skip("no model name in /proc/cpuinfo here")
    import cpuinfo

    assert brand == cpuinfo.get_cpu_info().get("brand_raw")
