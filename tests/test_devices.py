"""One GPU per training job: real OS file locks between real processes, on simulated GPU lists (no GPU needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from leanmed.train import devices
from leanmed.train.devices import GpuClaimTimeout, claim_gpu, visible_gpus

# A training job's start, reduced to the claim: claim, report, hold the GPU until told to stop (or killed).
HOLDER = """
import json, os, pathlib, sys, time
from leanmed.train.devices import claim_gpu
claim = claim_gpu("auto", lock_dir=sys.argv[1], timeout_s=float(sys.argv[2]), poll_s=0.05)
print(json.dumps({"claim": claim.as_dict(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "torch_imported": "torch" in sys.modules}), flush=True)
stop = pathlib.Path(sys.argv[3])
while not stop.exists():
    time.sleep(0.05)
"""


def _start(tmp_path, gpus, timeout_s=30.0, extra_env=None):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "LEANMED_GPU"))}
    env["CUDA_VISIBLE_DEVICES"] = gpus
    env.pop("CUDA_DEVICE_ORDER", None)
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(timeout_s), str(tmp_path / "stop")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _report(process, timeout_s=30.0):
    """The holder's first line (its claim), or its error output if it ended without one."""
    deadline = time.monotonic() + timeout_s
    line = process.stdout.readline()
    if not line:
        process.wait(max(0.1, deadline - time.monotonic()))
        raise AssertionError(f"holder exited {process.returncode}: {process.stderr.read()}")
    return json.loads(line)


@pytest.fixture
def holders(tmp_path):
    started = []
    yield started
    (tmp_path / "stop").touch()
    for process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_concurrent_jobs_never_share_a_gpu(tmp_path, holders):
    holders.extend(_start(tmp_path, "0,1,2,3") for _ in range(4))
    reports = [_report(process) for process in holders]
    claimed = [report["claim"]["device"] for report in reports]
    assert sorted(claimed) == ["0", "1", "2", "3"]
    for report in reports:
        assert report["claim"]["source"] == "lock" and not report["torch_imported"]
        assert report["cuda_visible_devices"] == report["claim"]["device"]  # the job sees its GPU alone
        assert report["claim"]["visible"] == ["0", "1", "2", "3"]


def test_a_claimant_waits_for_a_free_gpu_then_times_out_with_the_holders_named(tmp_path, holders):
    holders.extend(_start(tmp_path, "0,1") for _ in range(2))
    reports = [_report(process) for process in holders]
    pids = [str(process.pid) for process in holders]
    assert sorted(r["claim"]["device"] for r in reports) == ["0", "1"]
    started = time.monotonic()
    with pytest.raises(GpuClaimTimeout) as error:
        claim_gpu("auto", lock_dir=tmp_path / "locks", timeout_s=0.5, poll_s=0.05, devices=["0", "1"], environ={})
    assert time.monotonic() - started >= 0.5
    message = str(error.value)
    assert "all 2 visible GPU(s) (0,1)" in message and all(f"pid {pid}" in message for pid in pids)
    assert "--resources gpu=N" in message


def test_a_waiting_claimant_gets_the_gpu_a_finished_job_releases(tmp_path, holders):
    holders.append(_start(tmp_path, "0"))
    assert _report(holders[0])["claim"]["device"] == "0"
    waiting = _start(tmp_path, "0", timeout_s=30.0)
    holders.append(waiting)
    time.sleep(0.5)
    assert waiting.poll() is None  # still waiting: the only GPU is held
    holders[0].send_signal(signal.SIGTERM)
    holders[0].wait(10)
    report = _report(waiting)
    assert report["claim"]["device"] == "0" and report["claim"]["waited_s"] > 0


def test_a_killed_job_frees_its_gpu(tmp_path, holders):
    holders.append(_start(tmp_path, "5"))
    assert _report(holders[0])["claim"]["device"] == "5"
    with pytest.raises(GpuClaimTimeout):
        claim_gpu("auto", lock_dir=tmp_path / "locks", timeout_s=0.2, poll_s=0.05, devices=["5"], environ={})
    holders[0].send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
    holders[0].wait(10)
    environ = {}
    with claim_gpu("auto", lock_dir=tmp_path / "locks", timeout_s=5, devices=["5"], environ=environ,
                   release_at_exit=False) as claim:
        assert claim.device == "5" and claim.held and environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert not claim.held


def test_release_lets_the_next_claim_in_at_once(tmp_path):
    first = claim_gpu(lock_dir=tmp_path, timeout_s=0, devices=["0"], environ={}, release_at_exit=False)
    with pytest.raises(GpuClaimTimeout):
        claim_gpu(lock_dir=tmp_path, timeout_s=0, devices=["0"], environ={}, release_at_exit=False)
    first.release()
    first.release()  # idempotent
    second = claim_gpu(lock_dir=tmp_path, timeout_s=0, devices=["0"], environ={}, release_at_exit=False)
    assert second.device == "0"
    second.release()


def test_slurm_assignment_is_kept(tmp_path):
    environ = {"SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": "3"}
    claim = claim_gpu("auto", lock_dir=tmp_path, devices=["0", "1", "2", "3"], environ=environ)
    assert claim.source == "slurm" and claim.device == "3" and not claim.held
    assert environ["CUDA_VISIBLE_DEVICES"] == "3" and "CUDA_DEVICE_ORDER" not in environ
    assert not list(tmp_path.iterdir())  # nothing locked
    assert json.loads(environ[devices.CLAIM_ENV])["source"] == "slurm"
    only_job_gpus = {"SLURM_JOB_ID": "4243", "SLURM_JOB_GPUS": "1,2"}
    claim = claim_gpu("cuda", lock_dir=tmp_path, devices=["0", "1", "2"], environ=only_job_gpus)
    assert claim.source == "slurm" and claim.visible == ["1", "2"]
    assert "CUDA_VISIBLE_DEVICES" not in only_job_gpus


@pytest.mark.parametrize(
    "device, gpus, reason",
    [("cpu", ["0"], "training device is cpu"), ("cuda:1", ["0", "1"], "names its GPU explicitly"),
     ("auto", [], "no GPU visible")],
)
def test_nothing_is_claimed_without_a_gpu_to_choose(tmp_path, device, gpus, reason):
    environ = {}
    claim = claim_gpu(device, lock_dir=tmp_path, devices=gpus, environ=environ)
    assert claim.source == "none" and claim.device is None and reason in claim.reason
    assert "CUDA_VISIBLE_DEVICES" not in environ
    assert json.loads(environ[devices.CLAIM_ENV])["source"] == "none"


def test_visible_gpus_from_the_environment_or_the_driver(monkeypatch):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == (["2", "3"], "CUDA_VISIBLE_DEVICES")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""})[0] == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"})[0] == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"})[0] == ["GPU-aa", "GPU-bb"]
    monkeypatch.setattr(devices, "_query_gpus", lambda: ["0", "1"])
    assert visible_gpus({}) == (["0", "1"], "NVML / nvidia-smi")


def test_ids_from_the_driver_get_pci_bus_order(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_query_gpus", lambda: ["0", "1"])
    environ = {}
    with claim_gpu("auto", lock_dir=tmp_path, environ=environ, release_at_exit=False) as claim:
        assert claim.device == "0" and environ["CUDA_VISIBLE_DEVICES"] == "0"
        # NVML and nvidia-smi number GPUs by PCI bus; CUDA must agree for "0" to be the same GPU.
        assert environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert json.loads(environ[devices.CLAIM_ENV])["cuda_visible_devices"] == "0"


def test_lock_folder_from_the_environment(tmp_path):
    assert devices.default_lock_dir({devices.LOCK_DIR_ENV: str(tmp_path)}) == tmp_path
    assert "leanmed-gpu-locks" in str(devices.default_lock_dir({}))


def test_provenance_records_the_claim(monkeypatch):
    from leanmed.train.measure import provenance

    monkeypatch.setenv(devices.CLAIM_ENV, json.dumps({"source": "lock", "device": "1"}))
    assert provenance("abc", "cpu")["gpu_claim"] == {"source": "lock", "device": "1"}
    monkeypatch.delenv(devices.CLAIM_ENV)
    assert provenance("abc", "cpu")["gpu_claim"] is None
