"""Helpers for tests that run real Snakemake on a copy of the workflow in a temporary folder."""
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "profiles", "envs")


def copy_workflow(destination):
    """Copy what a user's clone holds of the workflow (not data, results or the venv) into `destination`."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, destination / name)
    return destination


def write_config(path, overrides):
    Path(path).write_text(yaml.safe_dump(overrides, sort_keys=False))
    return path


def snakemake(workdir, *args, check=True, timeout=900):
    """Run Snakemake in `workdir` (its profiles/default applies, as for a user); return the finished process."""
    command = [sys.executable, "-m", "snakemake", *args]
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and process.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({process.returncode}):\n{process.stdout[-5000:]}\n{process.stderr[-8000:]}"
        )
    return process


def snakemake_with_edited_setting(workdir, setting, changes, *args):
    """Run Snakemake as if leanmed.train.registry defined `setting` with `changes` (an edit of the registry code)."""
    script = (
        "import dataclasses, sys, types\n"
        "import leanmed.train.registry as registry\n"
        f"edited = dataclasses.replace(registry.SETTINGS[{setting!r}], **{changes!r})\n"
        f"registry.SETTINGS = types.MappingProxyType({{**registry.SETTINGS, {setting!r}: edited}})\n"
        "from snakemake.cli import main\n"
        "sys.argv = ['snakemake', *sys.argv[1:]]\n"
        "main()\n"
    )
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)


def planned_jobs(workdir, *args, edited_setting=None):
    """Counter rule -> number of jobs that `snakemake -n` plans (empty when nothing is to be done).

    edited_setting: (name, changes) to plan as if that setting's registry entry had been edited."""
    if edited_setting:
        process = snakemake_with_edited_setting(workdir, *edited_setting, "-n", *args)
        assert process.returncode == 0, process.stderr[-5000:]
    else:
        process = snakemake(workdir, "-n", *args)
    text = process.stdout + process.stderr
    counts = Counter()
    lines = text.splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in text, text[-3000:]
        return counts
    start = lines.index("Job stats:") + 3  # header line "job count" and the "---" rule follow
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts
