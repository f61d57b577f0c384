"""A real one-node SLURM on this machine: to try `profiles/slurm` before queueing a study on a cluster, and for the
tests that run the workflow through real `sbatch` (tests/test_slurm_real.py).

    python -m leanmed.cluster.local_slurm start [--state-dir DIR] [--gpus N] [--cpus N] [--memory-mb N] [--no-install]
    python -m leanmed.cluster.local_slurm status [--state-dir DIR]
    python -m leanmed.cluster.local_slurm stop [--state-dir DIR]
    eval "$(python -m leanmed.cluster.local_slurm env [--state-dir DIR])"   # SLURM_CONF for sbatch, squeue, snakemake

`start` (as root) installs Debian's SLURM packages when they are missing (slurmctld slurmd slurm-client munge, with
apt-get), writes a munge key and a one-node `slurm.conf` + `gres.conf` into the state folder (default
/tmp/leanmed-slurm, or $LEANMED_SLURM_DIR), starts munged, slurmctld and slurmd from there and waits until the node is
idle. No system daemon or configuration is touched: the cluster has its own munge socket and its own ports, and the
SLURM commands find it through SLURM_CONF=<state folder>/slurm.conf and a link /etc/slurm/slurm.conf to it (made only
where the machine has no slurm.conf: the jobs' `srun` reads that path). Starting a running cluster does nothing;
`stop` cancels its jobs, ends its three daemons and removes the link.

The node has this machine's CPUs and memory (at least MIN_NODE_CPUS and MIN_NODE_MEMORY_MB), and `--gpus` (default 2)
GPUs that are placeholder files: SLURM schedules `--gpus=1` jobs against them (two at a time with 2) but sets no
CUDA_VISIBLE_DEVICES, so the jobs run on the CPU. Memory is not a consumable resource (SelectTypeParameters=CR_Core)
and nothing is confined (no cgroups): SLURM checks each job's request against the node and records it (`scontrol
show job`), but jobs share the machine. `--memory-mb`/`--cpus` set other sizes of the node.
There is no accounting database: `sacct` answers "accounting storage is disabled", so Snakemake must query job
states with `squeue` (`slurm-status-command: squeue`, see docs/cluster.md). Finished jobs stay visible to squeue
and `scontrol show job` for MinJobAge = 3600 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_ENV = "LEANMED_SLURM_DIR"
DEFAULT_STATE_DIR = Path("/tmp/leanmed-slurm")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
DAEMONS = ("munged", "slurmctld", "slurmd")
# Not SLURM's defaults (6817, 6818), so a SLURM that the machine already runs is left alone.
CONTROLLER_PORT = 6917
NODE_PORT = 6918
MIN_JOB_AGE_S = 3600
# Where SLURM's commands look without SLURM_CONF. Snakemake's job step runs `srun` inside each job with SLURM_*
# variables removed (SLURM_CONF too), so the jobs find this cluster only there: a link to the state folder's
# slurm.conf, made only where no slurm.conf exists (a machine's own SLURM is never replaced) and removed by `stop`.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "local"
# Node states (sinfo) in which the node takes jobs.
READY_STATES = frozenset({"idle", "mixed", "allocated"})


class ClusterError(RuntimeError):
    """Why the local SLURM cannot start (not root, no apt-get, a daemon that does not come up, ...)."""


@dataclass(frozen=True)
class Layout:
    """Where the cluster's files live: everything under one state folder."""

    root: Path

    @property
    def slurm_conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.root / "gres.conf"  # SLURM reads gres.conf from the folder of slurm.conf

    @property
    def munge_key(self) -> Path:
        return self.root / "munge" / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def gpu_files(self) -> Path:
        return self.root / "gpus"

    def pid_file(self, daemon: str) -> Path:
        return self.root / "run" / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to use this cluster's sbatch, squeue, ..."""
        return {"SLURM_CONF": str(self.slurm_conf)}


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


#: The smallest node `start` declares unless told otherwise: profiles/slurm asks 16 GB for a training job (32 GB on its
#: retry) and the tests' training jobs 2-4 CPUs, and SLURM refuses at sbatch a job asking more than the node has.
#: Memory is recorded, not reserved (no cgroups), so a smaller machine still runs such jobs.
MIN_NODE_CPUS = 4
MIN_NODE_MEMORY_MB = 64000


def machine_resources() -> tuple[int, int]:
    """(CPUs, memory in MB) of this machine: what `nproc` and /proc/meminfo say."""
    cpus = len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as meminfo:
        total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return cpus, total_kb // 1024


def node_name() -> str:
    """The node's name in slurm.conf: this machine's short host name."""
    return socket.gethostname().split(".")[0]


def slurm_conf(layout: Layout, node: str, cpus: int, memory_mb: int, gpus: int) -> str:
    """A one-node slurm.conf: controller and node on this machine, no accounting, no cgroups."""
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    lines = [
        "# Written by leanmed.cluster.local_slurm: a one-node SLURM on this machine.",
        "ClusterName=leanmed-local",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={CONTROLLER_PORT}",
        f"SlurmdPort={NODE_PORT}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={layout.munge_socket}",
        f"StateSaveLocation={layout.root / 'ctld'}",
        f"SlurmdSpoolDir={layout.root / 'spool'}",
        f"SlurmctldPidFile={layout.pid_file('slurmctld')}",
        f"SlurmdPidFile={layout.pid_file('slurmd')}",
        f"SlurmctldLogFile={layout.log_file('slurmctld')}",
        f"SlurmdLogFile={layout.log_file('slurmd')}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # Finished jobs stay in squeue and `scontrol show job` for an hour (Snakemake reads their states there).
        f"MinJobAge={MIN_JOB_AGE_S}",
        # A job that is cancelled, requeued or out of time gets SIGTERM, then SIGKILL 5 s later (default 30 s).
        "KillWait=5",
        "ReturnToService=2",
        # The node's CPUs and memory as declared here, even where they exceed what slurmd finds.
        "SlurmdParameters=config_overrides",
        *(["GresTypes=gpu"] if gpus else []),
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]
    return "\n".join(lines)


def gres_conf(layout: Layout, node: str, gpus: int) -> str:
    """The node's GPUs: placeholder files, so SLURM can count and hand them out (it sets no CUDA_VISIBLE_DEVICES)."""
    if not gpus:
        return ""
    return f"NodeName={node} Name=gpu File={layout.gpu_files}/gpu[0-{gpus - 1}]\n"


# ------------------------------------------------------------------------------------------------------- processes
def _pid(layout: Layout, daemon: str) -> int | None:
    """The daemon's process id if its pid file names a live process, else None."""
    try:
        pid = int(layout.pid_file(daemon).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a pid reused by another program is not our daemon, nor is one that has exited (a zombie)
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return pid if name == daemon and state != "Z" else None


def _run(command: list[str], layout: Layout | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **(layout.environment() if layout else {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def node_state(layout: Layout) -> str | None:
    """The node's state as sinfo reports it (idle, mixed, allocated, down, ...), None if the controller is silent."""
    try:
        process = _run(["sinfo", "--noheader", "--Node", "--format=%T"], layout, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = process.stdout.split()
    return states[0].rstrip("*~#!%$@^-") if process.returncode == 0 and states else None


def status(state_dir: Path | None = None) -> dict:
    """Which of the cluster's daemons run (their pids) and the node's state."""
    layout = Layout(Path(state_dir or default_state_dir()))
    daemons = {daemon: _pid(layout, daemon) for daemon in DAEMONS}
    running = all(daemons.values())
    return {
        "state_dir": str(layout.root),
        "daemons": daemons,
        "node": node_state(layout) if running else None,
        "slurm_conf": str(layout.slurm_conf),
    }


def is_ready(report: dict) -> bool:
    return all(report["daemons"].values()) and report["node"] in READY_STATES


def missing_commands() -> list[str]:
    return [command for command in COMMANDS if not _which(command)]


def _which(command: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin")


def install() -> None:
    """Debian's SLURM and munge packages, with apt-get (the package lists are refreshed if the first try fails)."""
    if not shutil.which("apt-get"):
        raise ClusterError(f"SLURM is not installed ({', '.join(missing_commands())} missing) and there is no apt-get "
                           f"to install it: install {' '.join(PACKAGES)} yourself")
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    for step in ([command], [["apt-get", "update", "-q"], command]):
        for argv in step:
            process = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=900)
            if process.returncode:
                break
        else:
            return
    raise ClusterError(f"apt-get could not install {' '.join(PACKAGES)}:\n"
                       f"{process.stdout[-2000:]}{process.stderr[-2000:]}")


def write_files(layout: Layout, gpus: int, cpus: int | None, memory_mb: int | None) -> None:
    """The state folder: munge key (kept across starts), slurm.conf, gres.conf, GPU placeholders, empty spool dirs."""
    found_cpus, found_memory_mb = machine_resources()
    node = node_name()
    for folder in (layout.root, layout.munge_key.parent, layout.pid_file("x").parent, layout.log_file("x").parent,
                   layout.root / "ctld", layout.root / "spool", layout.gpu_files):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (layout.root, layout.munge_key.parent):
        folder.chmod(0o755)  # munged refuses folders others can write; others may use its socket
    if not layout.munge_key.exists():
        layout.munge_key.write_bytes(os.urandom(1024))
    layout.munge_key.chmod(0o400)
    for index in range(gpus):
        (layout.gpu_files / f"gpu{index}").touch()
    cpus = cpus or max(found_cpus, MIN_NODE_CPUS)
    memory_mb = memory_mb or max(found_memory_mb, MIN_NODE_MEMORY_MB)
    layout.slurm_conf.write_text(slurm_conf(layout, node, cpus, memory_mb, gpus))
    layout.gres_conf.write_text(gres_conf(layout, node, gpus))


def _link_system_conf(layout: Layout, system_conf: Path = SYSTEM_CONF) -> None:
    """Make `system_conf` a link to this cluster's slurm.conf, unless it is another SLURM's (then ClusterError)."""
    if system_conf.is_symlink() and system_conf.resolve() == layout.slurm_conf.resolve():
        return
    if system_conf.exists() or system_conf.is_symlink():
        raise ClusterError(f"{system_conf} belongs to another SLURM on this machine: the jobs' srun would use it, not "
                           f"{layout.slurm_conf}; try the cluster path on a machine without a SLURM of its own")
    system_conf.parent.mkdir(parents=True, exist_ok=True)
    system_conf.symlink_to(layout.slurm_conf)


def _unlink_system_conf(layout: Layout, system_conf: Path = SYSTEM_CONF) -> None:
    if system_conf.is_symlink() and Path(os.readlink(system_conf)) == layout.slurm_conf:
        system_conf.unlink()


def _start_daemon(layout: Layout, daemon: str, argv: list[str]) -> None:
    if _pid(layout, daemon):
        return
    process = subprocess.run(
        [_which(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, **layout.environment()), stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while not _pid(layout, daemon) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _pid(layout, daemon):
        raise ClusterError(f"{daemon} did not start ({' '.join(argv)}, exit {process.returncode}):\n"
                           f"{process.stdout[-1500:]}{process.stderr[-1500:]}\n{_log_tail(layout, daemon)}")


def _log_tail(layout: Layout, daemon: str, lines: int = 15) -> str:
    try:
        text = layout.log_file(daemon).read_text(errors="replace")
    except OSError:
        return f"(no {layout.log_file(daemon)})"
    return f"{layout.log_file(daemon)}:\n" + "\n".join(text.splitlines()[-lines:])


def start(state_dir: Path | None = None, gpus: int = 2, cpus: int | None = None, memory_mb: int | None = None,
          install_missing: bool = True, timeout_s: float = 60) -> Layout:
    """Start the cluster (install SLURM first if allowed and needed) and wait until its node is idle.

    Raises ClusterError saying why where it cannot start. A cluster already running is left as it is."""
    layout = Layout(Path(state_dir or default_state_dir()))
    if is_ready(status(layout.root)):
        return layout
    if os.geteuid() != 0:
        raise ClusterError("the local SLURM needs root (slurmd runs jobs as their users); run it as root")
    if missing_commands():
        if not install_missing:
            raise ClusterError(f"SLURM is not installed ({', '.join(missing_commands())} missing): "
                               f"apt-get install {' '.join(PACKAGES)}")
        install()
    if not all(_pid(layout, daemon) for daemon in DAEMONS):
        stop(layout.root)  # what is left of an earlier start that died half-way
        write_files(layout, gpus, cpus, memory_mb)
    try:
        _link_system_conf(layout)
        _start_daemon(layout, "munged", [
            "munged", "--force", f"--key-file={layout.munge_key}", f"--socket={layout.munge_socket}",
            f"--pid-file={layout.pid_file('munged')}", f"--log-file={layout.log_file('munged')}",
            f"--seed-file={layout.munge_key.parent / 'munged.seed'}",
        ])
        # -c: a clean start, no jobs kept from an earlier run of this cluster.
        _start_daemon(layout, "slurmctld", ["slurmctld", "-c", "-f", str(layout.slurm_conf)])
        _start_daemon(layout, "slurmd", ["slurmd", "-f", str(layout.slurm_conf)])
    except ClusterError:
        stop(layout.root)  # no daemon of a half-started cluster is left running
        raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = node_state(layout)
        if state in READY_STATES:
            return layout
        if state in {"down", "drained", "draining"}:
            _run(["scontrol", "update", f"nodename={node_name()}", "state=resume"], layout)
        time.sleep(0.5)
    report = status(layout.root)
    stop(layout.root)
    raise ClusterError(f"the node did not become idle within {timeout_s:.0f} s (state {report['node']}, daemons "
                       f"{report['daemons']}):\n{_log_tail(layout, 'slurmctld')}\n{_log_tail(layout, 'slurmd')}")


def _cancel_jobs(layout: Layout, timeout_s: float = 30) -> None:
    """Cancel every job of the cluster and wait until none runs (their processes have ended)."""
    if node_state(layout) is None:
        return
    _run(["scancel", "--full", f"--partition={PARTITION}"], layout)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = _run(["squeue", "--noheader", "--states=RUNNING,COMPLETING,CONFIGURING,SUSPENDED", "--format=%i"],
                      layout)
        if listed.returncode or not listed.stdout.strip():
            return
        time.sleep(0.5)


def stop(state_dir: Path | None = None, timeout_s: float = 20) -> None:
    """Cancel the cluster's jobs and end its daemons (SIGTERM, then SIGKILL); nothing of it keeps running."""
    layout = Layout(Path(state_dir or default_state_dir()))
    if _pid(layout, "slurmctld") and _pid(layout, "slurmd"):
        _cancel_jobs(layout)
    for daemon in ("slurmd", "slurmctld", "munged"):
        pid = _pid(layout, daemon)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid(layout, daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid(layout, daemon):
            os.kill(pid, signal.SIGKILL)
        layout.pid_file(daemon).unlink(missing_ok=True)
    _unlink_system_conf(layout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanmed.cluster.local_slurm", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status", "env"))
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"the cluster's files (default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})")
    parser.add_argument("--gpus", type=int, default=2, help="placeholder GPUs of the node (default 2)")
    parser.add_argument("--cpus", type=int, default=None,
                        help=f"CPUs of the node (default: this machine's, at least {MIN_NODE_CPUS})")
    parser.add_argument("--memory-mb", type=int, default=None,
                        help=f"memory of the node (default: this machine's, at least {MIN_NODE_MEMORY_MB})")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing missing packages")
    args = parser.parse_args(argv)
    layout = Layout(Path(args.state_dir or default_state_dir()))
    if args.action == "env":
        print("\n".join(f"export {name}={value}" for name, value in layout.environment().items()))
        return 0
    if args.action == "stop":
        stop(layout.root)
        print(f"local SLURM in {layout.root}: stopped")
        return 0
    if args.action == "status":
        report = status(layout.root)
        print(f"local SLURM in {layout.root}: daemons {report['daemons']}, node {report['node'] or '-'}")
        return 0 if is_ready(report) else 1
    started = time.monotonic()
    try:
        start(layout.root, gpus=args.gpus, cpus=args.cpus, memory_mb=args.memory_mb,
              install_missing=not args.no_install)
    except ClusterError as error:
        print(f"local SLURM could not start: {error}", file=sys.stderr)
        return 1
    print(f"local SLURM in {layout.root}: node idle after {time.monotonic() - started:.1f} s. For sbatch, squeue and "
          f"snakemake in this shell:\n  export SLURM_CONF={layout.slurm_conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
