"""Removing what a step wrote on an earlier run for inputs it no longer has.

A module of its own, apart from leanmed.data.png: the PNGs' code fingerprint covers png.py, and a change here must not
mark every converted image as out of date.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def remove_stale_pngs(folder: str | os.PathLike, current: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete every ``*.png`` below ``folder`` that is not one of ``current``, then the folders this leaves empty;
    return the deleted files, sorted.

    For a step's own output folder only: PNGs a previous run wrote for images its input no longer holds (a subject
    dropped from the cohort, a regenerated pickle with other patches) would otherwise stand in results/ beside the
    current ones, and results/ must hold exactly what the current data produce.
    """
    folder = Path(folder)
    keep = {Path(path).resolve() for path in current}
    stale = sorted(path for path in folder.rglob("*.png") if path.resolve() not in keep)
    for path in stale:
        path.unlink()
    for directory in sorted({path.parent for path in stale}, key=lambda d: len(d.parts), reverse=True):
        while directory != folder and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent
    return stale
