"""Options records: each workflow job's params as a file in ``results/options/``, an input of the job, rewritten only
when the params change.

Snakemake reruns a job whose params changed only from its own records in ``.snakemake/metadata``, and not at all
under ``--rerun-triggers mtime``. A results/ folder copied without ``.snakemake/``, a deleted ``.snakemake/``, or a
run with narrowed triggers would otherwise keep outputs made under other options (a learning rate, a rater
threshold, the code behind a table) and report them as the current study. A rewritten record is newer than the
job's outputs, and Snakemake's mtime trigger, which needs no records, reruns the job. An unchanged record keeps its
mtime, so nothing reruns without a change.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from collections.abc import Mapping
from pathlib import Path

from leanmed.atomic import write_text_atomically

ABOUT = (
    "The params this job of the workflow was last asked to run with (Snakemake's params of the rule). The workflow "
    "rewrites this file only when they change; as an input of the job, a rewrite reruns it, also where Snakemake's "
    "own records (.snakemake/metadata) are missing or --rerun-triggers leaves params out."
)


def options_record_path(root: str | os.PathLike, rule: str, wildcards: Mapping[str, object]) -> str:
    """``<root>/<rule>.json`` for a rule without wildcards, else ``<root>/<rule>/<name>=<value>/.../<last>.json``."""
    parts = [f"{name}={value}" for name, value in wildcards.items()]
    if not parts:
        return f"{Path(root)}/{rule}.json"
    return f"{Path(root)}/{rule}/{'/'.join(parts)}.json"


def options_record_text(rule: str, params: Mapping[str, object], redone: Mapping[str, str] | None = None) -> str:
    """The record's text: stable for equal params (keys sorted). Values must be JSON data (str, numbers, bools,
    None, lists, dicts): anything else raises TypeError naming the rule and param, since its text (an object's
    repr with its address) could differ on every run and rerun the job each time. ``redone``: when and why the job
    was last marked to run again (mark_to_run_again), kept in every later text of the record."""
    for name, value in params.items():
        try:
            json.dumps(value, sort_keys=True)
        except TypeError as error:
            raise TypeError(f"rule {rule}: param {name!r} is not JSON data ({error}); cannot record it") from None
    record = dict(about=ABOUT, rule=rule, params=dict(params))
    if redone:
        record["redone"] = dict(redone)
    return _record_text(record)


def _record_text(record: Mapping[str, object]) -> str:
    """A record as the file holds it: equal records, equal texts (keys sorted)."""
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _recorded(path: Path) -> tuple[str | None, dict | None]:
    """(text, its "redone" entry) of an existing record; (None, None) when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    try:
        return text, json.loads(text).get("redone")
    except (ValueError, AttributeError):
        return text, None  # not a record of ours (damaged): rewritten


def write_options_record(
    path: str | os.PathLike, rule: str, params: Mapping[str, object], overwrite: bool = True
) -> str:
    """Write the record when it is absent or (with ``overwrite``) when its text differs. Returns what happened:
    "created", "rewritten", "unchanged", or "kept" (it differs, and ``overwrite`` is off).

    ``overwrite=False`` is for dry runs: a plan must not change what a later run reruns (a dry run of another config,
    then a real run of the old one, would otherwise rerun jobs that match it); an absent record is still created, as
    Snakemake needs every input to exist or be made by a rule."""
    recorded, redone = _recorded(Path(path))
    text = options_record_text(rule, params, redone)
    if recorded is None:
        write_text_atomically(path, text)
        return "created"
    if recorded == text:
        return "unchanged"
    if not overwrite:
        return "kept"
    write_text_atomically(path, text)
    return "rewritten"


def mark_to_run_again(path: str | os.PathLike, why: str) -> bool:
    """Make the job of an existing record run again although its params are the same: the record's "redone" entry
    gets the current time and ``why``. Its text changes, so Snakemake reruns the job (a touch would not do: Snakemake
    compares a small input's checksum with the one it recorded, and a touched file has the same). Later texts of the
    record keep the entry, so the job runs once. False when there is no record (a job without one runs anyway)."""
    path = Path(path)
    recorded, _ = _recorded(path)
    if recorded is None:
        return False
    try:
        record = json.loads(recorded)
    except ValueError:
        return False
    record["redone"] = dict(at=datetime.now(timezone.utc).isoformat(timespec="microseconds"), why=why)
    write_text_atomically(path, _record_text(record))
    return True
