"""How long Snakemake takes to plan the paper's full study (config.yaml: 147 training jobs).

Copies the workflow into a temporary folder, puts a generated RSNA ``train.csv`` of the real dataset's size
(54,706 rows, the 14 Kaggle columns) with an empty placeholder file per image under ``train_images/`` (planning never
opens a DICOM, but it lists them and reads each one's size and mtime: the shards' source fingerprints) and a small
LIDC pickle at the paths config.yaml names, then times, each as a fresh process, as a user would run them:

* ``python -c "import leanmed.train.models, leanmed.train.settings"``: the registries the config check imports at
  parse time (torch and timm with them);
* ``snakemake --list-rules``: starting Snakemake and parsing the Snakefile (which imports leanmed) without a DAG;
* ``snakemake -n``: parsing plus building the DAG of the whole study (profiles/default applies);
* ``snakemake -n --profile profiles/slurm``: the same with the SLURM profile (its per-job resource expressions).

Prints the wall seconds of each (the best of ``--repeats`` runs) and the jobs planned per rule.

    python benchmarks/dag_build.py [--repeats N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from leanmed.data.rsna import KAGGLE_TRAIN_COLUMNS

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "profiles", "envs")

#: Size of the real Kaggle RSNA screening mammography train.csv.
RSNA_ROWS = 54_706
RSNA_PATIENTS = 11_913
RSNA_COLUMNS = KAGGLE_TRAIN_COLUMNS  # the 14 columns of the real train.csv, in order


def copy_workflow(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


def write_rsna_train_csv(path: Path, rows: int = RSNA_ROWS, patients: int = RSNA_PATIENTS, seed: int = 0) -> None:
    """A train.csv with the real columns, row count and value ranges (ids, views, ages, BI-RADS with NaN for site 2)."""
    rng = np.random.default_rng(seed)
    patient_ids = np.sort(10_000 + rng.choice(55_535, size=patients, replace=False))
    # Every patient has at least 4 images (L/R x CC/MLO), the rest are extra views spread at random.
    per_patient = np.full(patients, rows // patients)
    per_patient[rng.choice(patients, size=rows - per_patient.sum(), replace=False)] += 1
    patient = np.repeat(patient_ids, per_patient)
    site = np.repeat(rng.choice([1, 2], size=patients, p=[0.55, 0.45]), per_patient)
    age = np.repeat(rng.integers(26, 90, size=patients).astype(float), per_patient)
    age[rng.random(rows) < 0.001] = np.nan
    birads = np.repeat(rng.choice([0.0, 1.0, 2.0], size=patients, p=[0.3, 0.5, 0.2]), per_patient)
    birads[site == 2] = np.nan
    position = np.concatenate([np.arange(n) for n in per_patient])
    frame = pd.DataFrame(
        {
            "site_id": site,
            "patient_id": patient,
            # distinct ids drawn without building the 2-billion population (Generator.choice samples it sparsely)
            "image_id": 10**6 + rng.choice(2**31 - 1 - 10**6, size=rows, replace=False),
            "laterality": np.where(position % 4 < 2, "L", "R"),
            "view": np.where(position % 2 == 0, "CC", "MLO"),
            "age": age,
            "cancer": (rng.random(rows) < 0.02).astype(int),
            "biopsy": (rng.random(rows) < 0.05).astype(int),
            "invasive": (rng.random(rows) < 0.01).astype(int),
            "BIRADS": birads,
            "implant": (rng.random(rows) < 0.03).astype(int),
            "density": np.where(site == 2, None, rng.choice(["A", "B", "C", "D"], size=rows)),
            "machine_id": rng.choice([21, 29, 48, 49, 93, 170, 190, 197, 210, 216], size=rows),
            "difficult_negative_case": rng.random(rows) < 0.1,
        },
        columns=list(RSNA_COLUMNS),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_dicom_placeholders(train_csv: Path, images_dir: Path) -> None:
    """An empty file at every train_images/<patient_id>/<image_id>.dcm of train.csv (planning lists, never opens)."""
    frame = pd.read_csv(train_csv, usecols=["patient_id", "image_id"], dtype=str)
    for patient, group in frame.groupby("patient_id"):
        folder = images_dir / patient
        folder.mkdir(parents=True, exist_ok=True)
        for image_id in group["image_id"]:
            (folder / f"{image_id}.dcm").touch()


def time_source_versions(images_dir: Path, train_csv: Path, repeats: int) -> dict[str, float]:
    """Best wall seconds (in process, warm cache) of what the plan computes of the raw RSNA data
    (leanmed.data.sources): the DICOM listing, the 64 shards' versions from it, which train.csv rows have no DICOM,
    and train.csv's sha256."""
    from leanmed.data.sources import absent_dicom_version, dicom_listing, shard_source_versions
    from leanmed.fingerprint import file_sha256

    best = dict.fromkeys(("listing", "shards", "absent", "sha256"), float("inf"))
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        listing = dicom_listing(images_dir)
        listed = time.perf_counter()
        shard_source_versions(images_dir, 64, listing)
        sharded = time.perf_counter()
        absent_dicom_version(train_csv, listing)
        checked = time.perf_counter()
        file_sha256(train_csv)
        hashed = time.perf_counter()
        for key, seconds in zip(best, (listed - start, sharded - listed, checked - sharded, hashed - checked)):
            best[key] = min(best[key], seconds)
    return best


def write_lidc_pickle(path: Path) -> None:
    try:
        from leanmed.demo import generate_lidc
    except ImportError:  # the layout of the Probabilistic U-Net pickle, written directly
        rng = np.random.default_rng(0)
        data = {
            f"LIDC-IDRI-{p:04d}_slice_{s}_nodule_0": {
                "image": rng.random((128, 128), dtype=np.float32),
                "masks": [np.zeros((128, 128), np.uint8) for _ in range(4)],
                "series_uid": f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{p}",
            }
            for p in range(1, 5)
            for s in range(2)
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(data, protocol=4))
    else:
        generate_lidc(path, n_patients=4, patches_per_patient=2, seed=0)


def timed(workdir: Path, args: list[str], repeats: int, python_args=("-m", "snakemake")) -> tuple[float, str]:
    """Best wall seconds of `repeats` fresh runs of `python -m snakemake *args`, and the output of the last."""
    best, text = float("inf"), ""
    for _ in range(repeats):
        start = time.perf_counter()
        process = subprocess.run([sys.executable, *python_args, *args], cwd=workdir, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        text = process.stdout + process.stderr
        if process.returncode != 0:
            raise SystemExit(f"{' '.join([*python_args, *args])} failed ({process.returncode}):\n{text[-4000:]}")
        best = min(best, elapsed)
    return best, text


def job_counts(text: str) -> Counter:
    lines = text.splitlines()
    counts: Counter = Counter()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        match = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", line)
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command; the best is reported")
    parser.add_argument("--keep", type=Path, help="build the study here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    temporary = None if args.keep else tempfile.TemporaryDirectory(prefix="leanmed-dag-")
    workdir = copy_workflow(args.keep or Path(temporary.name))
    try:
        start = time.perf_counter()
        write_rsna_train_csv(workdir / "data/rsna/train.csv")
        write_dicom_placeholders(workdir / "data/rsna/train.csv", workdir / "data/rsna/train_images")
        write_lidc_pickle(workdir / "data/lidc/data_lidc.pickle")
        data_seconds = time.perf_counter() - start
        size_mb = (workdir / "data/rsna/train.csv").stat().st_size / 1e6
        rsna_dir = workdir / "data/rsna"
        sources = time_source_versions(rsna_dir / "train_images", rsna_dir / "train.csv", args.repeats)

        import_seconds, _ = timed(
            workdir, [], args.repeats, python_args=("-c", "import leanmed.train.models, leanmed.train.settings")
        )
        parse_seconds, _ = timed(workdir, ["--list-rules"], args.repeats)
        plan_seconds, plan = timed(workdir, ["-n", "--quiet", "rules"], args.repeats)
        slurm_seconds, slurm_plan = timed(
            workdir, ["-n", "--quiet", "rules", "--profile", "profiles/slurm"], args.repeats
        )
        counts, slurm_counts = job_counts(plan), job_counts(slurm_plan)
        if counts != slurm_counts:
            raise SystemExit(f"the SLURM profile plans other jobs: {dict(slurm_counts)} vs {dict(counts)}")

        print(f"DAG build for config.yaml (the paper's study); Snakemake {snakemake_version()}, {os.cpu_count()} CPUs")
        print(f"  RSNA train.csv: {RSNA_ROWS:,} rows, 14 columns, {size_mb:.1f} MB (written in {data_seconds:.1f} s)")
        print(f"  best of {args.repeats} run(s), wall seconds of a fresh process:")
        print(f"    raw RSNA data while planning (in process, warm cache): listing the {RSNA_ROWS:,} DICOMs "
              f"{sources['listing']:.2f} s, 64 shard versions {sources['shards']:.2f} s, train.csv rows without a "
              f"DICOM {sources['absent']:.2f} s, train.csv sha256 {sources['sha256']:.3f} s")
        print(f"    import leanmed.train.models, .settings        {import_seconds:7.2f} s  (torch, timm)")
        print(f"    snakemake --list-rules (start + parse)        {parse_seconds:7.2f} s")
        print(f"    snakemake -n (parse + DAG)                    {plan_seconds:7.2f} s")
        print(f"    snakemake -n --profile profiles/slurm         {slurm_seconds:7.2f} s")
        total, training = sum(counts.values()), counts["train"]
        print(f"  jobs planned: {total} in all ({training} training jobs; the paper's study has 147)")
        for rule, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            print(f"    {rule:<20} {count:5d}")
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


def snakemake_version() -> str:
    from importlib.metadata import version

    return version("snakemake")


if __name__ == "__main__":
    sys.exit(main())
