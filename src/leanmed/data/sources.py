"""The raw data as the workflow sees it while it plans: which conversion shard an image belongs to, and versions of
the raw files that a rule's params carry.

Raw data is not a rule output, so Snakemake sees a raw file only through its modification time, and only when it is
newer than the outputs made from it: a file replaced by one with an older time (a backup restored with `cp -p`, an
archive unpacked, a file moved in) or a DICOM gone missing was not seen. The workflow passes these versions as params,
so that any change of them reruns the steps that read the files:
- `shard_source_versions`: each conversion shard's DICOMs (size, modification time): a replaced, added or deleted
  DICOM reruns its shard only, and the PNG fingerprints inside it then reconvert only the changed images;
- `absent_dicom_version`: which train.csv rows have no DICOM file (the cohort report counts them);
- `file_version` (size, modification time) and `tree_version` (the same for every file of a folder tree): the LIDC
  pickle, the LIDC CT scans.
Kept free of heavy imports: the workflow calls it while it plans.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zlib

DICOM_SUFFIX = ".dcm"


def shard_of(image_id: object, n_shards: int) -> int:
    """Shard (0..n_shards-1) of an image: CRC-32 of its id as text, stable across runs and machines.

    Python's hash() of a str is salted per process, so it would move images between shards from run to run.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, not {n_shards}")
    return zlib.crc32(str(image_id).encode("utf-8")) % n_shards


def _sorted_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """The entries of `folder` by name; none when it cannot be listed (missing, not a folder, no permission)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError:
        return []


def dicom_listing(images_dir: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every `<patient>/<image>.dcm` under `images_dir`, in path order; empty when
    `images_dir` is missing. A file or folder that cannot be reached (a broken link, a link loop, a folder without
    read permission such as a disk's `lost+found`) is left out, as absent: planning goes on, and the conversion
    excludes or fails on such an image naming the file and the reason. Cost: one directory listing per patient and one
    stat per file (about 0.3 s for the 54,706 RSNA files on a local disk, BENCHMARKS.md)."""
    listing = []
    for patient in _sorted_entries(images_dir):
        try:
            if not patient.is_dir():
                continue
        except OSError:
            continue
        for entry in _sorted_entries(patient.path):
            if entry.name.endswith(DICOM_SUFFIX):
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                listing.append((f"{patient.name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
    return listing


def shard_source_versions(images_dir: str | os.PathLike, n_shards: int,
                          listing: list[tuple[str, int, int]] | None = None) -> dict[int, str]:
    """shard -> sha256 (16 hex digits) over (relative path, size, mtime_ns) of every `<patient>/<image>.dcm` under
    `images_dir` whose image id (the file's stem) falls in that shard, in path order. Every shard has an entry (an
    empty shard hashes nothing); a missing `images_dir` gives every shard the empty hash. `listing`: the folder's
    `dicom_listing`, when already made."""
    digests = [hashlib.sha256() for _ in range(n_shards)]
    for path, size, mtime_ns in dicom_listing(images_dir) if listing is None else listing:
        name = path.rsplit("/", 1)[-1]
        digests[shard_of(name[: -len(DICOM_SUFFIX)], n_shards)].update(f"{path}\t{size}\t{mtime_ns}\n".encode())
    return {shard: digest.hexdigest()[:16] for shard, digest in enumerate(digests)}


def absent_dicom_version(train_csv: str | os.PathLike, listing: list[tuple[str, int, int]]) -> str:
    """Which rows of `train_csv` have no DICOM among `listing` (`dicom_listing` of the images folder): their number and
    a sha256 (16 hex digits) of their sorted `<patient_id>/<image_id>.dcm` paths. Read with the csv module (no
    pandas while planning: about 50 ms for the 54,706 rows); a file the cohort step cannot read either gives a version
    saying so (that step then fails with the reason)."""
    present = {path for path, _, _ in listing}
    try:
        with open(train_csv, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            patient, image = header.index("patient_id"), header.index("image_id")
            absent = sorted({
                path for row in reader if len(row) > max(patient, image)
                and (path := f"{row[patient].strip()}/{row[image].strip()}{DICOM_SUFFIX}") not in present
            })
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as error:
        return f"unreadable ({type(error).__name__})"
    digest = hashlib.sha256("\n".join(absent).encode()).hexdigest()[:16]
    return f"{len(absent)} absent, {digest}"


def file_version(path: str | os.PathLike) -> str:
    """A file's size and modification time (ns): what the workflow knows of a raw file too large to hash while it
    plans (the LIDC pickle). Another file put in its place, even one with an older time, changes it."""
    stat = os.stat(path)
    return f"{stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}"


def tree_version(root: str | os.PathLike) -> str:
    """sha256 (16 hex digits) over (relative path, size, mtime_ns) of every DICOM below `root` that the CT build reads
    (`*.dcm`, not hidden: as leanmed.data.lidc_series finds them), in path order, and their number: a slice added,
    deleted or replaced anywhere in the tree (a download completed, a series re-downloaded) changes it, a downloader's
    log or a `.DS_Store` does not. Snakemake sees of a folder input only the folder's own time, which a change in a
    subfolder does not touch. A file that cannot be reached (a broken link) counts as absent."""
    digest, count = hashlib.sha256(), 0
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            if not name.lower().endswith(DICOM_SUFFIX) or name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:  # a broken link, a link loop, no permission: the build finds it unreadable too
                continue
            digest.update(f"{os.path.relpath(path, root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
            count += 1
    return f"{count} DICOM files, {digest.hexdigest()[:16]}"
