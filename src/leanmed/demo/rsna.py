"""An RSNA screening mammography lookalike: Kaggle's ``train.csv`` (the 14 real columns) and one DICOM per row.

``train_images/<patient_id>/<image_id>.dcm``: 12-bit pixels in 16-bit words, mixed transfer syntaxes, MONOCHROME1 and
MONOCHROME2, LINEAR and SIGMOID VOI functions. What the pixels show, and how hard the BI-RADS label is to predict from
them, is leanmed.demo.mammogram's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leanmed.atomic import atomic_path
from leanmed.data.rsna import KAGGLE_TRAIN_COLUMNS
from leanmed.demo.mammogram import MAX_12_BIT, RsnaDifficulty, draw_subject_appearance, mammogram_pixels
from leanmed.demo.sampling import unique_integers


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

#: Site 2 of the real data reports neither BI-RADS nor density (about half the images): its patients get NaN for both
#: (the default of generate_rsna's ``birads_missing_fraction``).
RSNA_BIRADS_MISSING_FRACTION = 0.45
#: Share of patients whose age is missing (the real data has a handful).
RSNA_AGE_MISSING_FRACTION = 0.05
#: Ages are drawn uniformly from this closed range, in years, so that an "age < 55" filter keeps about half (the
#: default of generate_rsna's ``age_range``).
RSNA_AGE_RANGE_YEARS = (30, 80)
#: Share of BI-RADS 2 (benign finding) among the patients with a known BI-RADS other than 0.
RSNA_BENIGN_SHARE_OF_NEGATIVES = 1 / 3

#: Machines seen at each site of the real data (ids only; which machine made an image carries no label signal here).
#: Each machine has one display profile, as a scanner has its display settings: the machine at index i of its site
#: uses RSNA_DISPLAY_PROFILES[i % 4].
RSNA_MACHINES_BY_SITE = {1: (21, 29, 93, 216), 2: (48, 49, 170, 190, 197, 210)}

#: Display profiles cycled over patients so that every mix appears in any dataset of 4 or more patients (each patient
#: then gets one of the machines with that profile): (photometric interpretation, VOI LUT function, whether the window
#: attributes hold 3 values as on some real scanners). SIGMOID displays darker than LINEAR for the same window.
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
# RSNA: metadata
# ----------------------------------------------------------------------------------------------------------------------


def _machines_with_profile(site: int, profile: int) -> tuple[int, ...]:
    """The machines of ``site`` whose display profile is RSNA_DISPLAY_PROFILES[profile]."""
    machines = RSNA_MACHINES_BY_SITE[site]
    return tuple(machines[index] for index in range(profile, len(machines), len(RSNA_DISPLAY_PROFILES)))


def _rsna_patient_table(
    rng: np.random.Generator,
    n_patients: int,
    followup_fraction: float,
    birads_missing_fraction: float,
    age_range: tuple[int, int],
    difficulty: RsnaDifficulty,
) -> pd.DataFrame:
    """One row per patient: ids, site, machine, age, BI-RADS, density, cancer and biopsy side, display profile, and
    the appearance of their images (``appearance``: a SubjectAppearance)."""
    patient_ids = unique_integers(rng, n_patients, 10000, 65535)

    n_birads_missing = int(round(birads_missing_fraction * n_patients))
    n_birads_known = n_patients - n_birads_missing
    n_followup = int(round(followup_fraction * n_birads_known))
    if followup_fraction > 0 and n_birads_known >= 2:
        n_followup = min(max(n_followup, 1), n_birads_known - 1)
    n_benign = int(round(RSNA_BENIGN_SHARE_OF_NEGATIVES * (n_birads_known - n_followup)))
    n_normal = n_birads_known - n_followup - n_benign
    birads = np.array([0.0] * n_followup + [1.0] * n_normal + [2.0] * n_benign + [np.nan] * n_birads_missing)
    birads = birads[rng.permutation(n_patients)]
    site = np.where(np.isnan(birads), 2, 1)

    ages = rng.integers(age_range[0], age_range[1] + 1, size=n_patients).astype(float)
    n_age_missing = int(round(RSNA_AGE_MISSING_FRACTION * n_patients))
    if n_patients >= 10:
        n_age_missing = max(n_age_missing, 1)
    ages[rng.choice(n_patients, size=n_age_missing, replace=False)] = np.nan

    profile = np.arange(n_patients) % len(RSNA_DISPLAY_PROFILES)
    machine = np.array([rng.choice(_machines_with_profile(s, p)) for s, p in zip(site, profile)], dtype=np.int64)
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
    # Site 2 reports no BI-RADS: its subjects show a finding when they have a cancer.
    appearance = [
        draw_subject_appearance(rng, bool(b == 0) if not np.isnan(b) else bool(c), difficulty)
        for b, c in zip(birads, has_cancer)
    ]

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
            "appearance": appearance,
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
    table["image_id"] = rng.permutation(unique_integers(rng, len(table), 10**6, 2**31 - 1))
    table["age"] = table["age"].astype(float)
    table["BIRADS"] = table["BIRADS"].astype(float)
    table["density"] = table["density"].astype(object)
    return table


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
    difficulty: RsnaDifficulty | None = None,
    birads_missing_fraction: float = RSNA_BIRADS_MISSING_FRACTION,
    age_range: tuple[int, int] = RSNA_AGE_RANGE_YEARS,
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
        followup_fraction: share of BI-RADS 0 (follow-up needed) among the patients with a known BI-RADS.
        difficulty: how hard the labels are to predict (RsnaDifficulty; its defaults when None).
        birads_missing_fraction: share of patients (site 2) with no BI-RADS at all, whom the cohort drops; the real
            data has about 45 %.
        age_range: (youngest, oldest) age in years, drawn uniformly; the cohort keeps those under cohort.rsna.max_age.
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
    if not 0.0 <= birads_missing_fraction <= 1.0:
        raise ValueError("birads_missing_fraction must lie in [0, 1]")
    if not 0 <= age_range[0] <= age_range[1]:
        raise ValueError(f"age_range must be (youngest, oldest) with 0 <= youngest <= oldest, got {age_range}")
    difficulty = difficulty if difficulty is not None else RsnaDifficulty()
    height, width = (int(v) for v in image_shape)
    if height < 32 or width < 32:
        raise ValueError("image_shape must be at least 32 x 32 pixels")

    out_dir = Path(out_dir)
    images_dir = out_dir / "train_images"
    images_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    patients = _rsna_patient_table(
        rng, int(n_patients), float(followup_fraction), float(birads_missing_fraction), tuple(age_range), difficulty
    )
    table = _rsna_train_table(rng, patients)
    patient_by_id = patients.set_index("patient_id")

    for row_index, row in table.iterrows():
        patient = patient_by_id.loc[row["patient_id"]]
        # Each image has its own stream, so its pixels do not depend on how many images came before it.
        image_rng = np.random.default_rng([int(seed), int(row["patient_id"]), int(row["image_id"])])
        display_pixels, tissue_level = mammogram_pixels(
            image_rng,
            height,
            width,
            row["laterality"],
            row["view"],
            birads=float(patient["BIRADS"]),
            subject=patient["appearance"],
            difficulty=difficulty,
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


def remove_other_dicoms(out_dir, table: pd.DataFrame) -> list[Path]:
    """Delete the DICOMs under ``out_dir/train_images`` that no row of ``table`` (``generate_rsna``'s) names, then the
    patient folders this leaves empty; return the deleted files, sorted. For the workflow's own demo folder: data
    generated before with other knobs (more patients, another seed) left DICOMs that a fresh generation has not
    (found by a real rerun: 324 of them)."""
    images_dir = Path(out_dir) / "train_images"
    current = {images_dir / str(patient) / f"{image}.dcm"
               for patient, image in zip(table["patient_id"], table["image_id"])}
    other = sorted(path for path in images_dir.glob("*/*.dcm") if path not in current)
    for path in other:
        path.unlink()
    for folder in sorted({path.parent for path in other}):
        if not any(folder.iterdir()):
            folder.rmdir()
    return other
