"""RSNA screening mammography cohort: read the Kaggle `train.csv`, filter it as the paper did, label it by BI-RADS,
and report every row dropped with its reason.

The paper (Selvan et al. 2023) kept images of subjects under 55 with a BI-RADS assessment: 3,199 subjects,
11,856 images, 3,953 follow-up vs 7,903 not. Its code (github.com/raghavian/redl, `data/preprocess_data.py`) keeps
`age < AGE` and non-missing BI-RADS, and its data set class labels an image `BIRADS > 0`, i.e. 1 = *no* follow-up.
leanmed follows the file contract in docs/architecture.md instead: label 1 = BI-RADS 0 (follow-up needed), 0 =
BI-RADS 1 or 2. Accuracy and ROC AUC do not depend on which class is called positive; sensitivity and
specificity swap.

BI-RADS in the Kaggle data: "0 if the breast required follow-up, 1 if the breast was rated as negative for cancer,
2 if the breast was rated as normal". Although it is defined per breast, in `train.csv` the other breast of a
follow-up patient carries no BI-RADS, so a patient has one value; a patient with two different valid values is
taken as a data error and dropped ("BIRADS conflicts within patient").

Each dropped row is counted under the first reason it fails, in the order of `DROP_REASONS`:

1. age missing (empty age);
2. age not numeric (e.g. "fifty");
3. age >= max_age (the paper: under 55);
4. BIRADS missing;
5. BIRADS not numeric;
6. BIRADS not in {0, 1, 2};
7. BIRADS conflicts within patient (two different values in {0, 1, 2} for one patient_id; all of that patient's
   rows that pass reasons 1-6 are dropped).

A kept row whose DICOM (`<images_dir>/<patient_id>/<image_id>.dcm`) is absent stays in the cohort: the conversion
excludes it ("file missing: <path>") and counts it toward `dicom.max_excluded_fraction`, so that a half-finished
download fails the run instead of silently shrinking the cohort. The report counts such rows for information
(section "info"; only when `check_files` and `images_dir` are given).
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leanmed.atomic import write_text_atomically
from leanmed.markdown import markdown_table

# Columns the cohort needs; a train.csv without any of them is rejected.
REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "image_id", "laterality", "view", "age", "BIRADS")

# The 14 columns of the real Kaggle train.csv, in its order; columns beyond these are kept but reported.
KAGGLE_TRAIN_COLUMNS: tuple[str, ...] = (
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
)

# BI-RADS value -> label (1 = follow-up needed).
BIRADS_TO_LABEL: dict[int, int] = {0: 1, 1: 0, 2: 0}

# The paper's cohort, for comparison in the report.
PAPER_COHORT = {"subjects": 3199, "images": 11856, "follow_up_images": 3953, "no_follow_up_images": 7903}

REASON_AGE_MISSING = "age missing"
REASON_AGE_NOT_NUMERIC = "age not numeric"
REASON_BIRADS_MISSING = "BIRADS missing"
REASON_BIRADS_NOT_NUMERIC = "BIRADS not numeric"
REASON_BIRADS_INVALID = "BIRADS not in {0, 1, 2}"
REASON_BIRADS_CONFLICT = "BIRADS conflicts within patient"
# Information row of the report (not a drop reason): kept rows whose DICOM is absent, excluded at conversion.
INFO_DICOM_ABSENT = "DICOM file absent (excluded at conversion)"

# How many offending rows or paths a warning or report cell lists before it says "and N more".
_MAX_LISTED = 10


def age_reason(max_age: float) -> str:
    """The drop reason for subjects too old for the cohort, e.g. "age >= 55"."""
    return f"age >= {max_age:g}"


def drop_reasons(max_age: float) -> list[str]:
    """Drop reasons in the order they are tested; a row is counted under the first one it fails."""
    return [
        REASON_AGE_MISSING,
        REASON_AGE_NOT_NUMERIC,
        age_reason(max_age),
        REASON_BIRADS_MISSING,
        REASON_BIRADS_NOT_NUMERIC,
        REASON_BIRADS_INVALID,
        REASON_BIRADS_CONFLICT,
    ]


DROP_REASONS: tuple[str, ...] = tuple(drop_reasons(55))


class CohortError(ValueError):
    """train.csv cannot be used: the message names the file and the column or rows at fault."""


class CohortWarning(UserWarning):
    """Rows of train.csv that will be dropped for bad values (named by file line, header = line 1)."""


@dataclass
class TrainCsv:
    """A validated train.csv.

    `frame`: all rows, in file order, index 0..n-1 (file line = index + 2); patient_id and image_id as text,
    age and BIRADS as floats (NaN where missing or not numeric), other columns as pandas reads them.
    `age_not_numeric` / `birads_not_numeric`: rows whose text was present but not a number.
    `birads_conflicts`: patient_id -> the different valid BI-RADS values (in {0, 1, 2}) found for that patient.
    `extra_columns`: columns beyond the 14 of the Kaggle file (kept, reported).
    """

    path: Path
    frame: pd.DataFrame
    age_not_numeric: pd.Series
    birads_not_numeric: pd.Series
    birads_conflicts: dict[str, list[int]] = field(default_factory=dict)
    extra_columns: tuple[str, ...] = ()


def _lines(index: pd.Index) -> str:
    """File line numbers of the frame rows `index` (header = line 1), shortened after `_MAX_LISTED`."""
    numbers = [str(position + 2) for position in index[:_MAX_LISTED]]
    more = f" and {len(index) - _MAX_LISTED} more" if len(index) > _MAX_LISTED else ""
    return ", ".join(numbers) + more


def _unreadable(path: Path, error: Exception) -> CohortError:
    """A CohortError naming the file for a train.csv that is no readable CSV text (the reader's words kept)."""
    if isinstance(error, UnicodeDecodeError):
        return CohortError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8 CSV")
    return CohortError(f"{path}: not a well-formed CSV file ({' '.join(str(error).split())})")


def _read_header(path: Path) -> list[str]:
    # utf-8-sig: a byte-order mark left by a spreadsheet export must not become part of the first column name.
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (UnicodeDecodeError, csv.Error) as error:
        raise _unreadable(path, error) from None
    while header and not header[-1].strip():  # a trailing comma (some exports end every line with one)
        header.pop()
    if not header:
        raise CohortError(f"{path}: empty file, expected a header with the columns {list(REQUIRED_COLUMNS)}")
    return header


def _check_no_data_beyond_the_header(path: Path, n_columns: int) -> None:
    """CohortError naming the file lines whose fields go on past the header's columns with anything but empty text
    (a value without a column: the row's columns cannot be trusted)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            lines = [number for number, row in enumerate(csv.reader(handle), start=1)
                     if len(row) > n_columns and any(field.strip() for field in row[n_columns:])]
    except (UnicodeDecodeError, csv.Error) as error:
        raise _unreadable(path, error) from None
    if lines:
        listed = ", ".join(map(str, lines[:_MAX_LISTED])) + (f" and {len(lines) - _MAX_LISTED} more"
                                                             if len(lines) > _MAX_LISTED else "")
        raise CohortError(f"{path}: line(s) {listed} have values beyond the header's {n_columns} columns")


def train_csv_columns(path: str | os.PathLike) -> list[str]:
    """The columns a cohort built from the train.csv at ``path`` carries on: the Kaggle 14, then any others its header
    names (read as the cohort reads it)."""
    header = _read_header(Path(path))
    return [*KAGGLE_TRAIN_COLUMNS, *(name for name in header if name not in KAGGLE_TRAIN_COLUMNS)]


def _coerce_numeric(frame: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """(numeric values with NaN for missing or bad text, mask of rows whose text was present but not a number)."""
    text = frame[column]
    numbers = pd.to_numeric(text, errors="coerce")
    not_numeric = text.notna() & numbers.isna()
    return numbers.astype(float), not_numeric


def read_train_csv(path: str | os.PathLike) -> TrainCsv:
    """Read and validate the Kaggle RSNA `train.csv` at `path`.

    Raises `CohortError` (naming the file and the columns or rows) when a column of `REQUIRED_COLUMNS` is
    missing, a column name is repeated, or patient_id / image_id is empty or image_id repeats (an image that
    cannot be located or would be counted twice). Age and BI-RADS texts that are not numbers become NaN and are
    recorded (with a `CohortWarning` naming the file lines); patients with two different valid BI-RADS values
    are recorded (with a warning). Columns beyond the Kaggle 14 are allowed and listed in `extra_columns`.
    """
    path = Path(path)
    header = _read_header(path)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CohortError(f"{path}: column(s) {repeated} appear more than once in the header")
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise CohortError(f"{path}: missing required column(s) {missing}; the header has {header}")

    # Ids stay text (patient folders are named by the text); age and BI-RADS are coerced below so that bad
    # values can be told apart from empty ones.
    text_columns = {"patient_id": str, "image_id": str, "age": str, "BIRADS": str}
    _check_no_data_beyond_the_header(path, len(header))
    try:
        with warnings.catch_warnings():
            # Only the header's columns: fields beyond them (checked above: empty, as a trailing comma leaves) are
            # dropped, on every row or some. Without it pandas took the first column as the index when every row had
            # one field more, and shifted every column by one.
            warnings.filterwarnings("ignore", category=pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=text_columns, encoding="utf-8-sig", index_col=False,
                                usecols=range(len(header)))
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise _unreadable(path, error) from None
    frame = frame.reset_index(drop=True)

    for column in ("patient_id", "image_id"):
        frame[column] = frame[column].str.strip()
        empty = frame.index[frame[column].isna() | (frame[column] == "")]
        if len(empty):
            raise CohortError(f"{path}: column {column!r} is empty on line(s) {_lines(empty)}")
    repeated_images = frame.index[frame["image_id"].duplicated(keep=False)]
    if len(repeated_images):
        values = sorted(frame.loc[repeated_images, "image_id"].unique().tolist())[:_MAX_LISTED]
        raise CohortError(
            f"{path}: column 'image_id' repeats the value(s) {values} on line(s) {_lines(repeated_images)}"
        )

    frame["age"], age_not_numeric = _coerce_numeric(frame, "age")
    if age_not_numeric.any():
        bad = frame.index[age_not_numeric]
        warnings.warn(
            f"{path}: column 'age' is not a number on line(s) {_lines(bad)}; "
            f"those rows are dropped ({REASON_AGE_NOT_NUMERIC!r})",
            CohortWarning,
            stacklevel=2,
        )
    raw_birads = frame["BIRADS"]
    frame["BIRADS"], birads_not_numeric = _coerce_numeric(frame, "BIRADS")
    if birads_not_numeric.any():
        bad = frame.index[birads_not_numeric]
        examples = sorted(set(raw_birads[bad].astype(str)))[:_MAX_LISTED]
        warnings.warn(
            f"{path}: column 'BIRADS' is not a number on line(s) {_lines(bad)} (values {examples}); "
            f"those rows are dropped ({REASON_BIRADS_NOT_NUMERIC!r})",
            CohortWarning,
            stacklevel=2,
        )

    valid = frame["BIRADS"].isin(list(BIRADS_TO_LABEL))
    values_per_patient = frame.loc[valid].groupby("patient_id")["BIRADS"].unique()
    conflicts = {
        patient: sorted(int(value) for value in values)
        for patient, values in values_per_patient.items()
        if len(values) > 1
    }
    if conflicts:
        listed = dict(list(conflicts.items())[:_MAX_LISTED])
        warnings.warn(
            f"{path}: {len(conflicts)} patient(s) have more than one BI-RADS value (patient_id: values) {listed}; "
            f"their rows are dropped ({REASON_BIRADS_CONFLICT!r})",
            CohortWarning,
            stacklevel=2,
        )

    extra = tuple(column for column in header if column not in KAGGLE_TRAIN_COLUMNS)
    return TrainCsv(
        path=path,
        frame=frame,
        age_not_numeric=age_not_numeric,
        birads_not_numeric=birads_not_numeric,
        birads_conflicts=conflicts,
        extra_columns=extra,
    )


def dicom_relative_path(patient_id: str, image_id: str) -> str:
    """Path of an image's DICOM relative to the Kaggle `train_images` folder: "<patient_id>/<image_id>.dcm"."""
    return f"{patient_id}/{image_id}.dcm"


def _first_failing_reason(
    table: TrainCsv, max_age: float, images_dir: Path | None, check_files: bool
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(reason per row, or None when kept; dicom_path per row; True for kept rows whose DICOM is absent)."""
    frame = table.frame
    age, birads = frame["age"], frame["BIRADS"]
    dicom_paths = pd.Series(
        [dicom_relative_path(p, i) for p, i in zip(frame["patient_id"], frame["image_id"])],
        index=frame.index,
        dtype=object,
    )
    checks: list[tuple[str, pd.Series]] = [
        (REASON_AGE_MISSING, age.isna() & ~table.age_not_numeric),
        (REASON_AGE_NOT_NUMERIC, table.age_not_numeric),
        (age_reason(max_age), age >= max_age),
        (REASON_BIRADS_MISSING, birads.isna() & ~table.birads_not_numeric),
        (REASON_BIRADS_NOT_NUMERIC, table.birads_not_numeric),
        (REASON_BIRADS_INVALID, birads.notna() & ~birads.isin(list(BIRADS_TO_LABEL))),
        (REASON_BIRADS_CONFLICT, frame["patient_id"].isin(list(table.birads_conflicts))),
    ]
    reasons = pd.Series(None, index=frame.index, dtype=object)
    for reason, failing in checks:
        reasons[failing & reasons.isna()] = reason
    absent = pd.Series(False, index=frame.index, dtype=bool)
    if check_files and images_dir is not None:
        # Only rows still kept are looked up: on the real data that saves tens of thousands of stat calls.
        candidates = reasons.index[reasons.isna()]
        absent[[row for row in candidates if not (images_dir / dicom_paths[row]).is_file()]] = True
    return reasons, dicom_paths, absent


def _listed(values: list[str]) -> str:
    more = f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else ""
    return "; ".join(values[:_MAX_LISTED]) + more


def build_cohort(
    train_csv: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    max_age: float = 55,
    check_files: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RSNA cohort from `train_csv` and its exclusion report.

    Keeps rows with age (years) < `max_age` and BI-RADS in {0, 1, 2}; see the module docstring for the drop
    reasons and their order. With `check_files` and `images_dir`, kept rows whose DICOM
    `<images_dir>/<patient_id>/<image_id>.dcm` does not exist are counted in the report and named in a warning;
    they stay in the cohort (the conversion excludes them, counted toward `dicom.max_excluded_fraction`).

    Returns `(cohort, report)`:

    - `cohort`: the kept train.csv rows in file order with all their columns (age float, BIRADS int), plus
      subject_id (= patient_id as text), label (int; 1 = BI-RADS 0, follow-up needed; 0 = BI-RADS 1 or 2) and
      dicom_path (relative to `images_dir`);
    - `report`: columns section, reason, images, subjects, detail. Rows: "input" (all rows), one "dropped" row
      per reason in order (zero counts included; subjects = patients with at least one image dropped for that
      reason), "dropped"/"all reasons" (subjects = patients left with no image), "kept"/"cohort", one "label" row
      per label, and "info"/`INFO_DICOM_ABSENT` (kept rows whose DICOM is absent; zero when files are not
      checked). Extra columns of the file are named in the input row's detail.
    """
    table = read_train_csv(train_csv)
    frame = table.frame
    images_path = Path(images_dir) if images_dir is not None else None
    reasons, dicom_paths, absent = _first_failing_reason(table, max_age, images_path, check_files)

    missing_files = dicom_paths[absent].tolist()
    if missing_files:
        warnings.warn(
            f"{table.path}: {len(missing_files)} image(s) of the cohort listed but their DICOM is absent under "
            f"{images_path}: {_listed(missing_files)}. They stay in the cohort; the conversion excludes them "
            "('file missing') and counts them toward dicom.max_excluded_fraction",
            CohortWarning,
            stacklevel=2,
        )

    kept_rows = reasons.isna()
    if not kept_rows.any():
        warnings.warn(
            f"{table.path}: no row passes the cohort filter (max_age {max_age:g})", CohortWarning, stacklevel=2
        )
    cohort = frame.loc[kept_rows].copy()
    cohort["BIRADS"] = cohort["BIRADS"].astype(int)
    cohort["subject_id"] = cohort["patient_id"].astype(str)
    cohort["label"] = cohort["BIRADS"].map(BIRADS_TO_LABEL).astype(int)
    cohort["dicom_path"] = dicom_paths[kept_rows]
    cohort = cohort.reset_index(drop=True)

    report = _cohort_report(table, reasons, dicom_paths, absent, cohort, max_age)
    return cohort, report


def _cohort_report(
    table: TrainCsv,
    reasons: pd.Series,
    dicom_paths: pd.Series,
    absent: pd.Series,
    cohort: pd.DataFrame,
    max_age: float,
) -> pd.DataFrame:
    frame = table.frame
    patients = frame["patient_id"]
    extra = f"; extra columns kept: {list(table.extra_columns)}" if table.extra_columns else ""
    rows = [
        {
            "section": "input",
            "reason": "rows in train.csv",
            "images": len(frame),
            "subjects": patients.nunique(),
            "detail": f"{table.path}{extra}",
        }
    ]
    for reason in drop_reasons(max_age):
        failing = reasons == reason
        if reason == REASON_BIRADS_CONFLICT:
            detail = _listed([f"{p}: {v}" for p, v in table.birads_conflicts.items()])
        elif failing.any():
            detail = "lines " + _lines(frame.index[failing])
        else:
            detail = ""
        rows.append(
            {
                "section": "dropped",
                "reason": reason,
                "images": int(failing.sum()),
                "subjects": int(patients[failing].nunique()),
                "detail": detail,
            }
        )
    kept_subjects = set(cohort["subject_id"])
    rows.append(
        {
            "section": "dropped",
            "reason": "all reasons",
            "images": int(reasons.notna().sum()),
            "subjects": len(set(patients) - kept_subjects),
            "detail": "subjects: patients left with no image",
        }
    )
    rows.append(
        {
            "section": "kept",
            "reason": "cohort",
            "images": len(cohort),
            "subjects": len(kept_subjects),
            "detail": f"age < {max_age:g}, BI-RADS in {{0, 1, 2}}",
        }
    )
    for label, name in ((1, "label 1: follow-up (BI-RADS 0)"), (0, "label 0: no follow-up (BI-RADS 1 or 2)")):
        part = cohort[cohort["label"] == label]
        rows.append(
            {
                "section": "label",
                "reason": name,
                "images": len(part),
                "subjects": part["subject_id"].nunique(),
                "detail": "",
            }
        )
    rows.append(
        {
            "section": "info",
            "reason": INFO_DICOM_ABSENT,
            "images": int(absent.sum()),
            "subjects": int(patients[absent].nunique()),
            "detail": _listed(dicom_paths[absent].tolist()),
        }
    )
    report = pd.DataFrame(rows, columns=["section", "reason", "images", "subjects", "detail"])
    report[["images", "subjects"]] = report[["images", "subjects"]].astype(np.int64)
    return report


def _report_count(report: pd.DataFrame, section: str, reason_prefix: str, column: str) -> int:
    match = report[(report["section"] == section) & report["reason"].str.startswith(reason_prefix)]
    return int(match[column].iloc[0]) if len(match) else 0


def write_cohort_report(report_df: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    """Write the cohort report (from `build_cohort`) as CSV and as Markdown (title line, the table, and a
    comparison with the paper's cohort: 3,199 subjects, 11,856 images, 3,953 follow-up vs 7,903 not); both
    files are written atomically."""
    write_text_atomically(csv_path, report_df.to_csv(index=False))
    subjects = _report_count(report_df, "kept", "cohort", "subjects")
    images = _report_count(report_df, "kept", "cohort", "images")
    follow_up = _report_count(report_df, "label", "label 1", "images")
    no_follow_up = _report_count(report_df, "label", "label 0", "images")
    paper = PAPER_COHORT
    lines = [
        "# RSNA cohort report",
        "",
        "Each dropped row is counted under the first reason it fails, in the order listed. "
        "For a drop reason, subjects = patients with at least one image dropped for it.",
        "",
        markdown_table(report_df),
        "## Compared with the paper",
        "",
        "| | subjects | images | follow-up images (label 1) | no follow-up images (label 0) |",
        "|---|---|---|---|---|",
        f"| Selvan et al. 2023 | {paper['subjects']:,} | {paper['images']:,} | {paper['follow_up_images']:,} "
        f"| {paper['no_follow_up_images']:,} |",
        f"| this cohort | {subjects:,} | {images:,} | {follow_up:,} | {no_follow_up:,} |",
        "",
        "The paper's code labels BIRADS > 0 as 1 (no follow-up); here 1 = BI-RADS 0 (follow-up), as in the "
        "split.csv contract.",
        "",
    ]
    write_text_atomically(md_path, "\n".join(lines))
