"""RSNA cohort: filter, labels, drop reasons and their counts, column validation, report files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from leanmed.data import rsna

HEADER = list(rsna.KAGGLE_TRAIN_COLUMNS) + ["reader_note"]

# (patient_id, image_id, laterality, view, age, BIRADS) for a crafted train.csv; the comment says what happens.
ROWS = [
    ("10001", "101", "L", "CC", "40.0", "1.0"),  # kept, label 0
    ("10001", "102", "L", "MLO", "40.0", "1.0"),  # kept, label 0
    ("10002", "201", "R", "CC", "50", "0"),  # kept, label 1
    ("10002", "202", "R", "MLO", "50", "0"),  # kept, label 1
    ("10003", "301", "L", "CC", "54.9", "2"),  # kept, label 0 (just under 55)
    ("10004", "401", "L", "CC", "55", "1"),  # age >= 55 (boundary)
    ("10005", "501", "L", "CC", "70", "0"),  # age >= 55
    ("10005", "502", "L", "MLO", "70", "0"),  # age >= 55
    ("10006", "601", "L", "CC", "", "1"),  # age missing
    ("10007", "701", "L", "CC", "fifty", "1"),  # age not numeric
    ("10008", "801", "L", "CC", "45", ""),  # BIRADS missing
    ("10008", "802", "L", "MLO", "45", ""),  # BIRADS missing
    ("10009", "901", "L", "CC", "45", "3"),  # BIRADS not in {0, 1, 2}
    ("10010", "1001", "L", "CC", "45", "x"),  # BIRADS not numeric
    ("10011", "1101", "L", "CC", "45", "0"),  # BIRADS conflicts within patient
    ("10011", "1102", "R", "CC", "45", "1"),  # BIRADS conflicts within patient
    ("10012", "1201", "L", "CC", "45", "1"),  # kept, label 0
    ("10012", "1202", "L", "MLO", "45", "1"),  # DICOM file absent: kept, excluded at conversion
    ("10013", "1301", "L", "CC", "60", ""),  # age >= 55 (first failing reason, also no BI-RADS)
]
MISSING_DICOM = "10012/1202.dcm"


def write_train_csv(path: Path, rows=ROWS, header=HEADER) -> Path:
    lines = [",".join(header)]
    for patient, image, laterality, view, age, birads in rows:
        values = {
            "site_id": "1",
            "patient_id": patient,
            "image_id": image,
            "laterality": laterality,
            "view": view,
            "age": age,
            "cancer": "0",
            "biopsy": "0",
            "invasive": "0",
            "BIRADS": birads,
            "implant": "0",
            "density": "B",
            "machine_id": "49",
            "difficult_negative_case": "False",
            "reader_note": "ok",
        }
        lines.append(",".join(values[column] for column in header))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def crafted(tmp_path):
    csv_path = write_train_csv(tmp_path / "train.csv")
    images_dir = tmp_path / "train_images"
    for patient, image, *_ in ROWS:
        relative = f"{patient}/{image}.dcm"
        if relative != MISSING_DICOM:
            (images_dir / patient).mkdir(parents=True, exist_ok=True)
            (images_dir / relative).write_bytes(b"DICM")
    return csv_path, images_dir


def build(csv_path, images_dir, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rsna.CohortWarning)
        return rsna.build_cohort(csv_path, images_dir, **kwargs)


def counts(report: pd.DataFrame, section: str) -> dict[str, tuple[int, int]]:
    part = report[report["section"] == section]
    return {reason: (images, subjects) for reason, images, subjects in part[["reason", "images", "subjects"]].values}


def test_cohort_keeps_exactly_the_eligible_rows_with_labels_and_paths(crafted):
    cohort, _ = build(*crafted)
    # 1202's DICOM is absent: it stays, the conversion excludes it and counts it toward the exclusion limit.
    assert cohort["image_id"].tolist() == ["101", "102", "201", "202", "301", "1201", "1202"]
    assert cohort["label"].tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert cohort["subject_id"].tolist() == ["10001", "10001", "10002", "10002", "10003", "10012", "10012"]
    assert cohort["dicom_path"].tolist() == [
        "10001/101.dcm",
        "10001/102.dcm",
        "10002/201.dcm",
        "10002/202.dcm",
        "10003/301.dcm",
        "10012/1201.dcm",
        MISSING_DICOM,
    ]
    assert cohort["BIRADS"].tolist() == [1, 1, 0, 0, 2, 1, 1]
    assert cohort["label"].dtype.kind == "i"
    # train.csv columns are all kept, extra ones included, then the three added ones.
    assert list(cohort.columns) == HEADER + ["subject_id", "label", "dicom_path"]


def test_report_counts_images_and_subjects_per_drop_reason(crafted):
    _, report = build(*crafted)
    assert counts(report, "dropped") == {
        "age missing": (1, 1),
        "age not numeric": (1, 1),
        "age >= 55": (4, 3),
        "BIRADS missing": (2, 1),
        "BIRADS not numeric": (1, 1),
        "BIRADS not in {0, 1, 2}": (1, 1),
        "BIRADS conflicts within patient": (2, 1),
        "all reasons": (12, 9),
    }
    assert counts(report, "input") == {"rows in train.csv": (19, 13)}
    assert counts(report, "kept") == {"cohort": (7, 4)}
    assert counts(report, "label") == {
        "label 1: follow-up (BI-RADS 0)": (2, 1),
        "label 0: no follow-up (BI-RADS 1 or 2)": (5, 3),
    }
    # Reasons are listed in the documented order; an absent DICOM is no drop reason, only information.
    assert report.loc[report["section"] == "dropped", "reason"].tolist()[:-1] == rsna.drop_reasons(55)
    assert "DICOM file missing" not in rsna.drop_reasons(55)
    assert counts(report, "info") == {rsna.INFO_DICOM_ABSENT: (1, 1)}
    missing_detail = report.loc[report["reason"] == rsna.INFO_DICOM_ABSENT, "detail"].item()
    assert MISSING_DICOM in missing_detail


def test_a_row_is_dropped_for_its_first_failing_reason_only(crafted):
    _, report = build(*crafted)
    # Patient 10013 is too old and has no BI-RADS: counted once, under age.
    assert report["images"][report["section"] == "dropped"].iloc[:-1].sum() == 12
    assert report.loc[report["reason"] == "age >= 55", "detail"].item() == "lines 7, 8, 9, 20"
    assert "20" not in report.loc[report["reason"] == "BIRADS missing", "detail"].item()


def test_non_numeric_age_and_birads_warn_naming_the_file_lines(crafted):
    csv_path, images_dir = crafted
    with pytest.warns(rsna.CohortWarning) as caught:
        rsna.build_cohort(csv_path, images_dir)
    messages = [str(warning.message) for warning in caught]
    age_message = next(message for message in messages if "'age'" in message)
    assert "train.csv" in age_message and "line(s) 11" in age_message and "age not numeric" in age_message
    birads_message = next(message for message in messages if "'BIRADS' is not a number" in message)
    assert "line(s) 15" in birads_message and "'x'" in birads_message
    assert any("10011" in message and "[0, 1]" in message for message in messages)
    absent_message = next(message for message in messages if MISSING_DICOM in message)
    assert "stay in the cohort" in absent_message and "dicom.max_excluded_fraction" in absent_message


def test_read_train_csv_records_bad_values_and_conflicts(crafted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rsna.CohortWarning)
        table = rsna.read_train_csv(crafted[0])
    assert table.frame.index[table.age_not_numeric].tolist() == [9]
    assert table.frame.index[table.birads_not_numeric].tolist() == [13]
    assert table.birads_conflicts == {"10011": [0, 1]}
    assert table.extra_columns == ("reader_note",)
    assert table.frame["age"].dtype == float and table.frame["patient_id"].iloc[0] == "10001"


@pytest.mark.parametrize("column", rsna.REQUIRED_COLUMNS)
def test_missing_required_column_is_named_with_the_file(tmp_path, column):
    header = [name for name in HEADER if name != column]
    lines = [",".join(header), ",".join("1" for _ in header)]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(rsna.CohortError) as error:
        rsna.read_train_csv(path)
    assert f"'{column}'" in str(error.value) and str(path) in str(error.value)


def test_repeated_image_id_and_empty_patient_are_errors(tmp_path):
    repeated = write_train_csv(tmp_path / "repeated.csv", rows=[ROWS[0], ROWS[0]])
    with pytest.raises(rsna.CohortError, match=r"image_id.*'101'.*line\(s\) 2, 3"):
        rsna.read_train_csv(repeated)
    empty = write_train_csv(tmp_path / "empty.csv", rows=[("", "5", "L", "CC", "40", "1")])
    with pytest.raises(rsna.CohortError, match=r"empty\.csv.*'patient_id' is empty on line\(s\) 2"):
        rsna.read_train_csv(empty)


def test_values_beyond_the_header_and_non_utf8_text_are_errors_naming_the_file(tmp_path):
    path = write_train_csv(tmp_path / "train.csv", rows=ROWS[:4])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], lines[3] + ",a value,another", *lines[4:]]) + "\n")
    with pytest.raises(rsna.CohortError) as error:
        rsna.read_train_csv(path)
    assert str(error.value) == f"{path}: line(s) 4 have values beyond the header's {len(HEADER)} columns"
    # One field more on every row: pandas took the first column as the index and shifted every column by one.
    path.write_text("\n".join([lines[0], *(line + ",x" for line in lines[1:])]) + "\n")
    with pytest.raises(rsna.CohortError, match=r"line\(s\) 2, 3, 4, 5 have values beyond"):
        rsna.read_train_csv(path)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("\n".join(lines[:2]) + ",Ren\u00e9e\n").encode("latin-1"))
    with pytest.raises(rsna.CohortError, match=r"latin\.csv: not UTF-8 text \(byte \d+: invalid"):
        rsna.read_train_csv(latin)


@pytest.mark.parametrize("where", ["every line", "every data row", "the first data row", "a later row", "the header"])
def test_trailing_commas_read_as_without_them(tmp_path, where):
    plain = rsna.read_train_csv(write_train_csv(tmp_path / "plain.csv", rows=ROWS[:4]))
    lines = (tmp_path / "plain.csv").read_text().splitlines()
    with_comma = {"every line": range(len(lines)), "every data row": range(1, len(lines)), "the first data row": [1],
                  "a later row": [3], "the header": [0]}[where]
    path = tmp_path / "trailing.csv"
    path.write_text("".join(line + ("," if number in with_comma else "") + "\n" for number, line in enumerate(lines)))
    trailing = rsna.read_train_csv(path)
    pd.testing.assert_frame_equal(trailing.frame, plain.frame)
    assert trailing.extra_columns == plain.extra_columns and rsna.train_csv_columns(path) == rsna.train_csv_columns(
        tmp_path / "plain.csv")


def test_extra_columns_are_reported(crafted):
    _, report = build(*crafted)
    assert "reader_note" in report.loc[report["section"] == "input", "detail"].item()


def test_files_are_not_checked_without_images_dir_or_when_disabled(crafted):
    csv_path, images_dir = crafted
    for cohort, report in (build(csv_path, None), build(csv_path, images_dir, check_files=False)):
        assert "1202" in cohort["image_id"].tolist()
        assert counts(report, "info") == {rsna.INFO_DICOM_ABSENT: (0, 0)}


def test_max_age_moves_the_age_threshold(crafted):
    cohort, report = build(*crafted, max_age=60)
    assert "401" in cohort["image_id"].tolist()  # age 55 < 60
    dropped = counts(report, "dropped")
    assert dropped["age >= 60"] == (3, 2)  # 70, 70 and 60
    assert "age >= 55" not in dropped


def test_write_cohort_report_writes_csv_and_markdown_with_the_paper_cohort(crafted, tmp_path):
    _, report = build(*crafted)
    csv_path, md_path = tmp_path / "out" / "cohort_report.csv", tmp_path / "out" / "cohort_report.md"
    rsna.write_cohort_report(report, csv_path, md_path)
    pd.testing.assert_frame_equal(pd.read_csv(csv_path, keep_default_na=False), report, check_dtype=False)
    markdown = md_path.read_text()
    assert markdown.startswith("# RSNA cohort report")
    for figure in ("3,199", "11,856", "3,953", "7,903"):
        assert figure in markdown
    assert "| this cohort | 4 | 7 | 2 | 5 |" in markdown
    assert "| dropped | BIRADS not in {0, 1, 2} | 1 | 1 |" in markdown
    assert not list(tmp_path.joinpath("out").glob(".*tmp"))  # no temporary files left behind


def test_cohort_of_generated_demo_data_matches_a_direct_filter(tmp_path):
    from leanmed import demo

    table = demo.generate_rsna(
        tmp_path, n_patients=12, image_shape=(64, 64), seed=1, transfer_syntaxes=("explicit_vr_little",)
    )
    cohort, report = build(tmp_path / "train.csv", tmp_path / "train_images")
    eligible = table[(table["age"] < 55) & table["BIRADS"].isin([0, 1, 2])]
    assert cohort["image_id"].tolist() == eligible["image_id"].astype(str).tolist()
    assert cohort["label"].tolist() == (eligible["BIRADS"] == 0).astype(int).tolist()
    assert counts(report, "info") == {rsna.INFO_DICOM_ABSENT: (0, 0)}
    assert all((tmp_path / "train_images" / path).is_file() for path in cohort["dicom_path"])


def test_train_csv_columns_are_the_kaggle_ones_then_the_extra_ones_of_the_header(tmp_path):
    path = tmp_path / "train.csv"
    # A spreadsheet export: byte-order mark, a quoted column name with a comma.
    path.write_text('site_id,patient_id,"scanner, room",image_id\n1,2,3,4\n', encoding="utf-8-sig")
    assert rsna.train_csv_columns(path) == [*rsna.KAGGLE_TRAIN_COLUMNS, "scanner, room"]


def test_a_demo_generated_again_with_other_knobs_leaves_only_its_own_dicoms(tmp_path):
    from leanmed.demo.rsna import generate_rsna, remove_other_dicoms

    syntaxes = ("explicit_vr_little",)
    first = generate_rsna(tmp_path, n_patients=12, image_shape=(64, 64), seed=1, transfer_syntaxes=syntaxes)
    second = generate_rsna(tmp_path, n_patients=6, image_shape=(64, 64), seed=2, transfer_syntaxes=syntaxes)
    deleted = remove_other_dicoms(tmp_path, second)
    images = tmp_path / "train_images"
    on_disk = sorted(str(path.relative_to(images)) for path in images.rglob("*"))
    expected = {f"{patient}/{image}.dcm" for patient, image in zip(second["patient_id"], second["image_id"])}
    assert [name for name in on_disk if name.endswith(".dcm")] == sorted(expected)
    assert set(on_disk) == expected | {name.split("/")[0] for name in expected}  # no empty patient folder left
    assert len(deleted) == len(first) - len(set(first["image_id"].astype(str)) & set(second["image_id"].astype(str)))
