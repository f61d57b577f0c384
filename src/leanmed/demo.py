"""Generated data in the formats of the real datasets, which cannot ship with the project.

Two generators:

* :func:`generate_rsna` writes a Kaggle "RSNA Screening Mammography Breast Cancer Detection" lookalike: ``train.csv``
  with the 14 real columns and one DICOM per row at ``train_images/<patient_id>/<image_id>.dcm`` (12-bit pixels in
  16-bit words, mixed transfer syntaxes, MONOCHROME1 and MONOCHROME2, LINEAR and SIGMOID VOI functions).
  Patients with BI-RADS 0 (follow-up needed, the positive class of Selvan et al. 2023) carry bright mass-like blobs.
* :func:`generate_lidc` writes a pickle shaped like the LIDC-IDRI crops of the Probabilistic U-Net: a dict of
  128x128 float32 CT patches in [0, 1], each with the masks of 4 raters (empty for raters who did not mark a nodule).

Both are deterministic from their seed: the same seed gives a byte-identical ``train.csv``, identical DICOM files and
an identical pickle. Nothing is downloaded.

Command line::

    python -m leanmed.demo rsna OUT_DIR --patients N --height H --width W --seed S
    python -m leanmed.demo lidc OUT.pickle --patients N --patches P --seed S
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from leanmed.atomic import atomic_path
from leanmed.data.rsna import KAGGLE_TRAIN_COLUMNS

# ----------------------------------------------------------------------------------------------------------------------
# RSNA: constants
# ----------------------------------------------------------------------------------------------------------------------

#: The columns of the real Kaggle ``train.csv``, in its order.
RSNA_COLUMNS = KAGGLE_TRAIN_COLUMNS

#: Transfer syntax names accepted by :func:`generate_rsna`, with their UIDs.
TRANSFER_SYNTAX_UIDS = {
    "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
    "explicit_vr_little": "1.2.840.10008.1.2.1",
    "rle_lossless": "1.2.840.10008.1.2.5",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
}

#: Digital Mammography X-Ray Image Storage - For Presentation.
MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"

#: Site 2 of the real data reports neither BI-RADS nor density (about half the images): its patients get NaN for both.
RSNA_BIRADS_MISSING_FRACTION = 0.45
#: Share of patients whose age is missing (the real data has a handful).
RSNA_AGE_MISSING_FRACTION = 0.05
#: Ages are drawn uniformly from this closed range, in years, so that an "age < 55" filter keeps about half.
RSNA_AGE_RANGE_YEARS = (30, 80)
#: Share of BI-RADS 2 (benign finding) among the patients with a known BI-RADS other than 0.
RSNA_BENIGN_SHARE_OF_NEGATIVES = 1 / 3

#: Machines seen at each site of the real data (ids only; which machine made an image carries no label signal here).
RSNA_MACHINES_BY_SITE = {1: (21, 29, 93, 216), 2: (48, 49, 170, 190, 197, 210)}

#: Largest stored value of a 12-bit image.
MAX_12_BIT = 4095

#: Display profiles cycled over patients so that every mix appears in any dataset of 4 or more patients:
#: (photometric interpretation, VOI LUT function, whether the window attributes hold 3 values as on some real scanners).
RSNA_DISPLAY_PROFILES = (
    ("MONOCHROME2", "LINEAR", False),
    ("MONOCHROME1", "LINEAR", False),
    ("MONOCHROME2", "SIGMOID", True),
    ("MONOCHROME1", "SIGMOID", False),
)

#: The four standard screening images of a patient, in the order the real csv lists them.
RSNA_STANDARD_VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))

#: DICOM PatientOrientation (direction of increasing column, of increasing row) for the layout drawn here: a left breast
#: has its chest wall on the left image edge (columns run toward anterior), a right breast on the right edge.
RSNA_PATIENT_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("L", "MLO"): ["A", "F"],
    ("R", "CC"): ["P", "L"],
    ("R", "MLO"): ["P", "F"],
}


# ----------------------------------------------------------------------------------------------------------------------
# Shared image helpers
# ----------------------------------------------------------------------------------------------------------------------


def _linear_upsampling_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Matrix (n_out x n_in) that linearly interpolates n_in samples spread over the full span onto n_out samples."""
    positions = np.linspace(0.0, n_in - 1.0, n_out)
    lower = np.clip(np.floor(positions).astype(np.int64), 0, max(n_in - 2, 0))
    upper_weight = positions - lower
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    if n_in == 1:
        matrix[:, 0] = 1.0
        return matrix
    matrix[rows, lower] = 1.0 - upper_weight
    matrix[rows, lower + 1] += upper_weight
    return matrix


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grid_shape: tuple[int, int]) -> np.ndarray:
    """Band-limited noise of unit standard deviation (float32), features about shape/grid_shape pixels across.

    Smooths white noise on a small grid and upsamples it with two matrix products, which costs far less than filtering
    a full-size mammogram (3328 x 2560) directly.
    """
    grid = gaussian_filter(rng.standard_normal(grid_shape), sigma=1.0, mode="wrap")
    grid = (grid - grid.mean()) / (grid.std() + 1e-12)
    rows_up = _linear_upsampling_matrix(shape[0], grid_shape[0])
    cols_up = _linear_upsampling_matrix(shape[1], grid_shape[1])
    return (rows_up @ grid.astype(np.float32)) @ cols_up.T


def _unique_integers(rng: np.random.Generator, count: int, low: int, high: int) -> np.ndarray:
    """``count`` distinct integers drawn uniformly from [low, high), sorted ascending."""
    if high - low < count:
        raise ValueError(f"cannot draw {count} distinct integers from [{low}, {high})")
    chosen: set[int] = set()
    while len(chosen) < count:
        chosen.update(int(v) for v in rng.integers(low, high, size=count - len(chosen)))
    return np.array(sorted(chosen), dtype=np.int64)


def _exact_counts(total: int, fractions: dict, ensure_each: bool) -> dict:
    """Split ``total`` items over categories in proportion to ``fractions`` (largest remainder).

    With ``ensure_each`` and ``total >= len(fractions)``, every category gets at least one item, taken from the
    largest one, so that small datasets still show every category.
    """
    keys = list(fractions)
    weights = np.array([fractions[k] for k in keys], dtype=float)
    ideal = weights / weights.sum() * total
    counts = np.floor(ideal).astype(int)
    for index in np.argsort(-(ideal - counts), kind="stable")[: total - counts.sum()]:
        counts[index] += 1
    if ensure_each and total >= len(keys):
        for index in range(len(keys)):
            if counts[index] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[index] = 1
    return {k: int(c) for k, c in zip(keys, counts)}


# ----------------------------------------------------------------------------------------------------------------------
# RSNA: metadata
# ----------------------------------------------------------------------------------------------------------------------


def _rsna_patient_table(rng: np.random.Generator, n_patients: int, followup_fraction: float) -> pd.DataFrame:
    """One row per patient: ids, site, machine, age, BI-RADS, density, cancer and biopsy side, display profile."""
    patient_ids = _unique_integers(rng, n_patients, 10000, 65535)

    n_birads_missing = int(round(RSNA_BIRADS_MISSING_FRACTION * n_patients))
    n_birads_known = n_patients - n_birads_missing
    n_followup = int(round(followup_fraction * n_birads_known))
    if followup_fraction > 0 and n_birads_known >= 2:
        n_followup = min(max(n_followup, 1), n_birads_known - 1)
    n_benign = int(round(RSNA_BENIGN_SHARE_OF_NEGATIVES * (n_birads_known - n_followup)))
    n_normal = n_birads_known - n_followup - n_benign
    birads = np.array([0.0] * n_followup + [1.0] * n_normal + [2.0] * n_benign + [np.nan] * n_birads_missing)
    birads = birads[rng.permutation(n_patients)]
    site = np.where(np.isnan(birads), 2, 1)

    ages = rng.integers(RSNA_AGE_RANGE_YEARS[0], RSNA_AGE_RANGE_YEARS[1] + 1, size=n_patients).astype(float)
    n_age_missing = int(round(RSNA_AGE_MISSING_FRACTION * n_patients))
    if n_patients >= 10:
        n_age_missing = max(n_age_missing, 1)
    ages[rng.choice(n_patients, size=n_age_missing, replace=False)] = np.nan

    machine = np.array([rng.choice(RSNA_MACHINES_BY_SITE[s]) for s in site], dtype=np.int64)
    density_letters = rng.choice(np.array(["A", "B", "C", "D"], dtype=object), size=n_patients, p=[0.1, 0.4, 0.4, 0.1])
    density = np.where(site == 2, np.nan, density_letters).astype(object)

    # Cancer is mostly behind a BI-RADS 0 recall; site 2 (no BI-RADS) has the real data's low base rate.
    cancer_probability = np.where(birads == 0, 0.25, np.where(np.isnan(birads), 0.03, 0.0))
    has_cancer = rng.random(n_patients) < cancer_probability
    finding_side = np.where(rng.random(n_patients) < 0.5, "L", "R")  # the breast with the cancer or the biopsy
    cancer_invasive = rng.random(n_patients) < 0.7
    # A biopsy without cancer happens after some recalls.
    benign_biopsy = (~has_cancer) & (birads == 0) & (rng.random(n_patients) < 0.3)
    difficult_negative = (~has_cancer) & (rng.random(n_patients) < 0.12)
    implant = rng.random(n_patients) < 0.02
    n_images = rng.choice([2, 3, 4], size=n_patients, p=[0.1, 0.15, 0.75])
    profile = np.arange(n_patients) % len(RSNA_DISPLAY_PROFILES)

    return pd.DataFrame(
        {
            "patient_id": patient_ids,
            "site_id": site,
            "machine_id": machine,
            "age": ages,
            "BIRADS": birads,
            "density": density,
            "has_cancer": has_cancer,
            "finding_side": finding_side,
            "cancer_invasive": cancer_invasive,
            "benign_biopsy": benign_biopsy,
            "difficult_negative_case": difficult_negative,
            "implant": implant.astype(int),
            "n_images": n_images,
            "profile": profile,
        }
    )


def _rsna_views_for_patient(rng: np.random.Generator, n_images: int) -> list[tuple[str, str]]:
    """The (laterality, view) pairs a patient has: all four standard views, or 2-3 of them."""
    if n_images >= 4:
        return list(RSNA_STANDARD_VIEWS)
    if n_images == 3:
        dropped = int(rng.integers(4))
        return [v for i, v in enumerate(RSNA_STANDARD_VIEWS) if i != dropped]
    if rng.random() < 0.5:  # one view of each breast
        view = "CC" if rng.random() < 0.5 else "MLO"
        return [("L", view), ("R", view)]
    side = "L" if rng.random() < 0.5 else "R"  # both views of one breast
    return [(side, "CC"), (side, "MLO")]


def _rsna_train_table(rng: np.random.Generator, patients: pd.DataFrame) -> pd.DataFrame:
    """The ``train.csv`` frame (14 real columns, in order), one row per image."""
    rows = []
    for patient in patients.itertuples(index=False):
        for laterality, view in _rsna_views_for_patient(rng, int(patient.n_images)):
            cancer_here = bool(patient.has_cancer) and laterality == patient.finding_side
            rows.append(
                {
                    "site_id": int(patient.site_id),
                    "patient_id": int(patient.patient_id),
                    "image_id": 0,  # drawn below, all at once, so that they are unique
                    "laterality": laterality,
                    "view": view,
                    "age": patient.age,
                    "cancer": int(cancer_here),
                    "biopsy": int(cancer_here or (bool(patient.benign_biopsy) and laterality == patient.finding_side)),
                    "invasive": int(cancer_here and bool(patient.cancer_invasive)),
                    "BIRADS": patient.BIRADS,
                    "implant": int(patient.implant),
                    "density": patient.density,
                    "machine_id": int(patient.machine_id),
                    "difficult_negative_case": bool(patient.difficult_negative_case),
                }
            )
    table = pd.DataFrame(rows, columns=list(RSNA_COLUMNS))
    # Real image ids are unrelated to the patient: draw them at random, then keep the csv row order.
    table["image_id"] = rng.permutation(_unique_integers(rng, len(table), 10**6, 2**31 - 1))
    table["age"] = table["age"].astype(float)
    table["BIRADS"] = table["BIRADS"].astype(float)
    table["density"] = table["density"].astype(object)
    return table


# ----------------------------------------------------------------------------------------------------------------------
# RSNA: pixels
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BreastLayout:
    """Where the breast of one image lies, in pixels, with the chest wall on the left edge (column 0)."""

    center_row: float
    depth: float  # horizontal semi-axis: chest wall to nipple
    half_height_above: float  # vertical semi-axis above center_row
    half_height_below: float  # vertical semi-axis below center_row


def _rsna_breast_layout(rng: np.random.Generator, height: int, width: int, view: str) -> _BreastLayout:
    if view == "MLO":  # taller, lower, with the axilla and pectoral muscle at the top
        center_row = height * rng.uniform(0.52, 0.60)
        above, below = height * rng.uniform(0.40, 0.48), height * rng.uniform(0.34, 0.40)
    else:
        center_row = height * rng.uniform(0.45, 0.55)
        above, below = height * rng.uniform(0.34, 0.42), height * rng.uniform(0.34, 0.42)
    return _BreastLayout(
        center_row=center_row,
        depth=width * rng.uniform(0.55, 0.80),
        half_height_above=min(above, center_row - 0.02 * height),
        half_height_below=min(below, height * 0.98 - center_row),
    )


def _add_spherical_blob(
    image: np.ndarray, center_row: float, center_col: float, radius: float, amplitude: float
) -> None:
    """Add, in place, the projection of a sphere: amplitude * sqrt(1 - (d/radius)^2), d in pixels from the centre."""
    height, width = image.shape
    top, bottom = max(int(center_row - radius) - 1, 0), min(int(center_row + radius) + 2, height)
    left, right = max(int(center_col - radius) - 1, 0), min(int(center_col + radius) + 2, width)
    if top >= bottom or left >= right:
        return
    rows = (np.arange(top, bottom, dtype=np.float32) - center_row)[:, None]
    cols = (np.arange(left, right, dtype=np.float32) - center_col)[None, :]
    fraction = np.clip(1.0 - (rows**2 + cols**2) / np.float32(radius**2), 0.0, 1.0)
    image[top:bottom, left:right] += np.float32(amplitude) * np.sqrt(fraction)


def _rsna_pixels(
    rng: np.random.Generator,
    height: int,
    width: int,
    laterality: str,
    view: str,
    birads: float,
    breast_has_cancer: bool,
) -> tuple[np.ndarray, float]:
    """One mammogram in display orientation (tissue bright): uint16 values in [0, 4095], and its tissue level.

    The breast is a half ellipse on the chest-wall edge (left for laterality L, right for R) whose brightness follows
    the compressed thickness of a half ellipsoid (dark fatty rim, a faint skin line), with patchy fibroglandular tissue
    from multi-scale smooth noise and signal-dependent quantum noise; MLO views add the pectoral muscle in the upper
    chest-wall corner. Images of BI-RADS 0 patients, and images of a breast with cancer, get 1-3 mass-like blobs of
    radius 4-8 % of the image height; BI-RADS 2 images get a few small calcification dots.

    The tissue level (stored units at full thickness, before masses) sets the display window, so that the window does
    not depend on the label.
    """
    layout = _rsna_breast_layout(rng, height, width, view)
    tissue_level = float(rng.uniform(1300.0, 1700.0))
    level = np.float32(tissue_level)
    zero, one = np.float32(0.0), np.float32(1.0)
    # In-place float32 arithmetic throughout: a full-size mammogram has 8.5 million pixels.

    row_offsets = np.arange(height, dtype=np.float32)[:, None] - np.float32(layout.center_row)
    half_heights = np.where(row_offsets < 0, layout.half_height_above, layout.half_height_below).astype(np.float32)
    cols = np.arange(width, dtype=np.float32)[None, :]
    # depth_left = 1 - (normalised elliptic radius)^2: 1 at the chest wall centre, 0 on the skin, negative outside.
    depth_left = (row_offsets / half_heights) ** 2 + (cols / np.float32(layout.depth)) ** 2
    np.subtract(one, depth_left, out=depth_left)
    inside = np.minimum(np.maximum(depth_left * np.float32(50.0), zero), one)  # soft edge a few pixels wide
    skin_line = np.square(depth_left * np.float32(1 / 0.015))
    np.exp(-skin_line, out=skin_line)
    skin_line *= inside
    thickness = np.sqrt(np.maximum(depth_left, zero))  # compressed thickness of a half ellipsoid, 0..1
    del depth_left

    texture = _smooth_noise(rng, (height, width), (10, 8))
    texture *= np.float32(0.55)
    texture += np.float32(0.30) * _smooth_noise(rng, (height, width), (36, 28))
    texture += np.float32(0.15) * _smooth_noise(rng, (height, width), (110, 88))
    # Denser breasts have more of the noise field above the threshold: bright glandular islands in darker fat,
    # gathered behind the nipple where the breast is thick.
    gland_threshold = np.float32(rng.uniform(-0.3, 0.4))
    image = np.maximum(texture - gland_threshold, zero)
    image *= thickness
    image *= np.float32(0.35)
    # Fat brightness rises with thickness, concave like thickness ** 0.8 but cheaper: t * (2 - t).
    image += np.float32(0.25) + np.float32(0.55) * thickness * (np.float32(2.0) - thickness)
    image += np.float32(0.12) * skin_line
    image *= inside
    image *= level
    del skin_line, inside

    if view == "MLO":
        muscle_width, muscle_height = width * rng.uniform(0.18, 0.32), height * rng.uniform(0.30, 0.45)
        row_fraction = np.arange(height, dtype=np.float32)[:, None] / np.float32(muscle_height)
        col_fraction = cols / np.float32(muscle_width)
        # A slightly convex border, brightest at the corner; computed only in the corner's bounding box.
        box_rows, box_cols = min(height, int(muscle_height * 1.2) + 2), min(width, int(muscle_width * 1.2) + 2)
        row_fraction, col_fraction = row_fraction[:box_rows], col_fraction[:, :box_cols]
        muscle_depth = one - (col_fraction + row_fraction) + np.float32(0.15) * col_fraction * row_fraction
        muscle = (
            level
            * np.float32(rng.uniform(0.8, 0.95))
            * (
                np.float32(0.85)
                + np.float32(0.15) * np.minimum(np.maximum(muscle_depth, zero), one)
                + np.float32(0.05) * texture[:box_rows, :box_cols]
            )
            * np.minimum(np.maximum(muscle_depth * np.float32(1 / 0.03), zero), one)
        )
        np.maximum(image[:box_rows, :box_cols], muscle, out=image[:box_rows, :box_cols])
    del texture, thickness

    def point_inside_breast(max_radius_fraction: float) -> tuple[float, float]:
        radius_fraction = np.sqrt(rng.uniform(0.02, max_radius_fraction**2))
        angle = rng.uniform(-1.3, 1.3)
        half_height = layout.half_height_above if angle < 0 else layout.half_height_below
        return (
            layout.center_row + half_height * radius_fraction * np.sin(angle),
            layout.depth * radius_fraction * np.cos(angle),
        )

    if birads == 0 or breast_has_cancer:
        for _ in range(int(rng.integers(1, 4))):
            center_row, center_col = point_inside_breast(0.65)
            radius = height * rng.uniform(0.04, 0.08)
            _add_spherical_blob(image, center_row, center_col, radius, tissue_level * rng.uniform(0.7, 0.9))
    elif birads == 2:
        for _ in range(int(rng.integers(2, 7))):
            center_row, center_col = point_inside_breast(0.8)
            _add_spherical_blob(image, center_row, center_col, max(1.5, height * 0.003), tissue_level * 0.5)

    # Quantum noise grows with signal; the background keeps a small dark-current level.
    noise_std = image * np.float32(0.01)
    noise_std += np.float32(5.0)
    noise_std *= rng.standard_normal((height, width), dtype=np.float32)
    image += noise_std
    image += np.float32(12.0)
    del noise_std
    np.rint(image, out=image)
    np.minimum(np.maximum(image, zero, out=image), np.float32(MAX_12_BIT), out=image)
    pixels = image.astype(np.uint16)
    if laterality == "R":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return pixels, tissue_level


# ----------------------------------------------------------------------------------------------------------------------
# RSNA: DICOM
# ----------------------------------------------------------------------------------------------------------------------


def _rsna_dataset(
    row: pd.Series,
    display_pixels: np.ndarray,
    tissue_level: float,
    profile_index: int,
    rng: np.random.Generator,
):
    """The pydicom FileDataset for one row, pixel data not yet attached; returns (dataset, stored pixels)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

    photometric, voi_function, several_windows = RSNA_DISPLAY_PROFILES[profile_index]
    patient_id, image_id = int(row["patient_id"]), int(row["image_id"])
    # The real data's UIDs carry the patient and image ids under one root; ours do the same so they are deterministic.
    study_uid = f"1.2.840.10009.1.2.3.{patient_id}"
    series_uid = f"{study_uid}.1"
    instance_uid = f"{series_uid}.{image_id}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    meta.TransferSyntaxUID = UID(TRANSFER_SYNTAX_UIDS["explicit_vr_little"])
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientID = str(patient_id)
    ds.PatientName = str(patient_id)
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(row.name) + 1
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = row["laterality"]
    ds.ViewPosition = row["view"]
    ds.PatientOrientation = RSNA_PATIENT_ORIENTATION[(row["laterality"], row["view"])]
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "PRIMARY"]

    height, width = display_pixels.shape
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    ds.RescaleType = "US"
    ds.ImagerPixelSpacing = ["0.1", "0.1"]

    # Window from just above the background to above the brightest glands, so that masses over dense tissue stay
    # brighter than it; set from the tissue level, not from the pixels, so that it carries no label signal. For
    # MONOCHROME1 it is expressed in stored values, which are inverted.
    low, high = 250.0 * rng.uniform(0.9, 1.1), tissue_level * rng.uniform(1.9, 2.1)
    center, width_of_window = (low + high) / 2.0, max(high - low, 10.0)
    stored_pixels = display_pixels
    if photometric == "MONOCHROME1":
        stored_pixels = (MAX_12_BIT - display_pixels).astype(np.uint16)
        center = MAX_12_BIT - center
    if several_windows:
        ds.WindowCenter = [f"{center:.0f}", f"{center * 0.95:.0f}", f"{center * 1.05:.0f}"]
        ds.WindowWidth = [f"{width_of_window:.0f}", f"{width_of_window * 0.8:.0f}", f"{width_of_window * 1.2:.0f}"]
        ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER", "SOFTER"]
    else:
        ds.WindowCenter = f"{center:.0f}"
        ds.WindowWidth = f"{width_of_window:.0f}"
    ds.VOILUTFunction = voi_function
    return ds, np.ascontiguousarray(stored_pixels)


def _attach_pixels(ds, stored_pixels: np.ndarray, transfer_syntax: str) -> None:
    """Store the pixels in ``transfer_syntax``, losslessly."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    uid = UID(TRANSFER_SYNTAX_UIDS[transfer_syntax])
    if transfer_syntax == "explicit_vr_little":
        ds.PixelData = stored_pixels.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    elif transfer_syntax == "jpeg_lossless_sv1":
        # pydicom has no JPEG lossless encoder; libjpeg-turbo (via imagecodecs) writes process 14 with predictor 1.
        import imagecodecs

        frame = imagecodecs.jpeg8_encode(stored_pixels, lossless=True, predictor=1, bitspersample=12)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    else:
        # generate_instance_uid=False keeps the deterministic SOP Instance UID.
        ds.compress(uid, stored_pixels, generate_instance_uid=False)


def generate_rsna(
    out_dir,
    n_patients=40,
    image_shape=(512, 416),
    seed=0,
    transfer_syntaxes=("jpeg2000_lossless", "explicit_vr_little", "rle_lossless"),
    followup_fraction=0.35,
) -> pd.DataFrame:
    """Write an RSNA mammography lookalike and return its ``train.csv`` frame.

    Writes ``out_dir/train.csv`` (the 14 columns of the real data) and one DICOM per row at
    ``out_dir/train_images/<patient_id>/<image_id>.dcm``.

    Args:
        out_dir: output directory (created).
        n_patients: number of patients; each has 2-4 images.
        image_shape: (rows, columns) of every image in pixels; the real data is up to about (3328, 2560).
        seed: the same seed gives a byte-identical csv and identical DICOM files.
        transfer_syntaxes: names from :data:`TRANSFER_SYNTAX_UIDS`, cycled over the images.
        followup_fraction: share of BI-RADS 0 (follow-up needed) among the patients with a known BI-RADS; about
            45 % of patients (site 2) have no BI-RADS at all.
    """
    if int(n_patients) < 1:
        raise ValueError("n_patients must be positive")
    if not transfer_syntaxes:
        raise ValueError("transfer_syntaxes must name at least one transfer syntax")
    unknown = [name for name in transfer_syntaxes if name not in TRANSFER_SYNTAX_UIDS]
    if unknown:
        raise ValueError(f"unknown transfer syntaxes {unknown}; known: {sorted(TRANSFER_SYNTAX_UIDS)}")
    if not 0.0 <= followup_fraction <= 1.0:
        raise ValueError("followup_fraction must lie in [0, 1]")
    height, width = (int(v) for v in image_shape)
    if height < 32 or width < 32:
        raise ValueError("image_shape must be at least 32 x 32 pixels")

    out_dir = Path(out_dir)
    images_dir = out_dir / "train_images"
    images_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    patients = _rsna_patient_table(rng, int(n_patients), float(followup_fraction))
    table = _rsna_train_table(rng, patients)
    patient_by_id = patients.set_index("patient_id")

    for row_index, row in table.iterrows():
        patient = patient_by_id.loc[row["patient_id"]]
        # Each image has its own stream, so its pixels do not depend on how many images came before it.
        image_rng = np.random.default_rng([int(seed), int(row["patient_id"]), int(row["image_id"])])
        display_pixels, tissue_level = _rsna_pixels(
            image_rng,
            height,
            width,
            row["laterality"],
            row["view"],
            birads=float(patient["BIRADS"]),
            breast_has_cancer=bool(row["cancer"]),
        )
        transfer_syntax = transfer_syntaxes[row_index % len(transfer_syntaxes)]
        ds, stored = _rsna_dataset(row, display_pixels, tissue_level, int(patient["profile"]), image_rng)
        _attach_pixels(ds, stored, transfer_syntax)
        patient_dir = images_dir / str(row["patient_id"])
        patient_dir.mkdir(exist_ok=True)
        # Written atomically, so that an interrupted run leaves no truncated DICOM behind.
        with atomic_path(patient_dir / f"{row['image_id']}.dcm") as temporary:
            ds.save_as(temporary, enforce_file_format=True)

    with atomic_path(out_dir / "train.csv") as temporary:
        table.to_csv(temporary, index=False, lineterminator="\n")
    return table


# ----------------------------------------------------------------------------------------------------------------------
# LIDC
# ----------------------------------------------------------------------------------------------------------------------

#: Share of patches by the number of raters (of 4) who marked a nodule; every count appears once there are 5 patches.
LIDC_RATER_FRACTIONS = {0: 0.30, 1: 0.15, 2: 0.15, 3: 0.15, 4: 0.25}
#: Root of the LIDC-IDRI series UIDs.
LIDC_UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def _draw_vessel(
    image: np.ndarray, rng: np.random.Generator, lung: np.ndarray, through: tuple[float, float] | None = None
) -> None:
    """Add, in place, a gently curving vessel that tapers from 2.5 px to 0.8 px sigma, only where ``lung`` is 1.

    through: a point the vessel passes through (for nodule look-alikes); otherwise a random one.
    """
    size = image.shape[0]
    anchor = np.array(through if through is not None else rng.uniform(0, size, 2), dtype=np.float32)
    heading = rng.uniform(0, 2 * np.pi)
    turn_rate = rng.normal(0.0, 0.006)  # radians per pixel
    length = rng.uniform(50, 160)
    step = 1.5
    arc = np.arange(-length / 2, length / 2, step, dtype=np.float32)
    headings = heading + turn_rate * arc
    path = np.cumsum(np.stack([np.sin(headings), np.cos(headings)], axis=1) * step, axis=0)
    path += anchor - path[len(path) // 2]
    sigmas = np.linspace(rng.uniform(1.6, 2.5), rng.uniform(0.8, 1.2), len(path)).astype(np.float32)
    contrast = np.float32(rng.uniform(0.2, 0.35))
    grid_rows, grid_cols = np.mgrid[0:size, 0:size].astype(np.float32)
    squared = (grid_rows[..., None] - path[:, 0]) ** 2 + (grid_cols[..., None] - path[:, 1]) ** 2
    tube = np.exp(-squared / (2 * sigmas**2)).max(axis=-1)
    image += contrast * tube * lung


def _lidc_patch(rng: np.random.Generator, n_raters: int, size: int, lung_level: float) -> tuple[np.ndarray, list]:
    """One CT patch in [0, 1] (float32) and the 4 raters' masks (uint8 0/1).

    Lung parenchyma is dark with smooth texture; vessels are bright curved tubes; some patches show the chest wall.
    A nodule (n_raters >= 1) is a bright, slightly lobulated blob near the centre (the real crops are centred on the
    annotation): faint and small when one rater marked it, clear when two or more did. Each marking rater's mask
    outlines the nodule at a slightly different extent; the other raters' masks are empty.
    """
    image = np.float32(lung_level) + np.float32(0.03) * _smooth_noise(rng, (size, size), (10, 10))
    if rng.random() < 0.4:  # chest wall entering from one side, with a curved border
        side = int(rng.integers(4))
        coordinate = np.arange(size, dtype=np.float32)
        border = size * rng.uniform(0.05, 0.3) + size * 0.05 * np.sin(coordinate / size * np.pi * rng.uniform(0.5, 2))
        depth = coordinate[:, None] - border[None, :]  # positive beyond the border, per column
        wall = np.clip(-depth / 2.0 + 0.5, 0, 1)  # 1 inside the wall (first rows), soft 2 px edge
        wall = np.rot90(wall, side).astype(np.float32)
        image = image + np.float32(rng.uniform(0.35, 0.5)) * wall
        lung = 1.0 - wall
    else:
        lung = np.ones((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        _draw_vessel(image, rng, lung)
    center = size / 2 + rng.uniform(-8, 8, 2)
    if n_raters == 0 and rng.random() < 0.6:  # a look-alike: a vessel crossing the centre
        _draw_vessel(image, rng, lung, through=(center[0], center[1]))

    masks = [np.zeros((size, size), dtype=np.uint8) for _ in range(4)]
    if n_raters >= 1:
        if n_raters == 1:
            radius, contrast = rng.uniform(2.5, 4.0), rng.uniform(0.2, 0.3)
        elif n_raters == 2:
            radius, contrast = rng.uniform(4.0, 7.0), rng.uniform(0.45, 0.6)
        else:
            radius, contrast = rng.uniform(5.0, 12.0), rng.uniform(0.5, 0.7)
        grid_rows, grid_cols = np.mgrid[0:size, 0:size].astype(np.float32)
        offset_rows, offset_cols = grid_rows - np.float32(center[0]), grid_cols - np.float32(center[1])
        angle = np.arctan2(offset_rows, offset_cols)
        lobes = 1.0 + sum(
            rng.uniform(0.02, 0.08) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
        )
        relative_distance = np.sqrt(offset_rows**2 + offset_cols**2) / (np.float32(radius) * lobes)
        image += np.float32(contrast) * np.clip((1.0 - relative_distance) / np.float32(0.35), 0.0, 1.0)
        for rater in rng.choice(4, size=n_raters, replace=False):
            extent = 1.0 + rng.uniform(-0.15, 0.15)
            masks[int(rater)] = (relative_distance < extent).astype(np.uint8)

    image += np.float32(0.015) * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), masks


def generate_lidc(out_path, n_patients=20, patches_per_patient=6, seed=0, patch_size=128) -> dict:
    """Write an LIDC-IDRI lookalike pickle (Probabilistic U-Net layout) and return a summary.

    The pickle holds a dict ``"LIDC-IDRI-0001_slice_12_nodule_0" -> {"image": float32 (patch_size, patch_size) in
    [0, 1], "masks": list of 4 uint8 0/1 arrays, "series_uid": str}``; the patient id is the text before the first
    underscore.

    Returns:
        dict with ``path``, ``n_patients``, ``n_patches``, ``n_by_raters`` ({0..4: count}),
        ``n_at_least_2_raters`` and ``n_at_least_3_raters``.
    """
    n_patients, patches_per_patient, patch_size = int(n_patients), int(patches_per_patient), int(patch_size)
    if n_patients < 1 or patches_per_patient < 1:
        raise ValueError("n_patients and patches_per_patient must be positive")
    if patch_size < 32:
        raise ValueError("patch_size must be at least 32 pixels")
    rng = np.random.default_rng(seed)
    n_patches = n_patients * patches_per_patient
    counts = _exact_counts(n_patches, LIDC_RATER_FRACTIONS, ensure_each=True)
    raters_per_patch = np.repeat(list(counts), list(counts.values()))[rng.permutation(n_patches)]

    patient_numbers = np.sort(rng.choice(np.arange(1, max(1012, n_patients) + 1), size=n_patients, replace=False))
    data = {}
    for patient_index, patient_number in enumerate(patient_numbers):
        patient_id = f"LIDC-IDRI-{patient_number:04d}"
        series_uid = LIDC_UID_ROOT + str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, 29))
        lung_level = rng.uniform(0.05, 0.15)
        slices = np.sort(rng.choice(np.arange(20, 300), size=patches_per_patient, replace=False))
        for nodule_index, slice_index in enumerate(slices):
            n_raters = int(raters_per_patch[patient_index * patches_per_patient + nodule_index])
            image, masks = _lidc_patch(rng, n_raters, patch_size, lung_level)
            key = f"{patient_id}_slice_{slice_index}_nodule_{nodule_index}"
            data[key] = {"image": image, "masks": masks, "series_uid": series_uid}

    out_path = Path(out_path)
    with atomic_path(out_path) as temporary, open(temporary, "wb") as handle:
        pickle.dump(data, handle, protocol=4)

    n_by_raters = {k: int((raters_per_patch == k).sum()) for k in range(5)}
    return {
        "path": str(out_path),
        "n_patients": n_patients,
        "n_patches": n_patches,
        "n_by_raters": n_by_raters,
        "n_at_least_2_raters": int((raters_per_patch >= 2).sum()),
        "n_at_least_3_raters": int((raters_per_patch >= 3).sum()),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m leanmed.demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True)

    rsna = commands.add_parser("rsna", help="write train.csv and train_images/ of an RSNA lookalike")
    rsna.add_argument("out_dir")
    rsna.add_argument("--patients", type=int, default=40)
    rsna.add_argument("--height", type=int, default=512, help="image rows in pixels")
    rsna.add_argument("--width", type=int, default=416, help="image columns in pixels")
    rsna.add_argument("--seed", type=int, default=0)
    rsna.add_argument(
        "--transfer-syntaxes",
        default="jpeg2000_lossless,explicit_vr_little,rle_lossless",
        help=f"comma-separated, cycled over images; from {','.join(TRANSFER_SYNTAX_UIDS)}",
    )
    rsna.add_argument("--followup-fraction", type=float, default=0.35)

    lidc = commands.add_parser("lidc", help="write an LIDC-IDRI lookalike pickle")
    lidc.add_argument("out_path")
    lidc.add_argument("--patients", type=int, default=20)
    lidc.add_argument("--patches", type=int, default=6, help="patches per patient")
    lidc.add_argument("--seed", type=int, default=0)
    lidc.add_argument("--patch-size", type=int, default=128, help="patch side in pixels")

    args = parser.parse_args(argv)
    if args.dataset == "rsna":
        table = generate_rsna(
            args.out_dir,
            n_patients=args.patients,
            image_shape=(args.height, args.width),
            seed=args.seed,
            transfer_syntaxes=tuple(s.strip() for s in args.transfer_syntaxes.split(",") if s.strip()),
            followup_fraction=args.followup_fraction,
        )
        birads_counts = table.drop_duplicates("patient_id")["BIRADS"].value_counts(dropna=False).to_dict()
        print(
            f"wrote {len(table)} images of {table['patient_id'].nunique()} patients to {args.out_dir} "
            f"(patients by BI-RADS: {birads_counts})"
        )
    else:
        summary = generate_lidc(
            args.out_path,
            n_patients=args.patients,
            patches_per_patient=args.patches,
            seed=args.seed,
            patch_size=args.patch_size,
        )
        print(
            f"wrote {summary['n_patches']} patches to {summary['path']} "
            f"(by number of raters: {summary['n_by_raters']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
