"""Subject-level, label-stratified, seeded train/val/test split, its report, and the `split.csv` writer.

A subject (patient) lands in exactly one split, so no patient's images are seen in training and then scored in
validation or test. Subjects are stratified by their subject-level label (the maximum image label of the subject:
a subject with any positive image counts as positive), so each split gets about the same share of positive subjects.

The split is a pure function of the set of (subject, label) pairs, the fractions and the seed: the row order of the
input frame does not change it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from leanmed.atomic import write_text_atomically
from leanmed.markdown import markdown_table

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")

# Columns of `{dataset}/split.csv`, in order (docs/architecture.md, "File contracts").
SPLIT_CSV_COLUMNS: tuple[str, ...] = ("image_id", "subject_id", "label", "path", "split")

# Fractions are read from a YAML config; allow for decimal rounding such as 0.7 + 0.15 + 0.15.
_FRACTION_SUM_TOLERANCE = 1e-6


class SplitError(ValueError):
    """The split cannot be made or written as asked: bad fractions, too few subjects, or a frame that breaks the
    split contract. The message names the config key or the column at fault."""


def validate_fractions(fractions: Sequence[float] | Mapping[str, float]) -> tuple[float, float, float]:
    """Return (train, val, test) fractions of subjects, checked: three numbers, each in (0, 1), summing to 1.

    `fractions` is a sequence in the order train, val, test (as in `config.yaml`, key `split.fractions`) or a
    mapping with exactly the keys train, val and test. Errors name the config key `split.fractions`.
    """
    if isinstance(fractions, Mapping):
        if set(fractions) != set(SPLIT_NAMES):
            raise SplitError(
                f"split.fractions: expected the keys {list(SPLIT_NAMES)}, got {sorted(map(str, fractions))}"
            )
        values = [fractions[name] for name in SPLIT_NAMES]
    elif isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence):
        raise SplitError(f"split.fractions: expected three numbers (train, val, test), got {fractions!r}")
    else:
        values = list(fractions)
    if len(values) != len(SPLIT_NAMES):
        raise SplitError(f"split.fractions: expected three numbers (train, val, test), got {len(values)}: {values}")
    checked: list[float] = []
    for name, value in zip(SPLIT_NAMES, values):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise SplitError(f"split.fractions: the {name} fraction must be a number, got {value!r}")
        number = float(value)
        if not (0.0 < number < 1.0):
            raise SplitError(f"split.fractions: the {name} fraction must lie strictly between 0 and 1, got {value}")
        checked.append(number)
    total = sum(checked)
    if abs(total - 1.0) > _FRACTION_SUM_TOLERANCE:
        raise SplitError(f"split.fractions: the fractions must sum to 1, got {checked} (sum {total:.6g})")
    return checked[0], checked[1], checked[2]


def _largest_remainder(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts summing to `total`, each as close to `total * fraction` as rounding allows (Hamilton's
    method; ties go to the earlier split, so train before val before test)."""
    ideal = [total * fraction for fraction in fractions]
    counts = [math.floor(value) for value in ideal]
    order = sorted(range(len(fractions)), key=lambda index: (-(ideal[index] - counts[index]), index))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def _allocate(stratum_sizes: Sequence[int], split_totals: Sequence[int], fractions: Sequence[float]) -> np.ndarray:
    """Subjects to draw from each stratum (rows) for each split (columns).

    Row sums equal the stratum sizes and column sums equal `split_totals` exactly, so the subject fractions are
    as exact as for an unstratified split; each cell starts at floor(size * fraction) and the remaining units go
    to the cells with the largest rounding remainders (controlled rounding), so each stratum's share per split is
    within about one subject of ideal.
    """
    ideal = np.array([[size * fraction for fraction in fractions] for size in stratum_sizes], dtype=float)
    allocation = np.floor(ideal).astype(int)
    row_left = np.asarray(stratum_sizes, dtype=int) - allocation.sum(axis=1)
    column_left = np.asarray(split_totals, dtype=int) - allocation.sum(axis=0)
    remainders = ideal - allocation
    cells = sorted(
        ((row, column) for row in range(len(stratum_sizes)) for column in range(len(fractions))),
        key=lambda cell: (-remainders[cell], cell),
    )
    # Each pass hands at most one unit per cell; while units remain, some row and some column both still need
    # one, so every pass makes progress and the loop ends.
    while row_left.sum() > 0:
        for row, column in cells:
            if row_left[row] > 0 and column_left[column] > 0:
                allocation[row, column] += 1
                row_left[row] -= 1
                column_left[column] -= 1
    return allocation


def subject_labels(df: pd.DataFrame, subject_col: str = "subject_id", label_col: str = "label") -> pd.Series:
    """Subject-level label: the maximum image label of each subject (any positive image makes it positive)."""
    return df.groupby(subject_col, sort=True)[label_col].max()


def _as_text(value: object) -> str:
    """A stratification value as text: "" for an empty one, whole floats without ".0" (a column with empty values
    is read as floats)."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _subject_value(values: pd.Series) -> str:
    """One subject's value of a stratification column: the most frequent among its images (ties: the smallest in
    text order), as text; empty values count as ""."""
    counts = values.map(_as_text).value_counts()
    return min(counts.index[counts == counts.max()])


def _subject_strata(df: pd.DataFrame, labels_by_subject: pd.Series, subject_col: str,
                    stratify_by: tuple[str, ...]) -> pd.Series:
    """Each subject's stratum: its label alone, or (label, value, ...) with the `stratify_by` columns."""
    if not stratify_by:
        return labels_by_subject
    values = df.groupby(subject_col, sort=True)[list(stratify_by)].agg(_subject_value)
    keys = [(label, *values.loc[subject]) for subject, label in labels_by_subject.items()]
    return pd.Series(keys, index=labels_by_subject.index, dtype=object)


def _stratum_order(stratum) -> tuple:
    """Strata in a fixed order: by label, then by the stratification values as text."""
    if isinstance(stratum, tuple):
        return (stratum[0], *map(str, stratum[1:]))
    return (stratum,)


def _check_split_input(df: pd.DataFrame, subject_col: str, label_col: str) -> None:
    missing = [column for column in (subject_col, label_col) if column not in df.columns]
    if missing:
        raise SplitError(f"subject_split: missing column(s) {missing}; the frame has {list(df.columns)}")
    if df[subject_col].isna().any():
        rows = df.index[df[subject_col].isna()].tolist()[:10]
        raise SplitError(f"subject_split: column {subject_col!r} is empty in rows {rows}")
    if df[label_col].isna().any():
        rows = df.index[df[label_col].isna()].tolist()[:10]
        raise SplitError(f"subject_split: column {label_col!r} is empty in rows {rows}")


def subject_split(
    df: pd.DataFrame,
    fractions: Sequence[float] | Mapping[str, float] = (0.6, 0.2, 0.2),
    seed: int = 42,
    subject_col: str = "subject_id",
    label_col: str = "label",
    stratify_by: Sequence[str] = (),
) -> pd.DataFrame:
    """Assign every row (image) of `df` to train, val or test by subject, stratified by subject-level label.

    - `fractions`: fractions of *subjects* (not images) for train, val and test; they must sum to 1
      (see `validate_fractions`). Split sizes are the largest-remainder rounding of n_subjects * fraction, so for
      the paper's 3,199 RSNA subjects and (0.6, 0.2, 0.2) they are 1919 / 640 / 640, as in the paper.
    - Stratification: subjects are grouped by their subject-level label (`subject_labels`); within each group
      they are shuffled with `numpy.random.default_rng(seed)` (after sorting the subject ids, so the result does
      not depend on the row order of `df`) and dealt out so that each split gets the same share of each group,
      to within about one subject.
    - `stratify_by`: further subject-level columns to stratify on (e.g. the RSNA `machine_id`): the groups are then
      (label, value, ...), so that each split gets the same share of every machine's positive and negative
      subjects. A subject's value is the most frequent one among its images (ties: the smallest in text order);
      an empty value is a group of its own. Without it, a small validation split can hold one scanner's images
      mostly in one class by chance, and early stopping and test figures then measure the scanner.
    - `seed`: the same seed and the same set of subjects and labels (and stratification values) give the same split.

    Returns a copy of `df` with a new column "split" holding "train", "val" or "test". Raises `SplitError` when
    the fractions are invalid (naming `split.fractions`), a column is missing or empty, or there are too few
    subjects to give every split at least one.
    """
    train_fraction, val_fraction, test_fraction = validate_fractions(fractions)
    split_fractions = (train_fraction, val_fraction, test_fraction)
    _check_split_input(df, subject_col, label_col)
    missing = [column for column in stratify_by if column not in df.columns]
    if missing:
        raise SplitError(
            f"split.stratify_by: no column(s) {missing} to stratify on; the images have {list(df.columns)}"
        )
    if "split" in df.columns:
        raise SplitError("subject_split: the frame already has a 'split' column; drop it first")

    labels_by_subject = subject_labels(df, subject_col, label_col)
    n_subjects = len(labels_by_subject)
    split_totals = _largest_remainder(n_subjects, split_fractions)
    if min(split_totals) < 1:
        raise SplitError(
            f"subject_split: {n_subjects} subject(s) cannot fill the splits {dict(zip(SPLIT_NAMES, split_totals))} "
            f"with split.fractions {list(split_fractions)}: every split needs at least one subject"
        )

    stratum_of_subject = _subject_strata(df, labels_by_subject, subject_col, tuple(stratify_by))
    strata = sorted(stratum_of_subject.unique().tolist(), key=_stratum_order)
    members = {stratum: stratum_of_subject.index[stratum_of_subject == stratum] for stratum in strata}
    allocation = _allocate([len(members[stratum]) for stratum in strata], split_totals, split_fractions)

    rng = np.random.default_rng(seed)
    split_of_subject: dict[object, str] = {}
    for row, stratum in enumerate(strata):
        # Sort by the text form so that subject ids of mixed types still have one well-defined order.
        ordered = sorted(members[stratum].tolist(), key=lambda subject: (str(subject), repr(type(subject))))
        shuffled = [ordered[position] for position in rng.permutation(len(ordered))]
        start = 0
        for column, name in enumerate(SPLIT_NAMES):
            stop = start + int(allocation[row, column])
            for subject in shuffled[start:stop]:
                split_of_subject[subject] = name
            start = stop

    result = df.copy()
    result["split"] = result[subject_col].map(split_of_subject)
    return result


def with_stratification_columns(images: pd.DataFrame, cohort: pd.DataFrame | None, columns: Sequence[str],
                                key: str = "split.stratify_by") -> pd.DataFrame:
    """`images` with the stratification `columns` it lacks taken from `cohort` (one row per image, matched on
    image_id; the RSNA cohort holds machine_id and site_id). Raises `SplitError` naming `key` when a column is in
    neither table, or an image has no cohort row."""
    wanted = [column for column in columns if column not in images.columns]
    if not wanted:
        return images
    available = sorted(set(images.columns) | (set(cohort.columns) if cohort is not None else set()))
    unknown = [column for column in wanted if cohort is None or column not in cohort.columns]
    if unknown:
        raise SplitError(f"{key}: no column(s) {unknown} in the images or the cohort; available: {available}")
    merged = images.merge(cohort[["image_id", *wanted]].drop_duplicates("image_id"), on="image_id", how="left",
                          indicator=True)
    unmatched = merged.loc[merged["_merge"] != "both", "image_id"].tolist()
    if unmatched:
        raise SplitError(f"{key}: {len(unmatched)} image(s) without a cohort row to take {wanted} from, e.g. "
                         f"{unmatched[:5]}")
    return merged.drop(columns="_merge")


def _check_no_subject_leak(df: pd.DataFrame, subject_col: str, where: str) -> None:
    """SplitError (prefixed with ``where``: the function and file) when a subject's images lie in two splits."""
    splits_per_subject = df.groupby(subject_col)["split"].nunique()
    leaking = splits_per_subject.index[splits_per_subject > 1].tolist()
    if leaking:
        raise SplitError(f"{where}: column {subject_col!r}: {len(leaking)} subject(s) with images in more than one "
                         f"split (first {min(len(leaking), 10)}): {leaking[:10]}")


def split_report(df: pd.DataFrame, subject_col: str = "subject_id", label_col: str = "label") -> pd.DataFrame:
    """Counts per split of a frame with a "split" column, plus an "all" row.

    Columns: split; subjects (distinct subjects); images (rows); positives and negatives (images with label 1 and
    0); positive_share (positives / images, a fraction in [0, 1]); positive_subjects (subjects whose subject-level
    label is 1); subject_fraction (subjects / all subjects).
    """
    for column in (subject_col, label_col, "split"):
        if column not in df.columns:
            raise SplitError(f"split_report: missing column {column!r}; the frame has {list(df.columns)}")
    total_subjects = df[subject_col].nunique()
    rows = []
    for name in (*SPLIT_NAMES, "all"):
        part = df if name == "all" else df[df["split"] == name]
        images = len(part)
        positives = int((part[label_col] == 1).sum())
        subjects = int(part[subject_col].nunique())
        rows.append(
            {
                "split": name,
                "subjects": subjects,
                "images": images,
                "positives": positives,
                "negatives": int((part[label_col] == 0).sum()),
                "positive_share": positives / images if images else float("nan"),
                "positive_subjects": int((subject_labels(part, subject_col, label_col) == 1).sum()),
                "subject_fraction": subjects / total_subjects if total_subjects else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def stratum_report(df: pd.DataFrame, column: str, subject_col: str = "subject_id", label_col: str = "label"
                   ) -> pd.DataFrame:
    """Subjects per value of a stratification column and split, positive and negative apart: one row per value,
    columns "<split> positive" and "<split> negative" (subject counts; a subject's value as `subject_split` takes
    it), so that a value whose images lie mostly in one class of one split shows."""
    labels = subject_labels(df, subject_col, label_col)
    values = df.groupby(subject_col, sort=True)[column].agg(_subject_value)
    splits = df.groupby(subject_col, sort=True)["split"].first()
    subjects = pd.DataFrame({column: values, "label": labels, "split": splits})
    rows = []
    for value in sorted(subjects[column].unique(), key=str):
        of_value = subjects[subjects[column] == value]
        row = {column: value if value != "" else "(empty)"}
        for name in SPLIT_NAMES:
            in_split = of_value[of_value["split"] == name]
            row[f"{name} positive"] = int((in_split["label"] == 1).sum())
            row[f"{name} negative"] = int((in_split["label"] == 0).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def write_split_report(
    df: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    title: str = "Split report",
    subject_col: str = "subject_id",
    label_col: str = "label",
    stratify_by: Sequence[str] = (),
) -> pd.DataFrame:
    """Compute `split_report(df)` for the split frame `df` and write it as CSV and as Markdown (a title line, a
    sentence on how the split was made, the table, and per `stratify_by` column its `stratum_report`); both
    atomically. Returns the report."""
    report = split_report(df, subject_col, label_col)
    write_text_atomically(csv_path, report.to_csv(index=False))
    strata = "subject label (max image label)" + "".join(f" and {column}" for column in stratify_by)
    lines = [
        f"# {title}",
        "",
        f"Subject-level split (no subject in two splits), stratified by {strata}. "
        "positives/negatives count images; positive_share = positives / images.",
        "",
        markdown_table(report),
    ]
    for column in stratify_by:
        lines += ["", f"Subjects per {column}, split and label:", "", markdown_table(stratum_report(df, column))]
    write_text_atomically(md_path, "\n".join(lines))
    return report


def write_split_csv(df: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Write `split.csv` with exactly the contract's columns (image_id, subject_id, label, path, split).

    Checks before writing: all five columns present; image_id unique; label 0 or 1; split one of
    train/val/test; no subject in two splits. `path` is written as given (it must already be relative to the
    directory holding split.csv). Ids are written as text. Returns the frame written.
    """
    missing = [column for column in SPLIT_CSV_COLUMNS if column not in df.columns]
    if missing:
        raise SplitError(f"write_split_csv({path}): missing column(s) {missing}; the frame has {list(df.columns)}")
    out = df.loc[:, list(SPLIT_CSV_COLUMNS)].copy()
    for column in SPLIT_CSV_COLUMNS:
        if out[column].isna().any():
            rows = out.index[out[column].isna()].tolist()[:10]
            raise SplitError(f"write_split_csv({path}): column {column!r} is empty in rows {rows}")
    out["image_id"] = out["image_id"].astype(str)
    out["subject_id"] = out["subject_id"].astype(str)
    duplicated = out["image_id"][out["image_id"].duplicated()].unique().tolist()
    if duplicated:
        raise SplitError(f"write_split_csv({path}): image_id not unique: {duplicated[:10]}")
    bad_labels = sorted(set(out["label"].tolist()) - {0, 1})
    if bad_labels:
        raise SplitError(f"write_split_csv({path}): column 'label' must be 0 or 1, found {bad_labels[:10]}")
    out["label"] = out["label"].astype(int)
    bad_splits = sorted(set(out["split"].astype(str)) - set(SPLIT_NAMES))
    if bad_splits:
        raise SplitError(
            f"write_split_csv({path}): column 'split' must be one of {list(SPLIT_NAMES)}, " f"found {bad_splits}"
        )
    _check_no_subject_leak(out, "subject_id", f"write_split_csv({path})")
    write_text_atomically(path, out.to_csv(index=False))
    return out
