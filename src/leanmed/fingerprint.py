"""Fingerprints that tie a result to what made it: the package code behind a step, and the content of files.

The workflow passes code fingerprints to its jobs as params (Snakemake's code trigger sees only a rule's script,
not the package it imports), and outputs record them: a converted PNG carries the fingerprint of its preprocessing,
a training checkpoint the fingerprint of its options, code and input files. A mismatch redoes the work instead of
reusing a result made another way. A code fingerprint covers what runs (`code_text`: the tokens), not comments,
docstrings or layout: a typo fixed in a docstring reruns nothing. See docs/architecture.md, "The contract".
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import os
import tokenize
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
    # How a training job writes its results from what it trained and measured (metrics.json's content, schema
    # version and definitions; the columns of epochs.csv and predictions.csv): its own param of the training jobs,
    # kept out of the hash a last.pt must match, so an edit re-records every run from its finished checkpoint (the
    # test evaluation and inference timing run again) instead of training it again.
    "training_record": ("train/record.py",),
}

#: Imported, yet no part of a step's results: how a file is written (atomically), how fingerprints are computed, and
#: the package's top ``__init__.py`` (its docstring and version number; the version is recorded apart).
CONTENT_NEUTRAL_MODULES = frozenset({"atomic.py", "fingerprint.py", "__init__.py"})

#: Left out of one step's code on purpose. Training: what a job takes from the registry (its setting's and model's
#: entries) is a rerun trigger of its own, so editing one setting reruns only that setting's jobs; how it records its
#: results is the step training_record.
EXCLUDED_FROM_STEP = {
    "training": frozenset({"train/registry.py", "train/record.py"}),
    "training_record": frozenset({"train/registry.py"}),
}


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
    """sha256 (first 16 hex digits) of the names and code (`code_text`) of the package files of one step
    (`code_files`)."""
    return _code_files_version(PACKAGE_DIR / name for name in code_files(group))


def script_code_version(script: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of the names and code (`code_text`) of the package files a workflow script runs
    (`script_code_files`); the script itself is not included (Snakemake reruns a rule whose script changed)."""
    return _code_files_version(PACKAGE_DIR / name for name in script_code_files(script))


def _code_files_version(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(_code_text_digest(path.read_text(encoding="utf-8")))
    return digest.hexdigest()[:_HEX_DIGITS]


@functools.lru_cache(maxsize=None)
def _code_text_digest(source: str) -> bytes:
    # Keyed on the text itself, not on mtime and size: a same-size edit within one mtime tick is still seen.
    return hashlib.sha256(code_text(source).encode()).digest()


_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_LAYOUT_TOKENS = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER})
_BLOCK_MARKERS = {tokenize.NEWLINE: "NEWLINE", tokenize.INDENT: "INDENT", tokenize.DEDENT: "DEDENT"}
# Python 3.12 splits an f-string into tokens of its own; earlier versions give one STRING token.
_FSTRING_START, _FSTRING_END = getattr(tokenize, "FSTRING_START", None), getattr(tokenize, "FSTRING_END", None)


def _docstring_starts(tree: ast.Module, lines: list[str]) -> set[tuple[int, int]]:
    """(row, character column) where each docstring (of the module, a class or a function) begins."""
    starts = set()
    for node in _statements(tree):
        body = getattr(node, "body", None) if isinstance(node, _DOCSTRING_OWNERS) else None
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            # ast counts columns in UTF-8 bytes, tokenize in characters.
            line = lines[first.lineno - 1]
            starts.add((first.lineno, len(line.encode()[: first.col_offset].decode())))
    return starts


def code_text(source: str) -> str:
    """What a fingerprint of Python code covers: its tokens (names, operators, literals, and the statement and
    block boundaries), without comments, docstrings, blank lines or layout (spacing, indentation width, line
    breaks inside brackets, continuation lines). An edit of a comment or docstring, or a reformatting, leaves a
    step's fingerprint as it was and reruns nothing; any edit of what runs changes it. The text is the same on
    Python 3.11, 3.12 and 3.13 (f-strings are taken whole from the source, as 3.11 tokenizes them; a test checks
    every file of the package on each of them), so the Python that runs Snakemake does not change a fingerprint."""
    lines = io.StringIO(source).readlines()  # the lines tokenize reads (str.splitlines also splits at \f, \x1c, ...)
    docstrings = _docstring_starts(ast.parse(source), lines)
    tokens: list[str] = []
    fstring_depth, fstring_start, in_docstring = 0, (0, 0), ""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == _FSTRING_START:
            fstring_depth += 1
            fstring_start = token.start if fstring_depth == 1 else fstring_start
        elif token.type == _FSTRING_END:
            fstring_depth -= 1
            if fstring_depth == 0:
                tokens.append(_source_between(lines, fstring_start, token.end))
        elif fstring_depth or token.type in _LAYOUT_TOKENS:
            continue
        elif token.type == tokenize.STRING and (in_docstring == "string" or token.start in docstrings):
            in_docstring = "string"  # then its other pieces ("a" "b"), a ";" and the line's end: no trace is left
        elif in_docstring == "string" and token.string == ";":
            in_docstring = "separator"
        elif in_docstring and token.type == tokenize.NEWLINE:
            in_docstring = ""
        else:
            in_docstring = ""
            tokens.append(_BLOCK_MARKERS.get(token.type, token.string))
    return "\0".join(tokens)


def _source_between(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    (first_row, first_column), (last_row, last_column) = start, end
    if first_row == last_row:
        return lines[first_row - 1][first_column:last_column]
    middle = "".join(lines[first_row : last_row - 1])
    return lines[first_row - 1][first_column:] + middle + lines[last_row - 1][:last_column]


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
