"""Fingerprints that tie a result to what made it: the package code behind a step, and the content of files.

The workflow passes code fingerprints to its jobs as params (Snakemake's code trigger sees only a rule's script,
not the package it imports), and outputs record them: a converted PNG carries the fingerprint of its preprocessing,
a training checkpoint the fingerprint of its options, code and input files. A mismatch redoes the work instead of
reusing a result made another way. See docs/architecture.md, "The contract".
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

PACKAGE_DIR = Path(__file__).resolve().parent

# The modules each step runs (paths relative to src/leanmed). A step's code is these and every leanmed module they
# import, directly or through others (`code_files`): a fingerprint changes when any of them changes, and an import
# added later is followed without editing this table. Files outside a step's code do not rerun it.
STEP_MODULES: dict[str, tuple[str, ...]] = {
    # The generators, one rule each (not their command line or the calibration check, which write no data).
    "demo_rsna": ("demo/rsna.py",),
    "demo_lidc": ("demo/lidc.py",),
    "rsna_cohort": ("data/rsna.py",),
    # Pixels of a converted mammogram: decoding, VOI/LUT, crop, resize, PNG writing.
    "dicom_preprocessing": ("data/dicom.py", "data/png.py"),
    "lidc_from_ct": ("data/lidc_ct.py",),
    "lidc_labels": ("data/lidc.py", "data/png.py"),
    "split": ("data/splits.py",),
    # Every module of leanmed.train (the loop, the settings' optimisers and precisions, measurement, resume), the
    # image loading and the metrics.
    "training": (
        *sorted(f"train/{path.name}" for path in (PACKAGE_DIR / "train").glob("*.py")),
        "data/images.py",
        "metrics.py",
    ),
}

#: Imported, yet no part of a step's results: how a file is written (atomically), how fingerprints are computed, and
#: the package's top ``__init__.py`` (its docstring and version number; the version is recorded apart).
CONTENT_NEUTRAL_MODULES = frozenset({"atomic.py", "fingerprint.py", "__init__.py"})

#: Left out of one step's code on purpose. Training: what a job takes from the registry (its setting's and model's
#: entries) is a rerun trigger of its own, so editing one setting reruns only that setting's jobs.
EXCLUDED_FROM_STEP = {"training": frozenset({"train/registry.py"})}


def _statements(tree: ast.AST):
    """Every statement of ``tree``, nested ones included (in functions, classes, branches, handlers, match cases),
    without descending into expressions: an import is a statement, and skipping the expressions (most of a module's
    nodes) made the search ten times faster than ``ast.walk`` over this package (same imports found, checked on
    6,000 files)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                pending += children


def _leanmed_module_files(tree: ast.AST) -> set[str]:
    """The leanmed files (paths relative to src/leanmed) that the imports anywhere in ``tree`` name, functions
    included: each imported module, or the package ``__init__.py`` it is."""
    names: list[str] = []
    for node in _statements(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "leanmed":
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] == "leanmed"]
    found = set()
    for name in names:
        relative = "/".join(name.split(".")[1:])
        for candidate in (f"{relative}.py", f"{relative}/__init__.py"):
            if relative and (PACKAGE_DIR / candidate).is_file():
                found.add(candidate)
    return found


def imported_modules(path: str) -> set[str]:
    """The leanmed files (paths relative to src/leanmed) that importing the module at ``path`` and running it load:
    the modules it imports anywhere in its code, functions included, and their packages' ``__init__.py``."""
    file = PACKAGE_DIR / path
    status = file.stat()
    found = set(_parsed_imports(str(file), status.st_mtime_ns, status.st_size))
    parts = path.split("/")[:-1]
    found |= {"/".join([*parts[:depth], "__init__.py"]) for depth in range(len(parts) + 1)}
    return found


@functools.lru_cache(maxsize=None)
def _parsed_imports(file: str, mtime_ns: int, size: int) -> frozenset[str]:
    """`_leanmed_module_files` of one file (absolute path), parsed once per version of it (its mtime and size are
    part of the key, so an edit is seen): Snakemake computes every rule's fingerprints while it parses the workflow,
    and they share most modules. With `_statements`, a dry run of a small study took 2.2 s instead of 3.3 s (2 CPU
    cores, 2026-11-29)."""
    return frozenset(_leanmed_module_files(ast.parse(Path(file).read_text(encoding="utf-8"), filename=file)))


def _with_imports(modules: Iterable[str], excluded: frozenset[str]) -> tuple[str, ...]:
    """``modules`` and every leanmed module they import, transitively (sorted), less ``excluded``."""
    pending = list(modules)
    files: set[str] = set()
    while pending:
        path = pending.pop()
        if path in files or path in excluded:
            continue
        files.add(path)
        pending += imported_modules(path)
    return tuple(sorted(files))


def code_files(group: str) -> tuple[str, ...]:
    """The package files of one step (sorted): its STEP_MODULES and all leanmed modules they import, transitively,
    less CONTENT_NEUTRAL_MODULES and the step's EXCLUDED_FROM_STEP."""
    try:
        modules = STEP_MODULES[group]
    except KeyError:
        raise KeyError(f"unknown code group {group!r}; known: {', '.join(STEP_MODULES)}") from None
    return _with_imports(modules, CONTENT_NEUTRAL_MODULES | EXCLUDED_FROM_STEP.get(group, frozenset()))


def script_code_files(script: str | os.PathLike) -> tuple[str, ...]:
    """The package files a workflow script runs (sorted): the leanmed modules its code imports and all that they
    import, transitively, less CONTENT_NEUTRAL_MODULES. For the rules whose steps need no hand-picked code group
    (``STEP_MODULES``): what they run is exactly what their script imports."""
    tree = ast.parse(Path(script).read_text(encoding="utf-8"), filename=str(script))
    return _with_imports(_leanmed_module_files(tree), CONTENT_NEUTRAL_MODULES)


_HEX_DIGITS = 16


def code_version(group: str) -> str:
    """sha256 (first 16 hex digits) of the names and bytes of the package files of one step (`code_files`)."""
    return files_version(PACKAGE_DIR / name for name in code_files(group))


def script_code_version(script: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of the names and bytes of the package files a workflow script runs
    (`script_code_files`); the script itself is not included (Snakemake reruns a rule whose script changed)."""
    return files_version(PACKAGE_DIR / name for name in script_code_files(script))


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
