"""leanmed.cluster.local_slurm without starting anything: the configuration it writes, the link it makes and refuses to
make, why it cannot start, and its command line. (tests/test_slurm_real.py starts the real cluster.)"""
import os
import subprocess
import sys
import time

import pytest

from leanmed.cluster import local_slurm
from leanmed.cluster.local_slurm import ClusterError, Layout


def conf_settings(text: str) -> dict[str, str]:
    """Key -> value of a slurm.conf's one-setting lines (NodeName/PartitionName lines keyed by their first pair)."""
    settings = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def test_the_config_is_one_node_with_this_machines_resources_gpus_and_no_accounting(tmp_path):
    layout = Layout(tmp_path)
    settings = conf_settings(local_slurm.slurm_conf(layout, "node1", cpus=8, memory_mb=32000, gpus=2))
    assert settings["NodeName"] == "node1 NodeAddr=127.0.0.1 CPUs=8 RealMemory=32000 Gres=gpu:2 State=UNKNOWN"
    assert settings["PartitionName"].startswith("local Nodes=node1 Default=YES")
    assert settings["GresTypes"] == "gpu"
    assert settings["AccountingStorageType"] == "accounting_storage/none"
    assert settings["ProctrackType"] == "proctrack/linuxproc" and settings["TaskPlugin"] == "task/none"
    assert settings["SelectType"] == "select/cons_tres" and settings["SelectTypeParameters"] == "CR_Core"
    assert int(settings["MinJobAge"]) >= 600  # finished jobs stay in squeue / scontrol show job
    assert settings["AuthInfo"] == f"socket={layout.munge_socket}"  # its own munged, not the system's
    assert (settings["SlurmctldPort"], settings["SlurmdPort"]) != ("6817", "6818")  # not a system SLURM's ports
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile", "SlurmdLogFile"):
        assert settings[key].startswith(str(tmp_path)), key
    assert local_slurm.gres_conf(layout, "node1", 2) == f"NodeName=node1 Name=gpu File={tmp_path}/gpus/gpu[0-1]\n"


def test_without_gpus_the_node_has_no_gres(tmp_path):
    text = local_slurm.slurm_conf(Layout(tmp_path), "node1", cpus=2, memory_mb=4000, gpus=0)
    assert "Gres" not in text and local_slurm.gres_conf(Layout(tmp_path), "node1", 0) == ""


def test_write_files_uses_the_machines_cpus_and_memory_at_least_the_minimum_unless_given(tmp_path):
    layout = Layout(tmp_path / "state")
    local_slurm.write_files(layout, gpus=2, cpus=None, memory_mb=None)
    cpus, memory_mb = local_slurm.machine_resources()
    cpus, memory_mb = max(cpus, local_slurm.MIN_NODE_CPUS), max(memory_mb, local_slurm.MIN_NODE_MEMORY_MB)
    node = conf_settings(layout.slurm_conf.read_text())["NodeName"]
    assert f"CPUs={cpus} RealMemory={memory_mb} Gres=gpu:2" in node
    assert sorted(path.name for path in layout.gpu_files.iterdir()) == ["gpu0", "gpu1"]
    key = layout.munge_key.read_bytes()
    assert len(key) == 1024 and layout.munge_key.stat().st_mode & 0o077 == 0
    local_slurm.write_files(layout, gpus=1, cpus=16, memory_mb=64000)
    assert layout.munge_key.read_bytes() == key  # kept across starts
    assert "CPUs=16 RealMemory=64000 Gres=gpu:1" in layout.slurm_conf.read_text()


def test_the_default_conf_path_becomes_a_link_but_another_slurms_conf_is_left_alone(tmp_path):
    layout = Layout(tmp_path / "state")
    system_conf = tmp_path / "etc/slurm/slurm.conf"
    local_slurm._link_system_conf(layout, system_conf)
    assert system_conf.is_symlink() and os.readlink(system_conf) == str(layout.slurm_conf)
    local_slurm._link_system_conf(layout, system_conf)  # again: nothing to do
    local_slurm._unlink_system_conf(layout, system_conf)
    assert not system_conf.exists() and not system_conf.is_symlink()

    system_conf.write_text("ClusterName=theirs\n")
    with pytest.raises(ClusterError, match="belongs to another SLURM"):
        local_slurm._link_system_conf(layout, system_conf)
    local_slurm._unlink_system_conf(layout, system_conf)
    assert system_conf.read_text() == "ClusterName=theirs\n"


def test_it_says_why_it_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(local_slurm.os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="needs root"):
        local_slurm.start(tmp_path)
    monkeypatch.setattr(local_slurm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(local_slurm, "missing_commands", lambda: ["slurmd"])
    with pytest.raises(ClusterError, match="not installed.*slurmd.*apt-get install slurmctld slurmd slurm-client munge"):
        local_slurm.start(tmp_path, install_missing=False)
    monkeypatch.setattr(local_slurm.shutil, "which", lambda command, path=None: None)
    with pytest.raises(ClusterError, match="no apt-get"):
        local_slurm.install()


def test_a_pid_file_counts_only_for_a_live_process_of_that_name(tmp_path):
    layout = Layout(tmp_path)
    layout.pid_file("slurmd").parent.mkdir(parents=True)
    assert local_slurm._pid(layout, "slurmd") is None  # no pid file
    layout.pid_file("slurmd").write_text(f"{os.getpid()}\n")
    assert local_slurm._pid(layout, "slurmd") is None  # this is python, not slurmd
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        layout.pid_file("sleep").write_text(str(sleeper.pid))
        deadline = time.monotonic() + 5
        while local_slurm._pid(layout, "sleep") is None and time.monotonic() < deadline:  # until it has exec'd sleep
            time.sleep(0.05)
        assert local_slurm._pid(layout, "sleep") == sleeper.pid
        sleeper.kill()
        deadline = time.monotonic() + 5
        while local_slurm._pid(layout, "sleep") and time.monotonic() < deadline:  # a zombie until waited for
            time.sleep(0.05)
        assert local_slurm._pid(layout, "sleep") is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_status_and_env_of_a_cluster_that_is_not_running(tmp_path):
    report = local_slurm.status(tmp_path)
    assert report["daemons"] == {"munged": None, "slurmctld": None, "slurmd": None} and report["node"] is None
    assert not local_slurm.is_ready(report)
    command = [sys.executable, "-m", "leanmed.cluster.local_slurm"]
    process = subprocess.run([*command, "env", "--state-dir", str(tmp_path)], capture_output=True, text=True)
    assert process.stdout == f"export SLURM_CONF={tmp_path}/slurm.conf\n"
    process = subprocess.run([*command, "status", "--state-dir", str(tmp_path)], capture_output=True, text=True)
    assert process.returncode == 1 and "node -" in process.stdout
    local_slurm.stop(tmp_path)  # nothing to stop: no error
