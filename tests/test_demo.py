"""Tests of the generated RSNA and LIDC lookalikes (leanmed.demo): formats, label design, determinism, signal."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_voi_lut
from scipy.ndimage import uniform_filter

from leanmed import demo
from leanmed.data.dicom import preprocess
from leanmed.demo import cli as demo_cli
from leanmed.demo.calibration import image_features

RSNA_SHAPE = (256, 208)  # rows, columns: small enough to keep the module fast
RSNA_PATIENTS = 12
RSNA_SEED = 11
RSNA_DIFFICULTY = demo.RsnaDifficulty(label_noise=0.0)  # every BI-RADS 0 subject shows the finding
ALL_TRANSFER_SYNTAXES = ("jpeg2000_lossless", "explicit_vr_little", "rle_lossless", "jpeg_lossless_sv1")
REAL_KAGGLE_COLUMNS = [
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
]


def _read_rsna(out_dir, table: pd.DataFrame) -> list[tuple[pd.Series, pydicom.Dataset, np.ndarray]]:
    """(csv row, dataset, stored pixels) per image."""
    images = []
    for _, row in table.iterrows():
        ds = pydicom.dcmread(out_dir / "train_images" / str(row["patient_id"]) / f"{row['image_id']}.dcm")
        images.append((row, ds, ds.pixel_array))
    return images


def _display(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored pixels as displayed before windowing: MONOCHROME1 inverted so that tissue is bright (float32)."""
    values = stored.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = float(2 ** ds.BitsStored - 1) - values
    return values


def _auc(positive_scores, negative_scores) -> float:
    positive, negative = np.asarray(positive_scores)[:, None], np.asarray(negative_scores)[None, :]
    return float((positive > negative).mean() + 0.5 * (positive == negative).mean())


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("rsna")
    table = demo.generate_rsna(
        out_dir,
        n_patients=RSNA_PATIENTS,
        image_shape=RSNA_SHAPE,
        seed=RSNA_SEED,
        transfer_syntaxes=ALL_TRANSFER_SYNTAXES,
        difficulty=RSNA_DIFFICULTY,
    )
    return out_dir, table, _read_rsna(out_dir, table)


@pytest.fixture(scope="module")
def lidc(tmp_path_factory):
    path = tmp_path_factory.mktemp("lidc") / "data_lidc.pickle"
    summary = demo.generate_lidc(path, n_patients=6, patches_per_patient=5, seed=5, patch_size=128)
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    return path, summary, data


# ----------------------------------------------------------------------------------------------------------------------
# RSNA: train.csv
# ----------------------------------------------------------------------------------------------------------------------


def test_train_csv_has_exactly_the_14_kaggle_columns_in_order(rsna):
    out_dir, table, _ = rsna
    on_disk = pd.read_csv(out_dir / "train.csv")
    assert list(on_disk.columns) == REAL_KAGGLE_COLUMNS
    assert list(table.columns) == REAL_KAGGLE_COLUMNS
    pd.testing.assert_frame_equal(on_disk, table.reset_index(drop=True), check_dtype=False)


def test_ids_are_integers_and_image_ids_unique(rsna):
    _, table, _ = rsna
    assert pd.api.types.is_integer_dtype(table["patient_id"]) and pd.api.types.is_integer_dtype(table["image_id"])
    assert table["image_id"].is_unique
    assert table["patient_id"].nunique() == RSNA_PATIENTS
    assert table["patient_id"].between(10000, 65534).all()
    assert (table["image_id"] >= 10**6).all()
    assert set(table["site_id"]) == {1, 2}


def test_each_patient_has_two_to_four_distinct_views(rsna):
    _, table, _ = rsna
    per_patient = table.groupby("patient_id").size()
    assert per_patient.between(2, 4).all()
    assert not table.duplicated(["patient_id", "laterality", "view"]).any()
    assert set(table["laterality"]) == {"L", "R"}
    assert set(table["view"]) == {"CC", "MLO"}


def test_one_birads_per_patient_with_the_designed_missing_share(rsna):
    _, table, _ = rsna
    assert (table.groupby("patient_id")["BIRADS"].nunique(dropna=False) == 1).all()
    per_patient = table.drop_duplicates("patient_id")["BIRADS"]
    assert set(per_patient.dropna()) <= {0.0, 1.0, 2.0}
    expected_missing = round(demo.RSNA_BIRADS_MISSING_FRACTION * RSNA_PATIENTS)
    assert per_patient.isna().sum() == expected_missing
    assert 0.35 <= per_patient.isna().mean() <= 0.55
    # Both classes of the study label exist among the patients with a BI-RADS.
    assert (per_patient == 0).sum() >= 1 and per_patient.isin([1.0, 2.0]).sum() >= 1
    # Missing BI-RADS is site 2, as in the real data.
    assert (table["BIRADS"].isna() == (table["site_id"] == 2)).all()


def test_followup_fraction_sets_the_share_of_birads_0(tmp_path):
    table = demo.generate_rsna(tmp_path, n_patients=20, image_shape=(48, 40), seed=1, followup_fraction=0.5)
    known = table.drop_duplicates("patient_id")["BIRADS"].dropna()
    assert (known == 0).sum() == round(0.5 * len(known))


def test_ages_have_a_few_missing_and_span_the_age_filter(rsna):
    _, table, _ = rsna
    assert (table.groupby("patient_id")["age"].nunique(dropna=False) == 1).all()
    per_patient = table.drop_duplicates("patient_id")["age"]
    assert 1 <= per_patient.isna().sum() <= 0.2 * RSNA_PATIENTS
    ages = per_patient.dropna()
    assert ages.between(*demo.RSNA_AGE_RANGE_YEARS).all()
    assert (ages < 55).any() and (ages >= 55).any()


def test_other_columns_take_the_real_value_sets(rsna):
    out_dir, table, _ = rsna
    assert set(table["density"].dropna()) <= {"A", "B", "C", "D"}
    assert table["density"].isna().any()
    for column in ("cancer", "biopsy", "invasive", "implant"):
        assert set(table[column]) <= {0, 1}
    assert (table["invasive"] <= table["cancer"]).all() and (table["cancer"] <= table["biopsy"]).all()
    assert table["difficult_negative_case"].dtype == bool
    on_disk = pd.read_csv(out_dir / "train.csv")
    assert on_disk["difficult_negative_case"].dtype == bool
    assert set(table["machine_id"]) <= set(demo.RSNA_MACHINES_BY_SITE[1]) | set(demo.RSNA_MACHINES_BY_SITE[2])


# ----------------------------------------------------------------------------------------------------------------------
# RSNA: DICOM files
# ----------------------------------------------------------------------------------------------------------------------


def test_one_dicom_per_row_at_the_documented_path_and_nothing_else(rsna):
    out_dir, table, _ = rsna
    expected = {f"{row.patient_id}/{row.image_id}.dcm" for row in table.itertuples()}
    images_dir = out_dir / "train_images"
    found = {path.relative_to(images_dir).as_posix() for path in images_dir.rglob("*.dcm")}
    assert found == expected
    assert not list(out_dir.rglob("*.tmp"))


def test_dicoms_read_back_as_12_bit_mammograms_matching_their_row(rsna):
    _, table, images = rsna
    for row, ds, pixels in images:
        assert ds.file_meta.MediaStorageSOPClassUID == demo.MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS
        assert ds.SOPClassUID == demo.MAMMOGRAPHY_FOR_PRESENTATION_SOP_CLASS
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.Modality == "MG"
        assert ds.PatientID == str(row["patient_id"])
        assert ds.ImageLaterality == row["laterality"] and ds.ViewPosition == row["view"]
        assert (ds.Rows, ds.Columns) == RSNA_SHAPE and pixels.shape == RSNA_SHAPE
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert pixels.dtype == np.uint16 and int(pixels.max()) <= 4095
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
        assert "WindowCenter" in ds and "WindowWidth" in ds
    assert len({ds.SOPInstanceUID for _, ds, _ in images}) == len(table)


def test_transfer_syntaxes_photometrics_and_voi_functions_are_the_intended_mix(rsna):
    _, table, images = rsna
    transfer_syntaxes = [ds.file_meta.TransferSyntaxUID for _, ds, _ in images]
    assert set(transfer_syntaxes) == {demo.TRANSFER_SYNTAX_UIDS[name] for name in ALL_TRANSFER_SYNTAXES}
    # Cycled over the rows: each within one of the others' count.
    counts = pd.Series(transfer_syntaxes).value_counts()
    assert counts.max() - counts.min() <= 1
    assert {ds.PhotometricInterpretation for _, ds, _ in images} == {"MONOCHROME1", "MONOCHROME2"}
    assert {ds.VOILUTFunction for _, ds, _ in images} == {"LINEAR", "SIGMOID"}
    assert {(ds.PhotometricInterpretation, ds.VOILUTFunction) for _, ds, _ in images} == {
        (photometric, voi) for photometric, voi, _ in demo.RSNA_DISPLAY_PROFILES
    }
    # Some scanners store three windows (a real trap for code that expects one number).
    window_counts = {len(ds.WindowCenter) if ds["WindowCenter"].VM > 1 else 1 for _, ds, _ in images}
    assert window_counts == {1, 3}
    # Display settings are per patient and per machine, like a scanner's.
    profiles = pd.DataFrame(
        [(row["patient_id"], ds.PhotometricInterpretation, ds.VOILUTFunction) for row, ds, _ in images]
    )
    assert (profiles.groupby(0).nunique() == 1).all().all()
    by_machine = pd.DataFrame(
        [(row["machine_id"], ds.PhotometricInterpretation, ds.VOILUTFunction) for row, ds, _ in images]
    )
    assert (by_machine.groupby(0).nunique() == 1).all().all()


def test_monochrome1_stores_inverted_values(rsna):
    _, _, images = rsna
    for _, ds, pixels in images:
        corner_far_from_breast = pixels[:8, :8] if ds.ImageLaterality == "R" else pixels[:8, -8:]
        # Background is dark when displayed: near 0 stored for MONOCHROME2, near 4095 for MONOCHROME1.
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert corner_far_from_breast.mean() > 4000
        else:
            assert corner_far_from_breast.mean() < 100


def test_compression_is_lossless_for_every_transfer_syntax(rsna, tmp_path):
    out_dir, table, images = rsna
    # The same seed with uncompressed storage only must decode to exactly the same pixels.
    uncompressed = demo.generate_rsna(
        tmp_path,
        n_patients=RSNA_PATIENTS,
        image_shape=RSNA_SHAPE,
        seed=RSNA_SEED,
        transfer_syntaxes=("explicit_vr_little",),
        difficulty=RSNA_DIFFICULTY,
    )
    pd.testing.assert_frame_equal(uncompressed, table)
    for (_, ds, pixels), (_, reference_ds, reference) in zip(images, _read_rsna(tmp_path, uncompressed)):
        assert reference_ds.file_meta.TransferSyntaxUID == demo.TRANSFER_SYNTAX_UIDS["explicit_vr_little"]
        np.testing.assert_array_equal(pixels, reference)


def test_breast_is_on_the_laterality_side_after_windowing(rsna):
    _, _, images = rsna
    for row, ds, pixels in images:
        windowed = apply_voi_lut(pixels, ds).astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            windowed = windowed.max() - windowed
        windowed -= windowed.min()  # a SIGMOID window maps the background above 0
        half = windowed.shape[1] // 2
        left, right = windowed[:, :half].mean(), windowed[:, half:].mean()
        if row["laterality"] == "L":
            assert left > 1.5 * right
        else:
            assert right > 1.5 * left
        # The breast touches the chest-wall edge and leaves the far edge dark.
        chest_wall = windowed[:, 0] if row["laterality"] == "L" else windowed[:, -1]
        far_edge = windowed[:, -1] if row["laterality"] == "L" else windowed[:, 0]
        assert chest_wall.max() > 4 * (far_edge.mean() + 1)


def test_birads_0_images_carry_fine_detail_through_dicom_and_preprocessing(rsna):
    """The label signal survives the DICOM coding and the pipeline's own preprocessing to 32 pixels: the
    calcification clusters of BI-RADS 0 subjects give larger fine-detail features than the smooth densities of the
    others (label noise off here, so each BI-RADS 0 subject shows one)."""
    out_dir, table, _ = rsna
    fine = {True: [], False: []}
    for _, row in table[table["BIRADS"].notna()].iterrows():
        image, _ = preprocess(out_dir / "train_images" / str(row["patient_id"]) / f"{row['image_id']}.dcm", 32)
        fine[row["BIRADS"] == 0].append(image_features(image[None].astype(np.float32) / 255.0)[0, 0])
    assert len(fine[True]) >= 2 and len(fine[False]) >= 2
    assert _auc(fine[True], fine[False]) >= 0.9


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    def generate(name: str, seed: int) -> pd.DataFrame:
        return demo.generate_rsna(
            tmp_path / name, n_patients=5, image_shape=(64, 52), seed=seed, transfer_syntaxes=ALL_TRANSFER_SYNTAXES
        )

    first, second, other = generate("a", 3), generate("b", 3), generate("c", 4)
    assert (tmp_path / "a" / "train.csv").read_bytes() == (tmp_path / "b" / "train.csv").read_bytes()
    for row in first.itertuples():
        relative = f"train_images/{row.patient_id}/{row.image_id}.dcm"
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()
    assert set(first["image_id"]).isdisjoint(set(other["image_id"]))
    assert len(second) == len(first)


def test_large_images_are_supported(tmp_path):
    # A size between the demo's and the real 3328 x 2560, uncompressed to keep the test fast.
    table = demo.generate_rsna(
        tmp_path, n_patients=1, image_shape=(1024, 832), seed=2, transfer_syntaxes=("explicit_vr_little",)
    )
    row = table.iloc[0]
    ds = pydicom.dcmread(tmp_path / "train_images" / str(row["patient_id"]) / f"{row['image_id']}.dcm")
    assert ds.pixel_array.shape == (1024, 832)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"transfer_syntaxes": ("jpeg_ls",)}, "unknown transfer syntax"),
        ({"transfer_syntaxes": ()}, "at least one"),
        ({"followup_fraction": 1.5}, "followup_fraction"),
        ({"image_shape": (16, 16)}, "image_shape"),
        ({"n_patients": 0}, "n_patients"),
    ],
)
def test_invalid_arguments_are_refused(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        demo.generate_rsna(tmp_path, **{"n_patients": 2, **arguments})


# ----------------------------------------------------------------------------------------------------------------------
# LIDC
# ----------------------------------------------------------------------------------------------------------------------


def _n_raters(entry: dict) -> int:
    return sum(int(mask.any()) for mask in entry["masks"])


def _nodule_excess(entry: dict) -> np.ndarray:
    """The brightness inside the raters' outline above the median outside it, pixel by pixel."""
    union = np.logical_or.reduce([mask.astype(bool) for mask in entry["masks"]])
    return entry["image"][union] - np.median(entry["image"][~union])


def _nodule_contrast(entry: dict) -> float:
    return float(_nodule_excess(entry).mean())


def _nodule_brightness(entry: dict) -> float:
    """A nodule's total brightness above its surroundings: contrast times area."""
    return float(_nodule_excess(entry).sum())


def test_lidc_pickle_has_the_documented_structure(lidc):
    _, summary, data = lidc
    assert isinstance(data, dict) and len(data) == summary["n_patches"] == 30
    for key, entry in data.items():
        assert re.fullmatch(r"LIDC-IDRI-\d{4}_slice_\d+_nodule_\d+", key)
        assert set(entry) == {"image", "masks", "series_uid"}
        image = entry["image"]
        assert image.dtype == np.float32 and image.shape == (128, 128)
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01
        assert isinstance(entry["masks"], list) and len(entry["masks"]) == 4
        for mask in entry["masks"]:
            assert mask.dtype == np.uint8 and mask.shape == (128, 128)
            assert set(np.unique(mask)) <= {0, 1}
        assert isinstance(entry["series_uid"], str) and re.fullmatch(r"[0-9.]{1,64}", entry["series_uid"])


def test_lidc_patients_are_the_text_before_the_first_underscore(lidc):
    _, summary, data = lidc
    patients = {key.split("_", 1)[0] for key in data}
    assert len(patients) == summary["n_patients"] == 6
    per_patient = pd.Series([key.split("_", 1)[0] for key in data]).value_counts()
    assert (per_patient == 5).all()
    # One CT series per patient.
    series = pd.DataFrame([(key.split("_", 1)[0], entry["series_uid"]) for key, entry in data.items()])
    assert (series.groupby(0)[1].nunique() == 1).all() and series[1].nunique() == len(patients)


def test_lidc_rater_counts_make_the_two_labellings_differ(lidc):
    _, summary, data = lidc
    raters = np.array([_n_raters(entry) for entry in data.values()])
    assert set(raters) == {0, 1, 2, 3, 4}
    assert summary["n_by_raters"] == {k: int((raters == k).sum()) for k in range(5)}
    at_least_2, at_least_3 = int((raters >= 2).sum()), int((raters >= 3).sum())
    assert (summary["n_at_least_2_raters"], summary["n_at_least_3_raters"]) == (at_least_2, at_least_3)
    assert at_least_2 > at_least_3 > 0 and at_least_2 < len(raters)


def test_lidc_raters_outline_the_same_nodule_with_different_extents(lidc):
    _, _, data = lidc
    for entry in data.values():
        marked = [mask for mask in entry["masks"] if mask.any()]
        if len(marked) >= 2:
            sizes = [int(mask.sum()) for mask in marked]
            assert len(set(sizes)) > 1  # extents differ
            intersection = np.logical_and.reduce(marked).sum()
            assert intersection >= 0.3 * min(sizes)  # but they overlap: one nodule


def test_lidc_nodules_marked_by_two_or_more_raters_are_clear(lidc):
    _, _, data = lidc
    contrasts = [_nodule_contrast(entry) for entry in data.values() if _n_raters(entry) >= 2]
    assert min(contrasts) > 0.15
    # Unmarked patches have no nodule at the centre, where the real crops put it: the centre is not brighter than
    # the surroundings by as much.
    centre_excess = {True: [], False: []}
    for entry in data.values():
        image = entry["image"]
        centre = uniform_filter(image, size=7)[52:76, 52:76].max() - np.median(image)
        centre_excess[_n_raters(entry) >= 2].append(centre)
    assert _auc(centre_excess[True], centre_excess[False]) >= 0.9


def test_lidc_borderline_nodules_look_alike_whether_one_or_two_raters_marked_them(tmp_path):
    brightness = {}
    for fraction in (0.0, 1.0):
        path = tmp_path / f"borderline_{fraction}.pickle"
        summary = demo.generate_lidc(path, n_patients=24, patches_per_patient=5, seed=7, borderline_fraction=fraction)
        with open(path, "rb") as handle:
            data = pickle.load(handle)
        one_or_two = [entry for entry in data.values() if _n_raters(entry) in (1, 2)]
        assert summary["n_borderline"] == (len(one_or_two) if fraction else 0)
        assert summary["n_by_raters"] == {k: sum(_n_raters(e) == k for e in data.values()) for k in range(5)}
        brightness[fraction] = {
            count: [_nodule_brightness(entry) for entry in one_or_two if _n_raters(entry) == count] for count in (1, 2)
        }
    # Without borderline nodules two raters' nodules are plainly larger and brighter than one rater's; with all of
    # them borderline the image no longer tells the label (tumour: >= 2 raters) at this boundary.
    assert _auc(brightness[0.0][2], brightness[0.0][1]) >= 0.95
    assert 0.2 <= _auc(brightness[1.0][2], brightness[1.0][1]) <= 0.8
    with pytest.raises(ValueError, match="borderline_fraction"):
        demo.generate_lidc(tmp_path / "bad.pickle", n_patients=4, patches_per_patient=5, borderline_fraction=1.5)


def test_lidc_is_deterministic_from_its_seed(lidc, tmp_path):
    path, _, data = lidc
    demo.generate_lidc(tmp_path / "same.pickle", n_patients=6, patches_per_patient=5, seed=5)
    demo.generate_lidc(tmp_path / "other.pickle", n_patients=6, patches_per_patient=5, seed=6)
    assert (tmp_path / "same.pickle").read_bytes() == path.read_bytes()
    with open(tmp_path / "other.pickle", "rb") as handle:
        other = pickle.load(handle)
    assert len(other) == len(data)
    assert not any(np.array_equal(a["image"], b["image"]) for a, b in zip(other.values(), data.values()))


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def test_command_line_writes_both_datasets(tmp_path, capsys):
    rsna_arguments = ["rsna", str(tmp_path / "rsna"), "--patients", "3", "--height", "64", "--width", "48"]
    rsna_arguments += ["--seed", "2"]
    assert demo_cli.main(rsna_arguments) == 0
    table = pd.read_csv(tmp_path / "rsna" / "train.csv")
    assert table["patient_id"].nunique() == 3
    row = table.iloc[0]
    ds = pydicom.dcmread(tmp_path / "rsna" / "train_images" / str(row["patient_id"]) / f"{row['image_id']}.dcm")
    assert ds.pixel_array.shape == (64, 48)

    lidc_arguments = ["lidc", str(tmp_path / "lidc.pickle"), "--patients", "2", "--patches", "3", "--seed", "2"]
    lidc_arguments += ["--borderline-fraction", "0.5"]
    assert demo_cli.main(lidc_arguments) == 0
    with open(tmp_path / "lidc.pickle", "rb") as handle:
        assert len(pickle.load(handle)) == 6
    printed = capsys.readouterr().out
    assert "wrote" in printed and "lidc.pickle" in printed
