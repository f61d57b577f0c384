"""Generated data in the formats of the real datasets, which cannot ship with the project.

Two generators:

* :func:`generate_rsna` writes a Kaggle "RSNA Screening Mammography Breast Cancer Detection" lookalike: ``train.csv``
  with the 14 real columns and one DICOM per row at ``train_images/<patient_id>/<image_id>.dcm`` (12-bit pixels in
  16-bit words, mixed transfer syntaxes, MONOCHROME1 and MONOCHROME2, LINEAR and SIGMOID VOI functions).
  Subjects with BI-RADS 0 (follow-up needed, the positive class of Selvan et al. 2023) mostly show a cluster of fine
  calcifications, the others a smooth density of the same brightness: the label signal has a controllable strength
  and scale (leanmed.demo.mammogram.RsnaDifficulty), checked by leanmed.demo.calibration.
* :func:`generate_lidc` writes a pickle shaped like the LIDC-IDRI crops of the Probabilistic U-Net: a dict of
  128x128 float32 CT patches in [0, 1], each with the masks of 4 raters (empty for raters who did not mark a nodule);
  ``borderline_fraction`` of the nodules marked by one or two raters look alike, so the image cannot tell their label.

Both are deterministic from their seed: the same seed gives a byte-identical ``train.csv``, identical DICOM files and
an identical pickle. Nothing is downloaded.

Command line (leanmed.demo.cli; not imported here, so that the generators' code fingerprint leaves it out)::

    python -m leanmed.demo rsna OUT_DIR --patients N --height H --width W --seed S
    python -m leanmed.demo lidc OUT.pickle --patients N --patches P --seed S
"""

from leanmed.demo.lidc import LIDC_RATER_FRACTIONS, LIDC_UID_ROOT, generate_lidc
from leanmed.demo.mammogram import MAX_12_BIT, RsnaDifficulty
from leanmed.demo.rsna import (
    MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS,
    RSNA_AGE_MISSING_FRACTION,
    RSNA_AGE_RANGE_YEARS,
    RSNA_BENIGN_SHARE_OF_NEGATIVES,
    RSNA_BIRADS_MISSING_FRACTION,
    RSNA_COLUMNS,
    RSNA_DISPLAY_PROFILES,
    RSNA_MACHINES_BY_SITE,
    RSNA_PATIENT_ORIENTATION,
    RSNA_STANDARD_VIEWS,
    TRANSFER_SYNTAX_UIDS,
    generate_rsna,
)

__all__ = [
    "LIDC_RATER_FRACTIONS",
    "LIDC_UID_ROOT",
    "MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS",
    "MAX_12_BIT",
    "RSNA_AGE_MISSING_FRACTION",
    "RSNA_AGE_RANGE_YEARS",
    "RSNA_BENIGN_SHARE_OF_NEGATIVES",
    "RSNA_BIRADS_MISSING_FRACTION",
    "RSNA_COLUMNS",
    "RSNA_DISPLAY_PROFILES",
    "RSNA_MACHINES_BY_SITE",
    "RSNA_PATIENT_ORIENTATION",
    "RSNA_STANDARD_VIEWS",
    "RsnaDifficulty",
    "TRANSFER_SYNTAX_UIDS",
    "generate_lidc",
    "generate_rsna",
]
