"""Fingerprints that tie a result to what made it: the package code behind a step, and the content of files.

The workflow passes code fingerprints to its jobs as params (Snakemake's code trigger sees only a rule's script,
not the package it imports), and outputs record them: a converted PNG carries the fingerprint of its preprocessing,
a training checkpoint the fingerprint of its options, code and input files. A mismatch redoes the work instead of
reusing a result made another way. See docs/architecture.md, "The contract".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

PACKAGE_DIR = Path(__file__).resolve().parent

# The package files each step's results depend on (paths relative to src/leanmed). A step's fingerprint changes
# when any of them changes; files outside its group do not rerun it.
CODE_GROUPS: dict[str, tuple[str, ...]] = {
    # The generators (not their command line or the calibration check, which write no data).
    "demo": ("demo/rsna.py", "demo/mammogram.py", "demo/lidc.py", "demo/sampling.py"),
    "rsna_cohort": ("data/rsna.py",),
    # Pixels of a converted mammogram: decoding, VOI/LUT, crop, resize, PNG writing.
    "dicom_preprocessing": ("data/dicom.py", "data/openjpeg.py", "data/png.py"),
    "lidc_from_ct": ("data/lidc_ct.py",),
    "lidc_labels": ("data/lidc.py", "data/png.py"),
    "split": ("data/splits.py",),
}



def _training_files() -> tuple[str, ...]:
    """The code a training job runs: every module of leanmed.train but the registry (what a job takes from it, its
    setting's and model's entries, is a rerun trigger of its own, so editing one setting reruns only its jobs), the
    image loading and the metrics."""
    train = sorted(f"train/{path.name}" for path in (PACKAGE_DIR / "train").glob("*.py") if path.name != "registry.py")
    return (*train, "data/images.py", "metrics.py")


CODE_GROUPS["training"] = _training_files()

_HEX_DIGITS = 16


def code_version(group: str) -> str:
    """sha256 (first 16 hex digits) of the names and bytes of the package files in CODE_GROUPS[group]."""
    try:
        files = CODE_GROUPS[group]
    except KeyError:
        raise KeyError(f"unknown code group {group!r}; known: {', '.join(CODE_GROUPS)}") from None
    return files_version(PACKAGE_DIR / name for name in files)


def files_version(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 (first 16 hex digits) over the names and bytes of `paths`, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:_HEX_DIGITS]


def value_version(value: object) -> str:
    """sha256 (first 16 hex digits) of a JSON-serialisable value, keys sorted (the same value, the same hash)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_HEX_DIGITS]


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Full sha256 (hex) of one file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
