"""The raw DICOMs as the workflow sees them: which conversion shard an image belongs to, and a fingerprint of each
shard's source files.

Raw data is not a rule output, so Snakemake cannot see a DICOM that was replaced, added or deleted after a finished
run. The workflow passes `shard_source_versions` to each DICOM -> PNG job as a param: a change of any file of a
shard (its size or modification time) reruns that shard only, and the PNG fingerprints inside it then reconvert only
the changed images (leanmed.data.convert). Kept free of heavy imports: the workflow calls it while it plans.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

DICOM_SUFFIX = ".dcm"


def shard_of(image_id: object, n_shards: int) -> int:
    """Shard (0..n_shards-1) of an image: CRC-32 of its id as text, stable across runs and machines.

    Python's hash() of a str is salted per process, so it would move images between shards from run to run.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, not {n_shards}")
    return zlib.crc32(str(image_id).encode("utf-8")) % n_shards


def shard_source_versions(images_dir: str | os.PathLike, n_shards: int) -> dict[int, str]:
    """shard -> sha256 (16 hex digits) over (relative path, size, mtime_ns) of every `<patient>/<image>.dcm` under
    `images_dir` whose image id (the file's stem) falls in that shard, in path order. Every shard has an entry (an
    empty shard hashes nothing); a missing `images_dir` gives every shard the empty hash.

    Cost: one directory listing per patient and one stat per file (about 0.3 s for the 54,706 RSNA files on a local
    disk, BENCHMARKS.md).
    """
    digests = [hashlib.sha256() for _ in range(n_shards)]
    root = Path(images_dir)
    patients = sorted(os.scandir(root), key=lambda entry: entry.name) if root.is_dir() else []
    for patient in patients:
        if not patient.is_dir():
            continue
        for entry in sorted(os.scandir(patient.path), key=lambda entry: entry.name):
            if not entry.name.endswith(DICOM_SUFFIX):
                continue
            stat = entry.stat()
            record = f"{patient.name}/{entry.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
            digests[shard_of(entry.name[: -len(DICOM_SUFFIX)], n_shards)].update(record.encode())
    return {shard: digest.hexdigest()[:16] for shard, digest in enumerate(digests)}
