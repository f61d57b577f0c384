"""Helpers for tests that run real Snakemake on a copy of the workflow in a temporary folder."""
import os
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


def snakemake_patched(workdir, *args, edited_setting=None, code_versions=None, check=False, timeout=900):
    """Run Snakemake as if the package code had been edited, in Snakemake and in every job it starts:
    `edited_setting` = (name, changes) redefines one entry of leanmed.train.registry.SETTINGS; `code_versions` =
    {group: version} replaces what leanmed.fingerprint.code_version reports for those code groups.

    The edit is a sitecustomize module on PYTHONPATH, which every Python process (Snakemake, its script jobs)
    imports at start-up: the jobs run the edited definition, as they would after a real edit."""
    patch = "import dataclasses, types\n"
    if edited_setting:
        setting, changes = edited_setting
        patch += (
            "import leanmed.train.registry as registry\n"
            f"edited = dataclasses.replace(registry.SETTINGS[{setting!r}], **{changes!r})\n"
            f"registry.SETTINGS = types.MappingProxyType({{**registry.SETTINGS, {setting!r}: edited}})\n"
        )
    if code_versions:
        patch += (
            "import leanmed.fingerprint as fingerprint\n"
            "real_code_version = fingerprint.code_version\n"
            f"overrides = {dict(code_versions)!r}\n"
            "fingerprint.code_version = lambda group: overrides.get(group) or real_code_version(group)\n"
        )
    patch_dir = Path(workdir) / ".test-patches"
    patch_dir.mkdir(exist_ok=True)
    (patch_dir / "sitecustomize.py").write_text(patch)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(patch_dir), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "snakemake", *args]
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=environment)
    if check and process.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({process.returncode}):\n{process.stdout[-5000:]}\n{process.stderr[-8000:]}"
        )
    return process


def snakemake_with_edited_setting(workdir, setting, changes, *args):
    """Run Snakemake as if leanmed.train.registry defined `setting` with `changes` (an edit of the registry code)."""
    return snakemake_patched(workdir, *args, edited_setting=(setting, changes))


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
