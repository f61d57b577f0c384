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

import importlib

#: Public name -> the module of leanmed.demo that defines it. Loaded on first use (PEP 562), so that running one
#: generator (``import leanmed.demo.lidc``) loads no code of the other: each generator's rule has its own code
#: fingerprint (leanmed.fingerprint), and an edit of the RSNA generator must not regenerate the LIDC pickle.
_EXPORTS = {
    "LIDC_RATER_FRACTIONS": "lidc",
    "LIDC_UID_ROOT": "lidc",
    "generate_lidc": "lidc",
    "MAX_12_BIT": "mammogram",
    "RsnaDifficulty": "mammogram",
    "MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS": "rsna",
    "RSNA_AGE_MISSING_FRACTION": "rsna",
    "RSNA_AGE_RANGE_YEARS": "rsna",
    "RSNA_BENIGN_SHARE_OF_NEGATIVES": "rsna",
    "RSNA_BIRADS_MISSING_FRACTION": "rsna",
    "RSNA_COLUMNS": "rsna",
    "RSNA_DISPLAY_PROFILES": "rsna",
    "RSNA_MACHINES_BY_SITE": "rsna",
    "RSNA_PATIENT_ORIENTATION": "rsna",
    "RSNA_STANDARD_VIEWS": "rsna",
    "TRANSFER_SYNTAX_UIDS": "rsna",
    "generate_rsna": "rsna",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'leanmed.demo' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"leanmed.demo.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
