"""Stand-ins for the SLURM commands that snakemake-executor-plugin-slurm calls, for tests without a cluster.

Each command of this folder (``sbatch``, ``srun``, ``sacct``, ``squeue``, ``scancel``, ``sinfo``, ``scontrol``,
``sacctmgr``, ``sshare``) is a small script that calls :func:`main` with its own name. Every call is appended, as one
JSON line ``{"command": ..., "argv": [...], ...}``, to the file named by the environment variable
``STANDIN_SLURM_LOG`` (required; its name does not start with ``SLURM_`` because the jobstep executor drops those
variables before it calls srun). That file is also the stand-in cluster's job table:

* ``sbatch`` gives the job the next id, logs ``{"event": "submit", "jobid", "name", "comment", "state": "RUNNING"}``,
  runs the job synchronously (the ``--wrap`` command, or the script from a path or stdin, through ``/bin/sh``) in the
  ``-D`` folder with SLURM's job variables set and its output in ``--output`` (``%j``, ``%A``, ``%a`` replaced),
  logs ``{"event": "end", "jobid", "state": "COMPLETED" | "FAILED", "returncode"}`` and prints the id
  (``--parsable``). Array jobs (``--array=A-B``) run each task in turn as ``<id>_<task>``. With
  ``STANDIN_SLURM_FAIL_ONCE=SUBSTRING:STATE`` the first job whose ``--comment`` (``rule_<rule>_wildcards_...``)
  contains SUBSTRING does not run and ends in STATE (e.g. OUT_OF_MEMORY, TIMEOUT), as a retry test needs.
* ``sacct`` and ``squeue`` answer the status queries of the plugin (``<id>|<STATE>`` lines for the jobs of the
  queried job name), ``sacct`` also the account guess and the node query.
* ``srun`` (called inside a job by the jobstep executor) drops its options and runs the command in place.
* ``scancel`` marks jobs CANCELLED; ``sinfo``, ``scontrol``, ``sacctmgr`` and ``sshare`` describe a cluster with a
  default partition ``standin_cpu`` (plus ``standin_gpu``), MinJobAge 300 s and the accounts in
  ``STANDIN_SLURM_ACCOUNTS`` (comma-separated, default ``standin_account``).

Only the standard library is used: the scripts run under any Python 3.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

FIRST_JOB_ID = 1000
PARTITIONS = ("standin_cpu", "standin_gpu")  # the first is the default partition
NODE = "standin-node-1"

#: sbatch options that take a value as the next argument (all others are flags, or ``--name=value``).
SBATCH_VALUE_OPTIONS = {
    "-A": "account",
    "--account": "account",
    "-p": "partition",
    "--partition": "partition",
    "-t": "time",
    "--time": "time",
    "-C": "constraint",
    "--constraint": "constraint",
    "-J": "job-name",
    "--job-name": "job-name",
    "-o": "output",
    "--output": "output",
    "-e": "error",
    "--error": "error",
    "-D": "chdir",
    "--chdir": "chdir",
    "-M": "clusters",
    "--clusters": "clusters",
    "-c": "cpus-per-task",
    "-n": "ntasks",
    "-N": "nodes",
    "-G": "gpus",
    "-a": "array",
    "--mem": "mem",
    "--mem-per-cpu": "mem-per-cpu",
    "--comment": "comment",
    "--wrap": "wrap",
    "--gres": "gres",
    "--gpus": "gpus",
    "--qos": "qos",
}


def log_path() -> Path:
    path = os.environ.get("STANDIN_SLURM_LOG")
    if not path:
        sys.stderr.write("slurm stand-in: set STANDIN_SLURM_LOG to the file that records the calls\n")
        sys.exit(2)
    return Path(path)


@contextmanager
def locked_log():
    """The call log, opened for appending under an exclusive lock (two submissions can run at once)."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def append(record: dict) -> None:
    with locked_log() as handle:
        handle.write(json.dumps(record) + "\n")


def read_records() -> list[dict]:
    path = log_path()
    if not path.exists():
        return []
    with locked_log() as handle:
        handle.seek(0)
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


def job_table() -> dict[str, dict]:
    """Job id -> {"name", "state"}: the latest state the log records for each job (or array task)."""
    jobs: dict[str, dict] = {}
    for record in read_records():
        if record.get("event") == "submit":
            jobs[record["jobid"]] = {"name": record.get("name", ""), "state": record["state"]}
        elif record.get("event") in {"end", "cancel"} and record["jobid"] in jobs:
            jobs[record["jobid"]]["state"] = record["state"]
    return jobs


def parse_sbatch(argv: list[str]) -> tuple[dict, list[str]]:
    """Options (canonical long names, flags as True) and positional arguments of an sbatch call."""
    options: dict = {}
    positional: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if positional:  # everything after the script path belongs to the script
            positional.append(arg)
        elif arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            options[SBATCH_VALUE_OPTIONS.get(name, name[2:])] = value
        elif arg in SBATCH_VALUE_OPTIONS:
            index += 1
            options[SBATCH_VALUE_OPTIONS[arg]] = argv[index]
        elif re.match(r"^-[A-Za-z]\S+$", arg) and arg[:2] in SBATCH_VALUE_OPTIONS:  # -A acc written as -Aacc
            options[SBATCH_VALUE_OPTIONS[arg[:2]]] = arg[2:]
        elif arg.startswith("-"):
            options[arg.lstrip("-")] = True
        else:
            positional.append(arg)
        index += 1
    return options, positional


def run_job(command: list[str], script: str | None, options: dict, jobid: str, task: str | None) -> int:
    """Run one job (or array task) to its end, as SLURM would on a node; return its exit status."""
    env = dict(os.environ)
    workdir = options.get("chdir") or os.getcwd()
    cpus = options.get("cpus-per-task") or options.get("cpus-per-gpu") or "1"
    env.update(
        SLURM_JOB_ID=jobid,
        SLURM_JOBID=jobid,
        SLURM_JOB_NAME=str(options.get("job-name", "")),
        SLURM_SUBMIT_DIR=os.getcwd(),
        SLURM_CPUS_PER_TASK=str(cpus),
        SLURM_CPUS_ON_NODE=str(cpus),
        SLURM_JOB_NODELIST=NODE,
        SLURM_NNODES="1",
        SLURM_JOB_PARTITION=str(options.get("partition") or PARTITIONS[0]),
    )
    if options.get("gpus"):
        env["SLURM_GPUS"] = str(options["gpus"]).split(":")[-1]
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID=jobid, SLURM_ARRAY_TASK_ID=task)
    output = str(options.get("output") or os.path.join(workdir, "slurm-%j.out"))
    step_id = jobid if task is None else f"{jobid}_{task}"
    output = output.replace("%A", jobid).replace("%a", task or "").replace("%j", step_id)
    output_path = Path(workdir, output)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with open(output_path, "a", encoding="utf-8") as out:
        process = subprocess.run(
            command, input=script, text=True, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return process.returncode


def sbatch(argv: list[str]) -> int:
    options, positional = parse_sbatch(argv)
    script = None
    if "wrap" in options:
        command = ["/bin/sh", "-c", options["wrap"]]
    elif positional:
        path = positional[0]
        script = sys.stdin.read() if path in {"-", "/dev/stdin"} else Path(path).read_text()
        command = ["/bin/sh", "-s", *positional[1:]]
    else:
        script = sys.stdin.read()
        command = ["/bin/sh", "-s"]
    name = str(options.get("job-name", ""))
    comment = str(options.get("comment", ""))
    with locked_log() as handle:  # allocate the id and record the submission atomically
        handle.seek(0)
        submitted = [json.loads(line) for line in handle.read().splitlines() if line.strip()]
        ids = [int(r["jobid"].split("_")[0]) for r in submitted if r.get("event") == "submit"]
        jobid = str(max(ids, default=FIRST_JOB_ID - 1) + 1)
        injected_state = failure_to_inject(comment, submitted)
        tasks = [None]
        if "array" in options:
            first, _, last = str(options["array"]).partition("-")
            tasks = [str(t) for t in range(int(first), int(last or first) + 1)]
        handle.write(json.dumps({"command": "sbatch", "argv": argv, "options": options, "event": "call"}) + "\n")
        for task in tasks:
            task_id = jobid if task is None else f"{jobid}_{task}"
            record = {
                "command": "sbatch",
                "event": "submit",
                "jobid": task_id,
                "name": name,
                "comment": options.get("comment"),
                "state": "RUNNING",
                "time": time.time(),
            }
            handle.write(json.dumps(record) + "\n")
    for task in tasks:
        task_id = jobid if task is None else f"{jobid}_{task}"
        started = time.time()
        if injected_state:  # the job "ran" and ended in the injected state, without running its command
            returncode, state = None, injected_state
        else:
            returncode = run_job(command, script, options, jobid, task)
            state = "COMPLETED" if returncode == 0 else "FAILED"
        append(
            {
                "command": "sbatch",
                "event": "end",
                "jobid": task_id,
                "comment": comment,
                "state": state,
                "returncode": returncode,
                "injected": bool(injected_state),
                "seconds": round(time.time() - started, 3),
                "time": time.time(),
            }
        )
    print(jobid if "parsable" in options else f"Submitted batch job {jobid}")
    return 0


def failure_to_inject(comment: str, earlier: list[dict]) -> str | None:
    """The state a job ends in without running, from ``STANDIN_SLURM_FAIL_ONCE=SUBSTRING:STATE`` (e.g.
    ``fp32_1_2:OUT_OF_MEMORY``): the first job whose --comment contains SUBSTRING ends in STATE, later ones run."""
    setting = os.environ.get("STANDIN_SLURM_FAIL_ONCE", "")
    if ":" not in setting:
        return None
    substring, state = setting.rsplit(":", 1)
    if substring not in comment:
        return None
    already = any(r.get("injected") and substring in str(r.get("comment", "")) for r in earlier)
    return None if already else state


def srun(argv: list[str]) -> int:
    """Inside a job: drop srun's options (the jobstep executor writes them all as -xN or --name=value) and run."""
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        index += 1
    command = argv[index:]
    append({"command": "srun", "argv": argv, "event": "call", "jobid": os.environ.get("SLURM_JOB_ID")})
    if not command:
        sys.stderr.write("srun stand-in: no command\n")
        return 1
    if command[:2] == ["sh", "-s"]:  # --slurm-jobstep-pass-command-as-script: the script comes on stdin
        return subprocess.run(command).returncode
    os.execvp(command[0], command)
    return 1  # not reached


def option_value(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def status_lines(argv: list[str]) -> str:
    name = option_value(argv, "--name")
    jobs = job_table()
    return "".join(f"{jobid}|{job['state']}\n" for jobid, job in jobs.items() if name is None or job["name"] == name)


def accounts() -> list[str]:
    return [a for a in os.environ.get("STANDIN_SLURM_ACCOUNTS", "standin_account").split(",") if a]


def sacct(argv: list[str]) -> int:
    joined = " ".join(argv)
    if "JobIdRaw,State" in joined:  # the plugin's status query
        sys.stdout.write(status_lines(argv))
    elif "Account" in joined:  # account guess: sacct -nu USER -o Account%256 (the plugin passes "| tail -1" as args)
        sys.stdout.write((accounts() or [""])[0] + "\n")
    elif "nodelist" in joined.lower():  # node of a NODE_FAIL job
        sys.stdout.write(NODE + "\n")
    # sacct -j ID.STEP --format=Reason: no reason to report
    return 0


def squeue(argv: list[str]) -> int:
    sys.stdout.write(status_lines(argv))
    return 0


def scancel(argv: list[str]) -> int:
    table = job_table()
    for jobid in (a for a in argv if not a.startswith("-")):
        if jobid in table:
            append({"command": "scancel", "event": "cancel", "jobid": jobid, "state": "CANCELLED"})
    return 0


def sinfo(argv: list[str]) -> int:
    sys.stdout.write("PARTITION\n" + PARTITIONS[0] + "*\n" + "\n".join(PARTITIONS[1:]) + "\n")
    return 0


def scontrol(argv: list[str]) -> int:
    if argv[:2] == ["show", "config"]:
        sys.stdout.write("MinJobAge               = 300 sec\nMaxArraySize            = 1001\n")
    elif argv[:2] == ["show", "partition"]:
        for partition in PARTITIONS:
            sys.stdout.write(f"PartitionName={partition}\n   MaxTime=2-00:00:00 MaxNodes=1 TotalCPUs=64\n\n")
    return 0


def sacctmgr(argv: list[str]) -> int:
    sys.stdout.write("".join(f"{account}\n" for account in accounts()))
    return 0


def sshare(argv: list[str]) -> int:
    return sacctmgr(argv)


COMMANDS = {
    "sbatch": sbatch,
    "srun": srun,
    "sacct": sacct,
    "squeue": squeue,
    "scancel": scancel,
    "sinfo": sinfo,
    "scontrol": scontrol,
    "sacctmgr": sacctmgr,
    "sshare": sshare,
}


def main(command: str, argv: list[str]) -> int:
    if command not in {"sbatch", "srun"}:  # these two log themselves, with more detail
        append({"command": command, "argv": argv, "event": "call"})
    return COMMANDS[command](argv)

