"""Atomic file writes: readers (and a later Snakemake run) see the old file or the complete new one, never a
partial file under the final name."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write the file to; it is renamed over `path` when the block ends
    normally and removed when it raises.

    The folder is created if needed. The temporary name starts with "." and ends with ".tmp"; it holds the process
    id and a random part, so concurrent writers never share one. It is created by the caller with the usual
    permissions (umask), which the final file keeps. Callers that need the data on disk before the rename (a
    checkpoint that must survive a crash) flush and fsync inside the block.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomically(path, text.encode("utf-8"))
