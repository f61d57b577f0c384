"""Subject-level stratified split: no leak, fractions, stratification, determinism, reports, split.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leanmed.data import splits
from leanmed.markdown import markdown_table


def make_frame(n_subjects: int, positive_subject_share: float = 0.33, seed: int = 0) -> pd.DataFrame:
    """Images of `n_subjects` subjects with 1-4 images each; a positive subject has each image positive with
    probability 0.7 but at least one positive image, as when only one breast needs follow-up."""
    rng = np.random.default_rng(seed)
    rows = []
    for subject in range(n_subjects):
        positive = rng.random() < positive_subject_share
        n_images = int(rng.integers(1, 5))
        labels = (rng.random(n_images) < 0.7).astype(int) if positive else np.zeros(n_images, dtype=int)
        if positive:
            labels[0] = 1
        for image, label in enumerate(labels):
            rows.append(
                {
                    "image_id": f"s{subject}_i{image}",
                    "subject_id": f"s{subject}",
                    "label": int(label),
                    "path": f"png/s{subject}_i{image}.png",
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    return make_frame(3000)


@pytest.fixture(scope="module")
def big_split(big) -> pd.DataFrame:
    return splits.subject_split(big, seed=42)


def test_no_subject_is_in_two_splits(big_split):
    assert big_split.groupby("subject_id")["split"].nunique().max() == 1
    assert set(big_split["split"]) == {"train", "val", "test"}
    assert big_split["split"].notna().all()


def test_subject_fractions_are_exact_to_rounding(big_split):
    subjects_per_split = big_split.groupby("split")["subject_id"].nunique()
    assert subjects_per_split.to_dict() == {"train": 1800, "val": 600, "test": 600}


def test_positive_share_is_stratified(big, big_split):
    subject_labels = splits.subject_labels(big)
    overall_subject_share = subject_labels.mean()
    overall_image_share = big["label"].mean()
    per_split = splits.subject_labels(big_split).groupby(big_split.groupby("subject_id")["split"].first())
    for name, labels in per_split:
        assert abs(labels.mean() - overall_subject_share) < 0.003, name  # about one subject of 600
    image_share = big_split.groupby("split")["label"].mean()
    assert (image_share - overall_image_share).abs().max() < 0.03


def test_same_seed_same_split_whatever_the_row_order(big, big_split):
    again = splits.subject_split(big, seed=42)
    pd.testing.assert_series_equal(again["split"], big_split["split"])
    shuffled = big.sample(frac=1.0, random_state=7)
    reordered = splits.subject_split(shuffled, seed=42).sort_index()
    pd.testing.assert_series_equal(reordered["split"], big_split["split"])


def test_different_seeds_give_different_splits(big, big_split):
    other = splits.subject_split(big, seed=43)
    changed = (other["split"] != big_split["split"]).mean()
    assert changed > 0.3
    assert other.groupby("split")["subject_id"].nunique().to_dict() == {"train": 1800, "val": 600, "test": 600}


def test_paper_rsna_subject_counts():
    frame = pd.DataFrame({"subject_id": [f"p{i}" for i in range(3199)], "label": [i % 3 == 0 for i in range(3199)]})
    counts = splits.subject_split(frame).groupby("split")["subject_id"].nunique().to_dict()
    assert counts == {"train": 1919, "val": 640, "test": 640}


def test_small_frame_keeps_columns_and_adds_split():
    frame = make_frame(12, seed=3)
    result = splits.subject_split(frame, fractions=[0.5, 0.25, 0.25], seed=1)
    assert list(result.columns) == list(frame.columns) + ["split"]
    assert result.groupby("split")["subject_id"].nunique().to_dict() == {"train": 6, "val": 3, "test": 3}
    assert "split" not in frame.columns  # the input is not modified


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.6, 0.2, 0.3), "sum to 1"),
        ((0.8, 0.2), "three numbers"),
        ((1.0, 0.0, 0.0), "strictly between 0 and 1"),
        ((0.6, "0.2", 0.2), "must be a number"),
        ({"train": 0.6, "valid": 0.2, "test": 0.2}, "keys"),
        ("0.6,0.2,0.2", "three numbers"),
    ],
)
def test_bad_fractions_name_the_config_key(fractions, message):
    with pytest.raises(splits.SplitError, match=message) as error:
        splits.subject_split(make_frame(20), fractions=fractions)
    assert "split.fractions" in str(error.value)


def test_mapping_fractions_and_float_rounding_are_accepted():
    assert splits.validate_fractions({"test": 0.15, "train": 0.7, "val": 0.15}) == (0.7, 0.15, 0.15)
    assert splits.validate_fractions([0.1 * 7, 0.15, 0.15]) == pytest.approx((0.7, 0.15, 0.15))


def test_too_few_subjects_is_a_clear_error():
    frame = pd.DataFrame({"subject_id": ["a", "a", "b"], "label": [0, 1, 0]})
    with pytest.raises(splits.SplitError, match="2 subject.*at least one subject"):
        splits.subject_split(frame)


def test_missing_or_empty_columns_are_errors():
    with pytest.raises(splits.SplitError, match="missing column"):
        splits.subject_split(pd.DataFrame({"subject_id": ["a"]}))
    with pytest.raises(splits.SplitError, match="'label' is empty"):
        splits.subject_split(pd.DataFrame({"subject_id": ["a", "b", "c"], "label": [0, None, 1]}))


def test_split_report_counts():
    frame = pd.DataFrame(
        {
            "subject_id": ["a", "a", "b", "c", "c", "d"],
            "label": [1, 0, 0, 1, 1, 0],
            "split": ["train", "train", "train", "val", "val", "test"],
        }
    )
    report = splits.split_report(frame).set_index("split")
    assert report.loc["train", ["subjects", "images", "positives", "negatives", "positive_subjects"]].tolist() == [
        2,
        3,
        1,
        2,
        1,
    ]
    assert report.loc["train", "positive_share"] == pytest.approx(1 / 3)
    assert report.loc["val", "positive_share"] == 1.0
    assert report.loc["all", ["subjects", "images", "positives"]].tolist() == [4, 6, 3]
    assert report.loc["test", "subject_fraction"] == 0.25


def test_write_split_report_files(tmp_path, big_split):
    report = splits.write_split_report(
        big_split, tmp_path / "r" / "split_report.csv", tmp_path / "r" / "split.md", title="Split report: rsna"
    )
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r" / "split_report.csv"), report)
    markdown = (tmp_path / "r" / "split.md").read_text()
    assert markdown.startswith("# Split report: rsna")
    assert "| train | 1800 |" in markdown


def test_write_split_csv_has_exactly_the_contract_columns(tmp_path, big_split):
    frame = big_split.assign(extra="x", path="../png/" + big_split["path"])
    written = splits.write_split_csv(frame, tmp_path / "split.csv")
    read = pd.read_csv(tmp_path / "split.csv", dtype={"image_id": str, "subject_id": str})
    assert list(read.columns) == ["image_id", "subject_id", "label", "path", "split"]
    assert read["path"].iloc[0] == frame["path"].iloc[0]  # kept as given
    pd.testing.assert_frame_equal(read, written.reset_index(drop=True))


def test_write_split_csv_refuses_leaks_and_bad_values(tmp_path, big_split):
    leaking = big_split.copy()
    first_subject = leaking["subject_id"].iloc[0]
    rows = leaking.index[leaking["subject_id"] == first_subject]
    leaking = pd.concat(
        [
            leaking,
            leaking.loc[rows[:1]].assign(
                image_id="extra", split="test" if leaking.loc[rows[0], "split"] != "test" else "val"
            ),
        ]
    )
    with pytest.raises(splits.SplitError) as error:
        splits.write_split_csv(leaking, tmp_path / "split.csv")
    assert str(error.value) == (f"write_split_csv({tmp_path / 'split.csv'}): column 'subject_id': 1 subject(s) with "
                                f"images in more than one split (first 1): [{first_subject!r}]")
    with pytest.raises(splits.SplitError, match="'label' must be 0 or 1"):
        splits.write_split_csv(big_split.assign(label=2), tmp_path / "split.csv")
    with pytest.raises(splits.SplitError, match="'split' must be one of"):
        splits.write_split_csv(big_split.assign(split="holdout"), tmp_path / "split.csv")
    with pytest.raises(splits.SplitError, match=r"missing column\(s\) \['path'\]"):
        splits.write_split_csv(big_split.drop(columns="path"), tmp_path / "split.csv")
    with pytest.raises(splits.SplitError, match="image_id not unique"):
        splits.write_split_csv(pd.concat([big_split, big_split.iloc[:1]]), tmp_path / "split.csv")
    assert not (tmp_path / "split.csv").exists()


def test_markdown_table_escapes_pipes_and_formats_floats():
    table = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [0.12345], "c": [float("nan")]}))
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| x\\|y | 0.123 |  |"]


def with_machines(frame: pd.DataFrame, n_machines: int = 4, seed: int = 1) -> pd.DataFrame:
    """`frame` with a machine per subject, drawn independently of the label (as in the generated RSNA data)."""
    rng = np.random.default_rng(seed)
    subjects = frame["subject_id"].unique()
    machine = dict(zip(subjects, rng.integers(0, n_machines, len(subjects)) * 7 + 21))
    return frame.assign(machine_id=frame["subject_id"].map(machine))


def test_stratifying_by_machine_balances_each_machines_classes_across_splits():
    frame = with_machines(make_frame(400, positive_subject_share=0.5))
    plain = splits.subject_split(frame, seed=3)
    stratified = splits.subject_split(frame, seed=3, stratify_by=["machine_id"])
    assert (stratified.groupby("subject_id")["split"].nunique() == 1).all()
    report = splits.stratum_report(stratified, "machine_id")
    for _, row in report.iterrows():
        for label in ("positive", "negative"):
            counts = np.array([row[f"{name} {label}"] for name in splits.SPLIT_NAMES])
            ideal = counts.sum() * np.array([0.6, 0.2, 0.2])
            assert np.abs(counts - ideal).max() <= 1.0 + 1e-9, row.to_dict()
    # Label-only stratification leaves a machine's class shares to chance: somewhere they drift further.
    drift = splits.stratum_report(plain, "machine_id")
    deviations = [abs(row[f"{name} {label}"] - (row[f"train {label}"] + row[f"val {label}"] + row[f"test {label}"])
                      * fraction)
                  for _, row in drift.iterrows() for label in ("positive", "negative")
                  for name, fraction in zip(splits.SPLIT_NAMES, (0.6, 0.2, 0.2))]
    assert max(deviations) > 1.0
    # The subject fractions stay exact, and the split is a function of the data and the seed.
    assert stratified.groupby("split")["subject_id"].nunique().to_dict() == {"train": 240, "val": 80, "test": 80}
    again = splits.subject_split(frame.sample(frac=1.0, random_state=0), seed=3, stratify_by=["machine_id"])
    assert again.set_index("image_id")["split"].sort_index().equals(stratified.set_index("image_id")["split"]
                                                                   .sort_index())


def test_without_stratification_columns_the_split_is_the_label_only_split(big, big_split):
    assert splits.subject_split(big, seed=42, stratify_by=()).equals(big_split)


def test_a_subjects_machine_is_its_most_frequent_and_empty_values_are_a_group():
    frame = pd.DataFrame({
        "image_id": ["a1", "a2", "a3", "b1", "c1"], "subject_id": ["a", "a", "a", "b", "c"], "label": [1, 1, 0, 0, 0],
        "machine_id": [29, 29, 21, None, 21],
    })
    report = splits.stratum_report(frame.assign(split="train"), "machine_id")
    assert report.set_index("machine_id")[["train positive", "train negative"]].to_dict("index") == {
        "(empty)": {"train positive": 0, "train negative": 1},
        "21": {"train positive": 0, "train negative": 1},
        "29": {"train positive": 1, "train negative": 0},
    }


def test_stratification_columns_come_from_the_cohort_or_the_error_names_the_config_key():
    images = pd.DataFrame({"image_id": ["1", "2"], "subject_id": ["p", "q"], "label": [0, 1], "path": ["x", "y"]})
    cohort = pd.DataFrame({"image_id": ["1", "2"], "machine_id": [21, 29], "site_id": [1, 1]})
    merged = splits.with_stratification_columns(images, cohort, ["machine_id"], key="split.stratify_by.rsna")
    assert merged["machine_id"].tolist() == [21, 29] and "site_id" not in merged
    with pytest.raises(splits.SplitError, match=r"split.stratify_by.rsna: no column\(s\) \['scanner'\].*machine_id"):
        splits.with_stratification_columns(images, cohort, ["scanner"], key="split.stratify_by.rsna")
    with pytest.raises(splits.SplitError, match=r"split.stratify_by.rsna: 1 image\(s\) without a cohort row"):
        splits.with_stratification_columns(images, cohort.iloc[:1], ["machine_id"], key="split.stratify_by.rsna")
    with pytest.raises(splits.SplitError, match=r"split.stratify_by: no column\(s\) \['machine_id'\]"):
        splits.subject_split(images, stratify_by=["machine_id"])


def test_the_markdown_report_shows_each_machines_subjects_per_split(tmp_path):
    frame = splits.subject_split(with_machines(make_frame(60, 0.5)), seed=1, stratify_by=["machine_id"])
    splits.write_split_report(frame, tmp_path / "r.csv", tmp_path / "r.md", stratify_by=["machine_id"])
    text = (tmp_path / "r.md").read_text()
    assert "stratified by subject label (max image label) and machine_id" in text
    assert "Subjects per machine_id, split and label:" in text and "| machine_id | train positive |" in text
    assert list(pd.read_csv(tmp_path / "r.csv").columns)[0] == "split"  # the CSV report keeps its columns
