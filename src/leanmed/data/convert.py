"""Sharded DICOM -> PNG conversion of the RSNA cohort, and the merge of the shard manifests.

One Snakemake job converts one shard (`convert_shard`); `merge_manifests` joins the shards into `rsna/images.csv`
(converted images) and `rsna/excluded.csv` (images that could not be read, with the reason naming the file). See
docs/architecture.md for the file contracts.

Each PNG records the fingerprint of what made it (a tEXt chunk, `leanmed.data.png`): the preprocessing options, the
preprocessing code (`leanmed.fingerprint.code_version("dicom_preprocessing")`) and the source DICOM's size and
mtime_ns. A PNG is reused only when its fingerprint is the current one; otherwise it is reconverted.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable

import pandas as pd

from leanmed.atomic import atomic_path
from leanmed.data import openjpeg
from leanmed.data.dicom import preprocess
from leanmed.data.dicom_decode import DicomError
from leanmed.data.png import is_current_png, write_png
from leanmed.data.stale_files import remove_stale_pngs
from leanmed.data.sources import shard_of  # noqa: F401  (part of this module's interface)
from leanmed.fingerprint import code_version, value_version

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["image_id", "subject_id", "label", "path", "status", "reason", "fingerprint"]
COHORT_COLUMNS = ["image_id", "subject_id", "label", "dicom_path"]
STATUS_OK = "ok"
STATUS_EXCLUDED = "excluded"
CONFIG_KEY = "dicom.max_excluded_fraction"
REASON_FILE_MISSING = "file missing"
_MAX_LISTED = 10  # excluded files named in an error message


# A raw file that is absent, a folder, or a link that leads nowhere is the raw data's own state: the image is excluded
# with that reason, and a fix (the file put in place) changes the shard's `sources` param, which reruns the shard.
_RAW_DATA_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})
# Internal status of an image the storage failed on (see `is_storage_error`); never written to a manifest.
_STATUS_STORAGE = "storage error"


class ExcludedFractionError(RuntimeError):
    """More images could not be converted than `dicom.max_excluded_fraction` allows."""


class StorageError(OSError):
    """Images of a shard that could not be read or written for a reason of the storage, not of the image: a full
    disk, missing permissions, an I/O error. Not recorded as excluded images (a fix changes neither the DICOM's size
    nor its mtime, so no rerun would convert them): the shard fails, keeping the images it converted."""


def is_storage_error(error: BaseException | None) -> bool:
    """True for an operating system error that says nothing about the image: permissions (EACCES, EPERM), a full or
    read-only disk (ENOSPC, EDQUOT, EROFS), an I/O or network file system error (EIO, ESTALE), too many open files...
    False for the raw data's own state (an absent file, a folder, a link that leads nowhere) and for errors without an
    errno (a decoder's or Pillow's "truncated" OSError, which is the file's content)."""
    return isinstance(error, OSError) and error.errno is not None and error.errno not in _RAW_DATA_ERRNOS


def images_folder(out_root: str | os.PathLike) -> Path:
    """The folder of the converted PNGs under the conversion's output folder: out_root/images."""
    return Path(out_root) / "images"


def png_path(out_root: str | os.PathLike, subject_id: str, image_id: str) -> Path:
    """Where an image's PNG goes: out_root/images/<subject_id>/<image_id>.png."""
    return images_folder(out_root) / str(subject_id) / f"{image_id}.png"


def manifest_path_value(out_root: str | os.PathLike, subject_id: str, image_id: str) -> str:
    """The manifest's `path`: the PNG relative to out_root's parent (the dataset folder, e.g. rsna/), '/'-separated."""
    return png_path(Path(out_root).name, subject_id, image_id).as_posix()


def preprocessing_options(image_size: int, bits: int, path_mode: str, flip_to_left: bool, code: str) -> dict:
    """The options and code that decide a PNG's pixels, as recorded in preprocessing.json."""
    return dict(
        image_size=int(image_size),
        png_bits=int(bits),
        path_mode=str(path_mode),
        flip_to_left=bool(flip_to_left),
        code=str(code),
    )


def preprocessing_version(
    image_size: int, bits: int, path_mode: str, flip_to_left: bool, code: str | None = None
) -> str:
    """Fingerprint (16 hex digits) of the preprocessing: its options and code (default: the installed package's
    `code_version("dicom_preprocessing")`)."""
    code = code_version("dicom_preprocessing") if code is None else code
    return value_version(preprocessing_options(image_size, bits, path_mode, flip_to_left, code))


def image_fingerprint(preprocessing: str, source_size: int, source_mtime_ns: int) -> str:
    """Fingerprint (16 hex digits) of one converted image: its preprocessing (`preprocessing_version`) and the
    identity of its source DICOM (size and mtime_ns), so that a replaced raw file is reconverted."""
    return value_version(
        {"preprocessing": preprocessing, "source_size": int(source_size), "source_mtime_ns": int(source_mtime_ns)}
    )


def is_complete_png(path: str | os.PathLike, image_size: int, bits: int, fingerprint: str | None = None) -> bool:
    """True when `path` is a readable PNG of image_size x image_size pixels at the requested bit depth and, when
    `fingerprint` is given, records exactly that fingerprint.

    Used to skip images already converted by an earlier (interrupted) run; a PNG made another way (other size,
    depth, options, preprocessing code or source file) does not count and is redone.
    """
    return is_current_png(path, image_size, "L" if bits == 8 else "I;16", fingerprint)


def _convert_one(task: tuple[str, str, int, int, str, bool, str]) -> tuple[str, str]:
    """Convert one DICOM to its PNG; (status, reason). Runs in the worker processes, one image at a time."""
    dicom_file, png_file, image_size, bits, path_mode, flip_to_left, fingerprint = task
    try:
        image, _ = preprocess(
            dicom_file, image_size=image_size, bits=bits, flip_to_left=flip_to_left, path_mode=path_mode
        )
    except DicomError as error:
        # DicomError is raised inside the handler of what the reader met (its __context__): a permission or I/O
        # error there is the storage's, not the image's.
        if is_storage_error(error.__context__):
            return _STATUS_STORAGE, f"{dicom_file}: cannot be read ({error.__context__})"
        return STATUS_EXCLUDED, str(error)
    except Exception as error:  # an unforeseen failure on one file must not stop the shard; it is reported
        if is_storage_error(error):
            return _STATUS_STORAGE, f"{dicom_file}: cannot be read ({error})"
        return STATUS_EXCLUDED, f"{dicom_file}: unexpected {type(error).__name__}: {error}"
    try:
        write_png(image, png_file, fingerprint)
    except Exception as error:  # the DICOM was fine: whatever stops the PNG is no reason to exclude the image
        return _STATUS_STORAGE, f"{png_file}: cannot be written ({type(error).__name__}: {error})"
    return STATUS_OK, ""


def read_cohort(cohort_csv: str | os.PathLike) -> pd.DataFrame:
    """cohort.csv with ids and paths as text (leading zeros and long numeric ids kept) and label as int."""
    cohort = pd.read_csv(
        cohort_csv,
        dtype={"image_id": str, "subject_id": str, "dicom_path": str, "patient_id": str},
        keep_default_na=False,
    )
    missing = [column for column in COHORT_COLUMNS if column not in cohort.columns]
    if missing:
        raise ValueError(f"{cohort_csv}: missing column(s) {missing}; cohort.csv needs {COHORT_COLUMNS}")
    cohort["label"] = cohort["label"].astype(int)
    return cohort


def _pool_context() -> multiprocessing.context.BaseContext:
    # Snakemake `script:` files run their code at module level, unguarded; "spawn" and "forkserver" re-import the
    # main module in each worker and would re-run the script there. Forking does not, and is available on Linux
    # and macOS (Windows has only spawn).
    return multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")


def convert_shard(
    cohort_csv: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    shard: int,
    n_shards: int,
    image_size: int,
    bits: int = 8,
    path_mode: str = "exact",
    workers: int = 1,
    flip_to_left: bool = True,
    preprocessing_code: str | None = None,
) -> pd.DataFrame:
    """Convert the cohort images of one shard to PNGs; return the shard's manifest.

    Images are those with shard_of(image_id, n_shards) == shard, in cohort order. Each PNG is written
    (atomically) to out_root/images/<subject_id>/<image_id>.png and records its fingerprint (`image_fingerprint`:
    options, `preprocessing_code` - default `code_version("dicom_preprocessing")` - and the source DICOM's size and
    mtime_ns). A complete PNG already there with the current fingerprint is kept untouched, so a rerun after a
    crash only does what is missing; one made another way is reconverted. A DICOM that cannot be converted
    (absent: reason "file missing: <path>"; corrupt, truncated, unsupported) is recorded as status "excluded"
    with a reason naming the file and never stops the shard. An image the storage fails on (a DICOM that cannot be
    read for missing permissions or an I/O error, a PNG that cannot be written to a full disk: `is_storage_error`)
    is no property of the image: once every other image is done, the shard fails with a `StorageError` naming each
    (a rerun converts only those). `workers` > 1 converts in that many processes, each
    holding one image at a time. Manifest columns: image_id, subject_id, label, path (PNG relative to out_root's
    parent, i.e. rsna/), status (ok|excluded), reason (empty when ok), fingerprint (empty when excluded).
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard must be in 0..{n_shards - 1}, not {shard}")
    cohort = read_cohort(cohort_csv)
    in_shard = cohort[cohort["image_id"].map(lambda image_id: shard_of(image_id, n_shards)) == shard]
    images_dir = Path(images_dir)

    preprocessing = preprocessing_version(image_size, bits, path_mode, flip_to_left, preprocessing_code)
    statuses = [STATUS_OK] * len(in_shard)
    reasons = [""] * len(in_shard)
    fingerprints = [""] * len(in_shard)
    paths = []
    tasks, task_rows = [], []
    n_absent = 0
    for row, record in enumerate(in_shard.itertuples(index=False)):
        target = png_path(out_root, record.subject_id, record.image_id)
        paths.append(manifest_path_value(out_root, record.subject_id, record.image_id))
        source = images_dir / record.dicom_path
        try:
            stat = source.stat()
        except FileNotFoundError:
            # An absent raw file (e.g. a half-finished download) is excluded like any other unreadable one.
            statuses[row], reasons[row] = STATUS_EXCLUDED, f"{REASON_FILE_MISSING}: {source}"
            n_absent += 1
            continue
        except OSError as error:
            status = _STATUS_STORAGE if is_storage_error(error) else STATUS_EXCLUDED
            statuses[row], reasons[row] = status, f"{source}: cannot be read ({error})"
            continue
        fingerprints[row] = image_fingerprint(preprocessing, stat.st_size, stat.st_mtime_ns)
        if is_complete_png(target, image_size, bits, fingerprints[row]):
            continue
        tasks.append((str(source), str(target), image_size, bits, path_mode, flip_to_left, fingerprints[row]))
        task_rows.append(row)
    for row in range(len(in_shard)):
        if statuses[row] == STATUS_EXCLUDED:
            log.warning("excluded: %s", reasons[row])
        elif statuses[row] == _STATUS_STORAGE:
            log.error("not converted: %s", reasons[row])
    log.info(
        "shard %d/%d: %d images, %d absent, %d already converted, %d to convert with %d worker(s), path_mode=%s, "
        "preprocessing %s, JPEG 2000 breast-box decoding with %s",
        shard,
        n_shards,
        len(in_shard),
        n_absent,
        len(in_shard) - len(tasks) - statuses.count(STATUS_EXCLUDED),
        len(tasks),
        workers,
        path_mode,
        preprocessing,
        openjpeg.library_description(),
    )

    started = time.perf_counter()
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context()) as pool:
            results = pool.map(_convert_one, tasks, chunksize=1)
            _collect(results, task_rows, statuses, reasons, started)
    else:
        _collect(map(_convert_one, tasks), task_rows, statuses, reasons, started)
    failed = [reason for status, reason in zip(statuses, reasons) if status == _STATUS_STORAGE]
    if failed:
        listed = "\n  ".join(failed[:_MAX_LISTED])
        more = f"\n  ... and {len(failed) - _MAX_LISTED} more" if len(failed) > _MAX_LISTED else ""
        raise StorageError(
            f"shard {shard}/{n_shards}: {len(failed)} image(s) could not be read or written, for a reason of the "
            "storage, not of the image (permissions, a full disk, an I/O error), so they are not excluded as bad "
            f"DICOMs. Fix that and run again: the {statuses.count(STATUS_OK)} images converted are kept.\n  "
            f"{listed}{more}"
        )

    manifest = pd.DataFrame(
        {
            "image_id": in_shard["image_id"].to_numpy(),
            "subject_id": in_shard["subject_id"].to_numpy(),
            "label": in_shard["label"].to_numpy(),
            "path": paths,
            "status": statuses,
            "reason": reasons,
            "fingerprint": fingerprints,
        },
        columns=MANIFEST_COLUMNS,
    )
    manifest.loc[manifest["status"] == STATUS_EXCLUDED, ["path", "fingerprint"]] = ""
    return manifest


def _collect(results: Iterable[tuple[str, str]], task_rows: list[int], statuses: list, reasons: list, started: float):
    done = 0
    for row, (status, reason) in zip(task_rows, results):
        statuses[row], reasons[row] = status, reason
        if status == STATUS_EXCLUDED:
            log.warning("excluded: %s", reason)
        elif status == _STATUS_STORAGE:
            log.error("not converted: %s", reason)
        done += 1
        if done % 100 == 0 or done == len(task_rows):
            elapsed = time.perf_counter() - started
            log.info(
                "converted %d/%d in %.1f s (%.2f images/s)", done, len(task_rows), elapsed, done / max(elapsed, 1e-9)
            )


def _write_csv_atomically(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """A shard manifest with ids, path and reason as text ('' stays '', not NaN)."""
    manifest = pd.read_csv(
        path,
        dtype={"image_id": str, "subject_id": str, "path": str, "status": str, "reason": str, "fingerprint": str},
        keep_default_na=False,
    )
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: missing manifest column(s) {missing}")
    return manifest[MANIFEST_COLUMNS]


def merge_manifests(
    manifest_paths: Iterable[str | os.PathLike],
    images_csv: str | os.PathLike,
    excluded_csv: str | os.PathLike,
    max_excluded_fraction: float = 0.01,
    kept_excluded_csv: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Join shard manifests into images.csv (status ok) and excluded.csv (status excluded, with reasons), rows
    ordered by subject_id, then image_id (as text), whatever the number of shards.

    Both files are written first, and the exclusion list also to `kept_excluded_csv` when given (a copy that
    survives the failure: Snakemake deletes a failed job's outputs, not its logs); then, when the excluded share of
    all images exceeds `max_excluded_fraction`, ExcludedFractionError says how many and which files failed, names
    the config key to change and the kept list (else excluded.csv). Returns the merged manifest (all rows).
    """
    paths = [Path(p) for p in manifest_paths]
    frames = [read_manifest(path) for path in paths]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MANIFEST_COLUMNS)
    # One row order whatever the shards and train.csv's row order: the split and the training batches follow it,
    # and `dicom.shards` (a parallelism knob) changed the results (a real rerun from 3 to 2 shards retrained the runs
    # to other test figures).
    merged = merged.sort_values(["subject_id", "image_id"], kind="stable", ignore_index=True)
    repeated = merged["image_id"][merged["image_id"].duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"image_id(s) in more than one manifest row: {repeated[:_MAX_LISTED]}")
    unknown = sorted(set(merged["status"]) - {STATUS_OK, STATUS_EXCLUDED})
    if unknown:
        raise ValueError(f"unknown status value(s) {unknown} in manifests (expected ok or excluded)")

    converted = merged[merged["status"] == STATUS_OK]
    excluded = merged[merged["status"] == STATUS_EXCLUDED]
    _write_csv_atomically(converted, images_csv)
    _write_csv_atomically(excluded, excluded_csv)
    if kept_excluded_csv is not None:
        _write_csv_atomically(excluded, kept_excluded_csv)
    total = len(merged)
    fraction = len(excluded) / total if total else 0.0
    log.info(
        "%d images converted, %d excluded (%.2f%%) from %d manifests",
        len(converted),
        len(excluded),
        100 * fraction,
        len(paths),
    )
    if fraction > max_excluded_fraction:
        listed = "\n  ".join(excluded["reason"].head(_MAX_LISTED))
        more = f"\n  ... and {len(excluded) - _MAX_LISTED} more" if len(excluded) > _MAX_LISTED else ""
        absent = int(excluded["reason"].str.startswith(f"{REASON_FILE_MISSING}:").sum())
        absent_note = f" ({absent} of them absent: {REASON_FILE_MISSING})" if absent else ""
        listing = kept_excluded_csv if kept_excluded_csv is not None else excluded_csv
        raise ExcludedFractionError(
            f"{len(excluded)} of {total} images ({100 * fraction:.2f}%) could not be converted{absent_note}, more "
            f"than {CONFIG_KEY} = {max_excluded_fraction} allows. All are listed with reasons in {listing}. "
            f"Fix, restore or remove the files, or raise {CONFIG_KEY}.\n  {listed}{more}"
        )
    return merged


def remove_stale_images(merged: pd.DataFrame, out_root: str | os.PathLike) -> list[Path]:
    """Delete the PNGs under ``out_root``/images (the conversion's output folder, as in convert_shard) that no
    converted row of ``merged`` (merge_manifests' result) names: images of a previous run whose DICOM left the cohort
    or now fails to convert. Returns the deleted files."""
    converted = merged[merged["status"] == STATUS_OK]
    current = [png_path(out_root, subject, image) for subject, image in zip(converted["subject_id"],
                                                                            converted["image_id"])]
    stale = remove_stale_pngs(images_folder(out_root), current)
    if stale:
        log.info("removed %d PNGs of images no longer converted (e.g. %s)", len(stale), stale[0])
    return stale
