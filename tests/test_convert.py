"""Tests of leanmed.data.convert: sharding, shard conversion with bad files and resume, manifest merge."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from leanmed.data import convert
from leanmed.data.png import png_fingerprint

IMAGE_SIZE = 32


def write_mammogram(path: Path, seed: int, transfer_syntax=ExplicitVRLittleEndian) -> None:
    """A small 12-bit MG DICOM: a bright half-ellipse against the left edge on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:72].astype(np.float32)
    radius = ((yy - 48) / 40) ** 2 + (xx / 45) ** 2
    pixels = np.where(radius < 1, 3000 - 1500 * radius + rng.normal(0, 10, radius.shape), 80).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def study(tmp_path):
    """A cohort of 8 images of 4 subjects: 6 good (two JPEG 2000), one corrupt, one absent."""
    images_dir = tmp_path / "train_images"
    rows = []
    for number in range(8):
        subject, image = f"{100 + number // 2}", f"{5000 + number}"
        relative = f"{subject}/{image}.dcm"
        rows.append(
            {
                "patient_id": subject,
                "image_id": image,
                "subject_id": subject,
                "label": number % 2,
                "dicom_path": relative,
            }
        )
        target = images_dir / relative
        if number == 5:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(600))  # DICOM preamble, garbage after
        elif number == 6:
            continue  # absent file
        else:
            write_mammogram(
                target, seed=number, transfer_syntax=JPEG2000Lossless if number in (1, 2) else ExplicitVRLittleEndian
            )
    cohort_csv = tmp_path / "rsna" / "cohort.csv"
    cohort_csv.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(cohort_csv, index=False)
    return {"cohort_csv": cohort_csv, "images_dir": images_dir, "out_root": tmp_path / "rsna" / "png", "rows": rows}


def run_all_shards(study, n_shards=2, workers=1, image_size=IMAGE_SIZE, **options):
    return [
        convert.convert_shard(
            study["cohort_csv"],
            study["images_dir"],
            study["out_root"],
            shard,
            n_shards,
            image_size,
            workers=workers,
            **options,
        )
        for shard in range(n_shards)
    ]


def test_shard_of_is_crc32_of_the_text_id():
    assert convert.shard_of("5000", 64) == zlib.crc32(b"5000") % 64
    assert convert.shard_of(5000, 64) == convert.shard_of("5000", 64)
    shards = {convert.shard_of(str(i), 8) for i in range(200)}
    assert shards == set(range(8))
    with pytest.raises(ValueError):
        convert.shard_of("1", 0)


def test_convert_shard_excludes_bad_files_and_keeps_the_rest(study):
    manifests = run_all_shards(study)
    assert all(list(m.columns) == convert.MANIFEST_COLUMNS for m in manifests)
    merged = pd.concat(manifests, ignore_index=True).set_index("image_id")
    assert sorted(merged.index) == sorted(r["image_id"] for r in study["rows"])
    for shard, manifest in enumerate(manifests):
        assert all(convert.shard_of(image_id, 2) == shard for image_id in manifest["image_id"])

    excluded = merged[merged["status"] == "excluded"]
    assert sorted(excluded.index) == ["5005", "5006"]
    corrupt_reason = excluded.loc["5005", "reason"].lower()
    assert "102/5005.dcm" in corrupt_reason and ("pixel data" in corrupt_reason or "dicom" in corrupt_reason)
    assert "103/5006.dcm" in excluded.loc["5006", "reason"] and "file missing" in excluded.loc["5006", "reason"]
    assert (excluded["path"] == "").all()

    converted = merged[merged["status"] == "ok"]
    assert len(converted) == 6 and (converted["reason"] == "").all()
    dataset_dir = study["out_root"].parent  # paths are relative to rsna/
    for image_id, row in converted.iterrows():
        assert row["path"] == f"png/images/{row['subject_id']}/{image_id}.png"
        with Image.open(dataset_dir / row["path"]) as png:
            assert png.size == (IMAGE_SIZE, IMAGE_SIZE) and png.mode == "L"
    labels = {r["image_id"]: r["label"] for r in study["rows"]}
    assert all(merged.loc[i, "label"] == labels[i] for i in merged.index)


def test_rerun_does_not_redo_existing_pngs(study):
    first = pd.concat(run_all_shards(study), ignore_index=True)
    pngs = sorted(study["out_root"].glob("images/*/*.png"))
    assert len(pngs) == 6
    old_ns = 1_000_000_000_000_000_000  # a recognisable past mtime: a rewrite would replace it
    for png in pngs:
        os.utime(png, ns=(old_ns, old_ns))
    redo_missing, redo_broken = pngs[0], pngs[1]
    redo_missing.unlink()
    redo_broken.write_bytes(redo_broken.read_bytes()[:40])  # cut PNG: must be redone

    second = pd.concat(run_all_shards(study), ignore_index=True)
    pd.testing.assert_frame_equal(
        first.sort_values("image_id").reset_index(drop=True), second.sort_values("image_id").reset_index(drop=True)
    )
    for png in pngs:
        if png in (redo_missing, redo_broken):
            assert png.stat().st_mtime_ns != old_ns and convert.is_complete_png(png, IMAGE_SIZE, 8)
        else:
            assert png.stat().st_mtime_ns == old_ns


def test_png_of_other_settings_is_redone(study):
    run_all_shards(study)
    png = sorted(study["out_root"].glob("images/*/*.png"))[0]
    assert convert.is_complete_png(png, IMAGE_SIZE, 8)
    assert not convert.is_complete_png(png, 64, 8)
    assert not convert.is_complete_png(png, IMAGE_SIZE, 16)


OLD_NS = 1_000_000_000_000_000_000  # a recognisable past mtime: a rewrite replaces it


def age_pngs(study) -> dict[Path, bytes]:
    """Give every PNG the mtime OLD_NS; their bytes, by path."""
    pngs = sorted(study["out_root"].glob("images/*/*.png"))
    for png in pngs:
        os.utime(png, ns=(OLD_NS, OLD_NS))
    return {png: png.read_bytes() for png in pngs}


def by_image(manifests) -> pd.DataFrame:
    return pd.concat(manifests, ignore_index=True).sort_values("image_id").set_index("image_id")


def test_png_records_its_fingerprint_and_the_manifest_too(study):
    manifest = by_image(run_all_shards(study, preprocessing_code="code-1"))
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == 6 and ok["fingerprint"].str.fullmatch("[0-9a-f]{16}").all()
    assert (manifest.loc[manifest["status"] == "excluded", "fingerprint"] == "").all()
    for image_id, row in ok.iterrows():
        png = study["out_root"].parent / row["path"]
        assert png_fingerprint(png) == row["fingerprint"]
        source = study["images_dir"] / f"{row['subject_id']}/{image_id}.dcm"
        preprocessing = convert.preprocessing_version(IMAGE_SIZE, 8, "exact", True, "code-1")
        stat = source.stat()
        assert row["fingerprint"] == convert.image_fingerprint(preprocessing, stat.st_size, stat.st_mtime_ns)
    # The default code version is the installed package's.
    assert convert.preprocessing_version(IMAGE_SIZE, 8, "exact", True) == convert.preprocessing_version(
        IMAGE_SIZE, 8, "exact", True, convert.code_version("dicom_preprocessing")
    )


def test_unchanged_pngs_keep_their_bytes_and_mtime(study):
    first = by_image(run_all_shards(study, preprocessing_code="code-1"))
    before = age_pngs(study)
    second = by_image(run_all_shards(study, preprocessing_code="code-1"))
    pd.testing.assert_frame_equal(first, second)
    for png, data in before.items():
        assert png.stat().st_mtime_ns == OLD_NS and png.read_bytes() == data


@pytest.mark.parametrize(
    "change",
    [
        {"path_mode": "reduced"},
        {"flip_to_left": False},
        {"preprocessing_code": "code-2"},
        {"image_size": IMAGE_SIZE + 8},
        {"bits": 16},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_change_of_preprocessing_reconverts_every_png(study, change):
    first = by_image(run_all_shards(study, preprocessing_code="code-1"))
    before = age_pngs(study)
    second = by_image(run_all_shards(study, **{"preprocessing_code": "code-1", **change}))
    ok = second["status"] == "ok"
    assert ok.sum() == 6
    assert (second.loc[ok, "fingerprint"] != first.loc[ok, "fingerprint"]).all()
    for png in before:
        assert png.stat().st_mtime_ns != OLD_NS, png
        assert png_fingerprint(png) == second.loc[png.stem, "fingerprint"]
    # Back to the first settings: reconverted again, to the first fingerprints.
    third = by_image(run_all_shards(study, preprocessing_code="code-1"))
    pd.testing.assert_frame_equal(first, third)


def test_a_replaced_dicom_is_reconverted_alone(study):
    first = by_image(run_all_shards(study, preprocessing_code="code-1"))
    before = age_pngs(study)
    replaced = study["images_dir"] / "100/5000.dcm"
    write_mammogram(replaced, seed=99)  # another image under the same name
    second = by_image(run_all_shards(study, preprocessing_code="code-1"))
    assert second.loc["5000", "fingerprint"] != first.loc["5000", "fingerprint"]
    for png, data in before.items():
        if png.stem == "5000":
            assert png.stat().st_mtime_ns != OLD_NS and png.read_bytes() != data
        else:
            assert png.stat().st_mtime_ns == OLD_NS and png.read_bytes() == data


def test_an_absent_dicom_is_excluded_as_file_missing(study):
    manifest = by_image(run_all_shards(study))
    reason = manifest.loc["5006", "reason"]
    assert manifest.loc["5006", "status"] == "excluded"
    assert reason == f"file missing: {study['images_dir'] / '103/5006.dcm'}"
    # A DICOM deleted after its PNG was made is excluded too (the raw data decides), its stale PNG not listed.
    (study["images_dir"] / "100/5000.dcm").unlink()
    again = by_image(run_all_shards(study))
    assert again.loc["5000", "status"] == "excluded" and again.loc["5000", "reason"].startswith("file missing: ")
    assert again.loc["5000", "path"] == ""


def test_workers_give_the_same_result(study, tmp_path):
    serial = pd.concat(run_all_shards(study, n_shards=1), ignore_index=True)
    serial_pixels = {p.name: np.asarray(Image.open(p)) for p in study["out_root"].glob("images/*/*.png")}
    for png in study["out_root"].glob("images/*/*.png"):
        png.unlink()
    parallel = pd.concat(run_all_shards(study, n_shards=1, workers=2), ignore_index=True)
    pd.testing.assert_frame_equal(serial, parallel)
    for png in study["out_root"].glob("images/*/*.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), serial_pixels[png.name])


def write_manifests(study, tmp_path):
    paths = []
    for shard, manifest in enumerate(run_all_shards(study)):
        path = tmp_path / "rsna" / "png" / f"manifest_{shard}.csv"
        manifest.to_csv(path, index=False)
        paths.append(path)
    return paths


def test_merge_manifests_writes_images_and_excluded(study, tmp_path):
    paths = write_manifests(study, tmp_path)
    images_csv, excluded_csv = tmp_path / "rsna" / "images.csv", tmp_path / "rsna" / "excluded.csv"
    merged = convert.merge_manifests(paths, images_csv, excluded_csv, max_excluded_fraction=0.25)
    assert len(merged) == 8
    images = pd.read_csv(images_csv, dtype={"image_id": str, "subject_id": str})
    excluded = pd.read_csv(excluded_csv, dtype={"image_id": str}, keep_default_na=False)
    assert len(images) == 6 and (images["status"] == "ok").all()
    assert sorted(excluded["image_id"]) == ["5005", "5006"] and excluded["reason"].str.contains(".dcm").all()
    assert set(images["image_id"]).isdisjoint(excluded["image_id"])


def test_images_csv_is_the_same_whatever_the_number_of_shards_and_their_order(study, tmp_path):
    """The split and the training batches follow images.csv's rows: `dicom.shards`, a parallelism knob, must not
    change them (before the merge sorted its rows, going from 3 to 2 shards retrained the runs to other figures)."""
    written = set()
    for n_shards in (1, 2, 3):
        for order in (1, -1):
            folder = tmp_path / f"{n_shards}{order}"
            folder.mkdir()
            paths = []
            for shard, manifest in enumerate(run_all_shards(study, n_shards=n_shards)):
                paths.append(folder / f"manifest_{shard}.csv")
                manifest.to_csv(paths[-1], index=False)
            convert.merge_manifests(paths[::order], folder / "images.csv", folder / "excluded.csv", 0.25)
            written.add((folder / "images.csv").read_bytes() + (folder / "excluded.csv").read_bytes())
    assert len(written) == 1
    images = pd.read_csv(tmp_path / "11" / "images.csv", dtype=str)
    assert list(zip(images["subject_id"], images["image_id"])) == sorted(zip(images["subject_id"], images["image_id"]))


def test_merge_manifests_fails_over_the_threshold_after_writing(study, tmp_path):
    paths = write_manifests(study, tmp_path)
    images_csv, excluded_csv = tmp_path / "rsna" / "images.csv", tmp_path / "rsna" / "excluded.csv"
    with pytest.raises(convert.ExcludedFractionError) as caught:
        convert.merge_manifests(paths, images_csv, excluded_csv, max_excluded_fraction=0.01)
    message = str(caught.value)
    assert "2 of 8 images" in message
    assert "1 of them absent: file missing" in message  # the absent DICOM counts toward the limit
    assert "dicom.max_excluded_fraction" in message
    assert "102/5005.dcm" in message and "103/5006.dcm" in message
    assert images_csv.exists() and excluded_csv.exists()
    assert len(pd.read_csv(excluded_csv)) == 2


def test_merge_manifests_keeps_the_exclusion_list_where_it_says(study, tmp_path):
    """Snakemake deletes excluded.csv with the failed job: the full list also goes to a kept file, which the
    error names instead."""
    paths = write_manifests(study, tmp_path)
    images_csv, excluded_csv = tmp_path / "rsna" / "images.csv", tmp_path / "rsna" / "excluded.csv"
    kept = tmp_path / "logs" / "rsna" / "excluded.csv"
    with pytest.raises(convert.ExcludedFractionError) as caught:
        convert.merge_manifests(paths, images_csv, excluded_csv, max_excluded_fraction=0.0, kept_excluded_csv=kept)
    assert str(kept) in str(caught.value) and str(excluded_csv) not in str(caught.value)
    listed = pd.read_csv(kept, dtype=str, keep_default_na=False)
    assert sorted(listed["image_id"]) == ["5005", "5006"]
    assert listed.set_index("image_id").loc["5006", "reason"].startswith("file missing: ")
    # Under the limit the kept copy is written as well, equal to excluded.csv.
    convert.merge_manifests(paths, images_csv, excluded_csv, max_excluded_fraction=0.5, kept_excluded_csv=kept)
    assert kept.read_bytes() == excluded_csv.read_bytes()
    assert "fingerprint" in pd.read_csv(images_csv).columns


def test_merge_manifests_rejects_an_image_in_two_manifests(study, tmp_path):
    paths = write_manifests(study, tmp_path)
    with pytest.raises(ValueError, match="more than one"):
        convert.merge_manifests(paths + paths[:1], tmp_path / "i.csv", tmp_path / "e.csv")


def test_demo_study_converts_without_exclusions(tmp_path):
    """The project's generated RSNA lookalike (leanmed.demo, other software than these tests) converts cleanly."""
    from leanmed import demo

    syntaxes = tuple(demo.TRANSFER_SYNTAX_UIDS)
    train = demo.generate_rsna(tmp_path / "demo", n_patients=3, image_shape=(160, 128), transfer_syntaxes=syntaxes)
    cohort = pd.DataFrame(
        {
            "image_id": train["image_id"].astype(str),
            "subject_id": train["patient_id"].astype(str),
            "label": 0,
            "dicom_path": [f"{p}/{i}.dcm" for p, i in zip(train["patient_id"], train["image_id"])],
        }
    )
    cohort_csv = tmp_path / "rsna" / "cohort.csv"
    cohort_csv.parent.mkdir()
    cohort.to_csv(cohort_csv, index=False)
    manifest = convert.convert_shard(
        cohort_csv, tmp_path / "demo" / "train_images", tmp_path / "rsna" / "png", 0, 1, IMAGE_SIZE, path_mode="reduced"
    )
    assert len(manifest) == len(cohort)
    assert (manifest["status"] == "ok").all(), manifest.loc[manifest["status"] != "ok", "reason"].tolist()


def test_storage_errors_are_told_apart_from_the_raw_data_state():
    import errno

    assert convert.is_storage_error(PermissionError(errno.EACCES, "Permission denied"))
    assert convert.is_storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert convert.is_storage_error(OSError(errno.EIO, "Input/output error"))
    assert not convert.is_storage_error(FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert not convert.is_storage_error(OSError(errno.ELOOP, "Too many levels of symbolic links"))
    assert not convert.is_storage_error(OSError("image file is truncated"))  # Pillow: the content, no errno
    assert not convert.is_storage_error(ValueError("bad"))
    assert not convert.is_storage_error(None)


def test_a_full_disk_fails_the_shard_naming_the_png_and_keeps_what_was_converted(study, monkeypatch):
    """Before, a PNG that could not be written was recorded as an excluded DICOM ("unexpected OSError: No space left
    on device"): the study went on without it, and as the DICOM did not change, no rerun converted it."""
    import errno

    real_write_png = convert.write_png

    def write_png_on_a_full_disk(image, path, fingerprint=None):
        if Path(path).stem == "5003":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_png(image, path, fingerprint)

    monkeypatch.setattr(convert, "write_png", write_png_on_a_full_disk)
    with pytest.raises(convert.StorageError) as caught:
        run_all_shards(study, n_shards=1)
    message = str(caught.value)
    assert "1 image(s) could not be read or written" in message and "5003.png: cannot be written" in message
    assert "No space left on device" in message and "not excluded" in message
    converted = {png.stem: png.stat().st_mtime_ns for png in study["out_root"].glob("images/*/*.png")}
    assert sorted(converted) == ["5000", "5001", "5002", "5004", "5007"]

    monkeypatch.setattr(convert, "write_png", real_write_png)  # space freed: the rerun converts only that image
    manifest = by_image(run_all_shards(study, n_shards=1))
    assert manifest.loc["5003", "status"] == "ok"
    assert sorted(manifest.index[manifest["status"] == "excluded"]) == ["5005", "5006"]
    for png in study["out_root"].glob("images/*/*.png"):
        assert png.stem == "5003" or png.stat().st_mtime_ns == converted[png.stem]


def test_a_dicom_without_read_permission_fails_the_shard_instead_of_being_excluded(study, monkeypatch):
    """A chmod changes neither a DICOM's size nor its mtime: recorded as excluded, the image stayed out of the study
    after the permissions were fixed. The reader's PermissionError is what its DicomError was raised over."""
    import errno

    from leanmed.data import dicom_decode

    real_dcmread = dicom_decode.pydicom.dcmread

    def dcmread_without_permission(path, *args, **kwargs):
        if Path(path).stem == "5004":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_dcmread(path, *args, **kwargs)

    monkeypatch.setattr(dicom_decode.pydicom, "dcmread", dcmread_without_permission)
    with pytest.raises(convert.StorageError) as caught:
        run_all_shards(study, n_shards=1)
    assert "102/5004.dcm: cannot be read" in str(caught.value) and "Permission denied" in str(caught.value)
    monkeypatch.setattr(dicom_decode.pydicom, "dcmread", real_dcmread)
    assert by_image(run_all_shards(study, n_shards=1)).loc["5004", "status"] == "ok"
