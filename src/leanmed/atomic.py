"""Atomic file writes: readers (and a later Snakemake run) see the old file or the complete new one, never a
partial file under the final name."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


#: The name `atomic_path` gives a temporary file: "." + the target's name + "." + process id + "." + 8 hex digits +
#: ".tmp".
TEMPORARY_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


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
    except Exception as error:
        cause = storage_error_in(error)
        if cause is None or (isinstance(error, OSError) and error.filename is not None):
            raise
        # torch.save on a full disk raised "[enforce fail at inline_container.cc] unexpected pos 2880 vs 2774",
        # naming neither the file nor the disk (the OSError only in the chained traceback; a real run).
        raise OSError(cause.errno, f"cannot write, {cause.strerror or cause}", str(target)) from error
    finally:
        temporary.unlink(missing_ok=True)


def storage_error_in(error: BaseException) -> OSError | None:
    """The operating system error (one with an errno: a full disk, no permission, an I/O error) that `error` is or
    was raised from or while handling, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomically(path, text.encode("utf-8"))


def remove_abandoned_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files of `atomic_path` in `folder` (and below it, when `recursive`); return them, sorted.

    A write killed before its block ended (SIGKILL: the out-of-memory killer, a node lost, a cluster's kill after its
    grace period) leaves its temporary file: no ``finally`` runs. Call this only where no write can be under way: in a
    job's own output folder when it starts, or when every job writing there has ended (found by a real run: a
    training job killed while writing best.pt left a partial ``.best.pt.<pid>.<hex>.tmp`` in its run folder through
    every later rerun; a ViT's last.pt is 1.4 GB)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    abandoned = sorted(path for path in candidates if path.is_file() and TEMPORARY_NAME.fullmatch(path.name))
    for path in abandoned:
        path.unlink(missing_ok=True)
    return abandoned
