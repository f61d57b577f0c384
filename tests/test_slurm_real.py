"""The SLURM profile (profiles/slurm) on a real SLURM: a one-node cluster on this machine (leanmed.cluster.local_slurm),
real sbatch, real Snakemake.

One tiny study (generated LIDC data, a small CNN, two seeds, CPU training) runs through `--profile profiles/slurm`
with the one line a cluster without accounting needs (`slurm-status-command: squeue`). Its training jobs ask for
`--gpus=1` from the node's two placeholder GPUs; while it runs, the test preempts the seed-1 training job
(`scontrol requeue`, after two epochs) and cancels the first attempt of the seed-2 training job (a failure). Then:
every job's CPUs, memory, time and GPUs as SLURM recorded them (`scontrol show job`) are the profile's; the requeued
run resumed from last.pt to the metrics of an uninterrupted local run; the cancelled one was retried as attempt 2 with
twice the memory while seed 1 kept running; and the study took at most three minutes.

The cluster needs root and Debian's SLURM packages (installed by the module where missing). Where it cannot start,
these tests are skipped with the reason, unless LEANMED_REQUIRE_SLURM=1 (CI), where that is a failure.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leanmed.cluster import local_slurm
from leanmed.demo import generate_lidc
from test_rerun_contract import stable
from test_slurm import FAST_POLLING, LIDC_PICKLE, TINY_STUDY
from workflow_helpers import copy_workflow, snakemake, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

REQUIRE_ENV = "LEANMED_REQUIRE_SLURM"
# The profile asks 16 GB per training job (32 GB on a retry) and 12 GB for lidc_labels; the node declares at least
# this much (memory is recorded, not reserved: jobs share the machine) and CPUs for two training jobs at once.
NODE_MEMORY_MB = local_slurm.MIN_NODE_MEMORY_MB  # the profile asks 16 GB per training job, 32 GB on a retry
NODE_CPUS = local_slurm.MIN_NODE_CPUS
STATUS_LINE = "# slurm-status-command: squeue"
MODEL = "test_resnet"  # a small CNN: epochs of a tenth of a second or more, so the requeue lands mid-training
STUDY = {
    **TINY_STUDY,
    "datasets": {"lidc": {"models": [MODEL]}},
    # last.pt after every epoch: the requeue's SIGTERM lands mid-epoch, which leaves the last.pt written before it (with
    # the default interval, none yet in so short a job: the requeued job would train afresh, to the same result).
    "training": {**TINY_STUDY["training"], "max_epochs": 25, "patience": 25, "lr": 1.0e-4, "num_workers": 1,
                 "checkpoint_interval_s": 0},
}
RUN = "results/runs/lidc/" + MODEL + "/fp32/s1/seed{seed}"
TARGETS = [f"{RUN.format(seed=seed)}/metrics.json" for seed in (1, 2)]
PREEMPTED, FAILING = 1, 2  # seeds
STUDY_LIMIT_S = 180


def comment_of(seed: int) -> str:
    """The plugin's --comment of a training job (rule_<rule>_wildcards_<values>)."""
    return f"rule_train_wildcards_lidc_{MODEL}_fp32_1_{seed}"


@pytest.fixture(scope="session")
def cluster():
    """The local SLURM, started here (and stopped at the end) unless it already runs; skipped where it cannot start."""
    required = os.environ.get(REQUIRE_ENV) == "1"
    layout = local_slurm.Layout(local_slurm.default_state_dir())
    already_running = local_slurm.is_ready(local_slurm.status(layout.root))
    started = time.monotonic()
    try:
        local_slurm.start(layout.root)  # a node of this machine's size, at least NODE_CPUS and NODE_MEMORY_MB
    except local_slurm.ClusterError as error:
        message = f"real-SLURM tests: the local SLURM cannot start here: {error}"
        if required:
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(message)
    print(f"local SLURM {'reused' if already_running else 'started'} in {time.monotonic() - started:.1f} s")
    node = scontrol_show("node")[0]
    if int(node["RealMemory"]) < NODE_MEMORY_MB or int(node["CPUTot"]) < NODE_CPUS:
        message = (f"real-SLURM tests: the running local SLURM in {layout.root} has a node smaller than "
                   f"{NODE_CPUS} CPUs / {NODE_MEMORY_MB} MB; stop it (python -m leanmed.cluster.local_slurm stop)")
        if required:
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(message)
    yield layout
    if not already_running:
        local_slurm.stop(layout.root)


def slurm(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    process = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, **local_slurm.Layout(local_slurm.default_state_dir()).environment()))
    assert process.returncode == 0 or not check, f"{' '.join(argv)}: {process.stderr}"
    return process


def scontrol_show(kind: str, *ids: str) -> list[dict[str, str]]:
    """`scontrol show <kind>` as one dict per entity (`--oneliner`: key=value pairs)."""
    entities = []
    for line in slurm("scontrol", "--oneliner", "show", kind, *ids).stdout.splitlines():
        if line.strip():
            entities.append(dict(re.findall(r"(\S+?)=(\S*)", line)))
    return entities


def queue() -> list[dict[str, str]]:
    """This cluster's jobs (running, pending and finished ones): id, comment (which rule), state, reason."""
    lines = slurm("squeue", "--noheader", "--states=all", "--format=%i|%k|%T|%r").stdout.splitlines()
    return [dict(zip(("id", "comment", "state", "reason"), line.split("|"))) for line in lines if line.strip()]


def epochs_done(workdir: Path, seed: int) -> int:
    epochs = workdir / RUN.format(seed=seed) / "epochs.csv"
    return max(0, len(epochs.read_text().splitlines()) - 1) if epochs.exists() else 0


def prepare(workdir: Path) -> Path:
    copy_workflow(workdir)
    write_config(workdir / "tiny.yaml", STUDY)
    generate_lidc(workdir / LIDC_PICKLE, n_patients=16, patches_per_patient=8, seed=3)
    return workdir


def drive(workdir: Path, controller: subprocess.Popen, timeout_s: float) -> dict:
    """While the study runs: requeue the seed-1 training job once it has two epochs (and release it at once: SLURM
    holds a requeued job for two minutes), cancel the first attempt of the seed-2 training job once it runs.
    A request SLURM turns down for the moment (a job still being launched) is made again at the next look."""
    events: dict = {}
    deadline = time.monotonic() + timeout_s
    while controller.poll() is None and time.monotonic() < deadline:
        jobs = queue()
        for job in jobs:
            if job["comment"] == comment_of(FAILING) and job["state"] == "RUNNING" and "cancelled" not in events:
                if slurm("scancel", job["id"], check=False).returncode == 0:
                    events["cancelled"] = job["id"]
                    events["running_at_cancel"] = {j["comment"]: j["state"] for j in jobs}
            if job["comment"] == comment_of(PREEMPTED):
                if job["state"] == "RUNNING" and "requeued" not in events and epochs_done(workdir, PREEMPTED) >= 2:
                    epochs = epochs_done(workdir, PREEMPTED)
                    if slurm("scontrol", "requeue", job["id"], check=False).returncode == 0:
                        events["requeued"] = job["id"]
                        events["epochs_before_requeue"] = epochs
                if job["id"] == events.get("requeued") and job["state"] == "PENDING" and job["reason"] == "BeginTime":
                    slurm("scontrol", "update", f"jobid={job['id']}", "StartTime=now")
                    events["released"] = True
        time.sleep(0.2)
    return events


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_real")
    workdir = prepare(root / "study")
    profile = workdir / "profiles/slurm/config.yaml"
    text = profile.read_text()
    assert text.count(STATUS_LINE) == 1, f"profiles/slurm/config.yaml no longer has the line {STATUS_LINE!r}"
    profile.write_text(text.replace(STATUS_LINE, STATUS_LINE.lstrip("# ")))  # the user's step (docs/cluster.md)
    log = root / "controller.log"
    started = time.monotonic()
    with open(log, "w") as output:
        controller = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *TARGETS, "--profile", "profiles/slurm", "--configfile", "tiny.yaml",
             "--cores", "2", *FAST_POLLING],
            cwd=workdir, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ, **cluster.environment()),
        )
        try:
            events = drive(workdir, controller, timeout_s=2 * STUDY_LIMIT_S)
            controller.wait(timeout=60)
        finally:
            if controller.poll() is None:
                controller.terminate()  # Snakemake cancels its jobs
                controller.wait(timeout=60)
    wall_s = time.monotonic() - started
    print(f"tiny study through the local SLURM: {wall_s:.0f} s")
    assert controller.returncode == 0, log.read_text()[-8000:]
    # This study's jobs only (a cluster that was already running may list earlier ones).
    jobs = {job["JobId"]: job for job in scontrol_show("job") if job["WorkDir"] == str(workdir)}
    return dict(workdir=workdir, events=events, wall_s=wall_s, jobs=jobs, log=log)


def jobs_of(study, rule: str) -> list[dict[str, str]]:
    return sorted((job for job in study["jobs"].values() if job["Comment"].startswith(f"rule_{rule}")),
                  key=lambda job: int(job["JobId"]))


def test_the_tiny_study_runs_through_real_sbatch_within_three_minutes(study):
    for target in TARGETS:
        assert json.loads((study["workdir"] / target).read_text())["status"] in {"completed", "diverged"}
    assert (study["workdir"] / "results/lidc/split.csv").exists()
    ran = [job["Comment"].split("_wildcards_")[0] for job in study["jobs"].values() if job["JobState"] == "COMPLETED"]
    assert sorted(ran) == ["rule_lidc_labels", "rule_split", "rule_train", "rule_train"]
    assert study["wall_s"] <= STUDY_LIMIT_S, f"{study['wall_s']:.0f} s"


def test_slurm_records_the_profiles_cpus_memory_time_and_gpus(study):
    for job in jobs_of(study, "train"):
        assert job["TresPerJob"] == "gres:gpu:1"  # sbatch --gpus=1 from the rule's gpu resource
        threads, workers = STUDY["training"]["threads"], STUDY["training"]["num_workers"]
        assert job["NumCPUs"] == job["CPUs/Task"] == str(threads + workers)
        # 16 GB for models without an entry, times the attempt: the seed-2 job's second (its first was cancelled) asks 32
        attempt = 2 if job["Comment"] == comment_of(FAILING) and job["JobId"] != study["events"]["cancelled"] else 1
        assert job["MinMemoryNode"] == f"{16000 * attempt}M"
        assert job["TimeLimit"] == "04:00:00"  # 240 minutes
        assert job["Requeue"] == "1"  # slurm-requeue: true
    for rule, memory_mb in (("lidc_labels", 12000), ("split", 4000)):
        (job,) = jobs_of(study, rule)
        assert "TresPerJob" not in job and "gpu" not in job.get("TresPerNode", ""), job
        assert job["NumCPUs"] == "1"
        assert job["MinMemoryNode"] == f"{memory_mb}M"
        assert job["TimeLimit"] == "00:30:00"


def test_a_preempted_training_job_is_requeued_and_resumes_to_an_uninterrupted_runs_metrics(study, tmp_path):
    events = study["events"]
    assert events.get("requeued") and events.get("released"), events
    job = study["jobs"][events["requeued"]]
    assert job["Restarts"] == "1" and job["JobState"] == "COMPLETED", job
    resumed = json.loads((study["workdir"] / TARGETS[0]).read_text())
    assert resumed["training"]["resumed"] is True
    assert 2 <= events["epochs_before_requeue"] < STUDY["training"]["max_epochs"]

    reference_dir = prepare(tmp_path / "uninterrupted")
    snakemake(reference_dir, TARGETS[0], "--cores", "2", "--configfile", "tiny.yaml")
    reference = json.loads((reference_dir / TARGETS[0]).read_text())
    assert reference["training"]["resumed"] is False
    assert stable(resumed) == stable(reference)
    predictions = RUN.format(seed=PREEMPTED) + "/predictions.csv"
    assert (study["workdir"] / predictions).read_text() == (reference_dir / predictions).read_text()


def test_a_failed_training_job_is_retried_with_more_memory_while_other_jobs_go_on(study):
    events = study["events"]
    assert events.get("cancelled"), events
    attempts = [job for job in jobs_of(study, "train") if job["Comment"] == comment_of(FAILING)]
    assert [job["JobState"] for job in attempts] == ["CANCELLED", "COMPLETED"]
    assert [job["MinMemoryNode"] for job in attempts] == ["16000M", "32000M"]  # retries: 2, memory times the attempt
    # The other training job was queued or running when this one failed, and finished.
    assert events["running_at_cancel"].get(comment_of(PREEMPTED)) in {"PENDING", "RUNNING"}, events
    assert json.loads((study["workdir"] / TARGETS[1]).read_text())["status"] in {"completed", "diverged"}
