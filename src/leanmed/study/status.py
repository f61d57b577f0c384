"""Where a study stands: `python -m leanmed.study.status` (or `make status`), while Snakemake runs (locally or on
SLURM) or after.

    python -m leanmed.study.status [--configfile FILE ...] [--profile DIR] [--stale-minutes N]

Reads the study's configuration (config.yaml, then the given config files or those a profile names, schema
defaults filled in) for the runs it expects, and its results folder for what each run has written:

- completed / diverged: metrics.json is there (its status);
- running: no metrics.json, but the run wrote progress (epochs.csv, last.pt or its job log) within the last
  `--stale-minutes` (default 60) and its log does not end in an error;
- stalled: progress older than that and no error (a job killed with its machine, or a very slow epoch);
- failed: its job log ends in a Python traceback (written after its last progress);
- waiting: nothing written yet.

Then, for running ones, the epoch reached and the best validation loss so far; the job-hours spent (GPU-hours for GPU
jobs) from Snakemake's benchmark files of finished jobs plus the epochs of running ones; and an estimate of the time
left, from the median wall time of finished jobs of the same model (one job at a time; divide by the jobs that run at
once).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from leanmed.report.aggregate import run_dir
from leanmed.study import training_runs

_LOGGED_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}", re.MULTILINE)
STATES = ("completed", "diverged", "running", "stalled", "failed", "waiting")
SCHEMA = Path("workflow/schemas/config.schema.yaml")


# ---------------------------------------------------------------------------------------------------- configuration
def _merge(base: dict, override: Mapping) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), dict) \
            else value
    return merged


def profile_configfiles(profile: str | Path) -> list[str]:
    """The config files a Snakemake profile names (`configfiles:` or `configfile:` in its config.yaml)."""
    settings = yaml.safe_load((Path(profile) / "config.yaml").read_text()) or {}
    files = settings.get("configfiles") or settings.get("configfile") or []
    return [files] if isinstance(files, str) else list(files)


def load_config(configfiles: Sequence[str | Path] = (), root: str | Path = ".") -> dict:
    """config.yaml overlaid with `configfiles` in order (as Snakemake merges them), schema defaults filled in."""
    root = Path(root)
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    for path in configfiles:
        config = _merge(config, yaml.safe_load((root / path).read_text()) or {})
    from snakemake.utils import validate  # the workflow's own validation, defaults included

    validate(config, str(root / SCHEMA), set_default=True)
    return config


# ---------------------------------------------------------------------------------------------------- one run
def _run_path(root: Path, run: Mapping) -> Path:
    """The run's folder (or, with a suffix added, its log or benchmark file) under `root`."""
    return run_dir(root, run["dataset"], run["model"], run["setting"], run["scale"], run["seed"])


def _epoch_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _ends_in_error(log: Path) -> bool:
    """True when the job log's last Python traceback is not followed by a new logged line (the job's log lines begin
    with a date: a job that started again after an error logs some)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    position = text.rfind("Traceback (most recent call last)")
    return position >= 0 and not _LOGGED_LINE.search(text, position)


def run_state(results: Path, logs: Path, run: Mapping, now: float, stale_seconds: float) -> dict:
    """State of one run (see the module docstring) with its progress: epochs done, best validation loss."""
    folder = _run_path(results / "runs", run)
    log = _run_path(logs / "runs", run).with_suffix(".log")
    record = dict(run, state="waiting", epochs=0, best_val_loss=None, note="")
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            record.update(state="failed", note=f"{metrics_path} unreadable")
            return record
        record.update(state="diverged" if metrics.get("status") == "diverged" else "completed",
                      epochs=metrics["training"]["epochs_run"], best_val_loss=metrics["training"]["best_val_loss"])
        return record
    rows = _epoch_rows(folder / "epochs.csv")
    losses = [float(row["val_loss"]) for row in rows if row.get("val_loss") not in (None, "")]
    finite = [loss for loss in losses if math.isfinite(loss)]
    record.update(epochs=len(rows), best_val_loss=min(finite) if finite else None)
    progress = [stamp for stamp in (_mtime(folder / "epochs.csv"), _mtime(folder / "last.pt")) if stamp]
    log_time = _mtime(log)
    if log_time is not None and _ends_in_error(log) and log_time >= max(progress, default=0):
        record.update(state="failed", note=f"see {log}")
    elif progress or log_time is not None:
        last = max(progress + ([log_time] if log_time else []))
        record.update(state="running" if now - last <= stale_seconds else "stalled",
                      note=f"last progress {(now - last) / 60:.0f} min ago")
    return record


# ---------------------------------------------------------------------------------------------------- the study
def _benchmark_seconds(results: Path, run: Mapping) -> float | None:
    """Wall seconds of a finished training job from Snakemake's benchmark file (None when absent)."""
    path = _run_path(results / "benchmarks" / "runs", run).with_suffix(".tsv")
    try:
        with open(path, newline="") as handle:
            return float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    except (FileNotFoundError, StopIteration, KeyError, ValueError):
        return None


def study_status(config: Mapping, root: str | Path = ".", now: float | None = None,
                 stale_minutes: float = 60) -> dict:
    """Per-run states, counts per (dataset, model), hours spent and an estimate of the hours left."""
    root = Path(root)
    results, logs = root / config["results_dir"], root / config["logs_dir"]
    now = time.time() if now is None else now
    runs = [run_state(results, logs, run, now, stale_minutes * 60) for run in training_runs(config)]
    counts: dict[tuple, Counter] = defaultdict(Counter)
    walls: dict[str, list[float]] = defaultdict(list)
    spent = 0.0
    for run in runs:
        counts[(run["dataset"], run["model"])][run["state"]] += 1
        seconds = _benchmark_seconds(results, run) if run["state"] in ("completed", "diverged") else None
        if seconds is not None:
            walls[run["model"]].append(seconds)
            spent += seconds
        elif run["state"] in ("running", "stalled", "failed"):  # their epochs ran on the GPU too
            rows = _epoch_rows(_run_path(results / "runs", run) / "epochs.csv")
            spent += sum(float(row["epoch_train_seconds"] or 0) + float(row["epoch_val_seconds"] or 0) for row in rows)
    left, unknown = 0.0, set()
    for run in runs:
        if run["state"] not in ("waiting", "running", "stalled", "failed"):
            continue
        if not walls[run["model"]]:
            unknown.add(run["model"])
            continue
        typical = statistics.median(walls[run["model"]])
        done = run["epochs"] / config["training"]["max_epochs"] if run["state"] in ("running", "stalled") else 0.0
        left += typical * max(0.0, 1.0 - done)
    return dict(runs=runs, counts=counts, hours_spent=spent / 3600, hours_left=left / 3600,
                models_without_estimate=sorted(unknown), gpus_per_job=config["training"]["gpus_per_job"])


def format_status(status: Mapping) -> str:
    lines = [f"{'dataset':<8} {'model':<28} " + " ".join(f"{state:>9}" for state in STATES) + f" {'expected':>9}"]
    totals = Counter()
    for (dataset, model), counts in status["counts"].items():
        totals.update(counts)
        lines.append(f"{dataset:<8} {model:<28} " + " ".join(f"{counts[state]:>9}" for state in STATES)
                     + f" {sum(counts.values()):>9}")
    lines.append(f"{'all':<8} {'':<28} " + " ".join(f"{totals[state]:>9}" for state in STATES)
                 + f" {sum(totals.values()):>9}")
    active = [run for run in status["runs"] if run["state"] in ("running", "stalled", "failed")]
    if active:
        lines.append("")
    for run in active:
        best = "n/a" if run["best_val_loss"] is None else f"{run['best_val_loss']:.4f}"
        lines.append(f"{run['state']:<8} {run['dataset']}/{run['model']}/{run['setting']}/s{run['scale']}/"
                     f"seed{run['seed']}: epoch {run['epochs']}, best validation loss {best}; {run['note']}")
    gpus = status["gpus_per_job"]
    spent = f"{status['hours_spent'] * gpus:.2f} GPU-hours ({gpus} GPU per job)" if gpus else \
        f"{status['hours_spent']:.2f} job-hours (CPU jobs)"
    lines.append("")
    lines.append(f"spent: {spent}, from finished jobs' benchmark files and the epochs of the others")
    estimate = f"left: about {status['hours_left']:.2f} hours of training jobs run one at a time (divide by the jobs " \
               f"running at once), from the median wall time of finished jobs of the same model"
    if status["models_without_estimate"]:
        estimate += f"; no estimate yet for {', '.join(status['models_without_estimate'])} (no finished job)"
    lines.append(estimate)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanmed.study.status", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", action="append", default=[], help="config file(s) over config.yaml")
    parser.add_argument("--profile", help="take the config files a Snakemake profile names (e.g. profiles/demo)")
    parser.add_argument("--stale-minutes", type=float, default=60,
                        help="a run without progress for longer is 'stalled', not 'running' (default 60)")
    args = parser.parse_args(argv)
    configfiles = (profile_configfiles(args.profile) if args.profile else []) + args.configfile
    config = load_config(configfiles)
    print(format_status(study_status(config, stale_minutes=args.stale_minutes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
