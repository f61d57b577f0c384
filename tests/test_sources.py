"""Fingerprints of the raw DICOMs per conversion shard (what lets Snakemake see a replaced raw file)."""
import os

from leanmed.data.convert import shard_of as convert_shard_of
from leanmed.data.sources import shard_of, shard_source_versions


def make_tree(root, image_ids):
    for index, image_id in enumerate(image_ids):
        folder = root / f"patient{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.dcm").write_bytes(b"DICM" * (index + 1))


def test_every_shard_has_a_version_and_an_empty_folder_hashes_nothing(tmp_path):
    empty = shard_source_versions(tmp_path / "absent", 4)
    assert sorted(empty) == [0, 1, 2, 3] and len(set(empty.values())) == 1
    (tmp_path / "images").mkdir()
    assert shard_source_versions(tmp_path / "images", 4) == empty


def test_a_replaced_file_changes_only_its_shard(tmp_path):
    image_ids = [str(1000 + i) for i in range(40)]
    make_tree(tmp_path, image_ids)
    before = shard_source_versions(tmp_path, 8)
    assert shard_source_versions(tmp_path, 8) == before  # stable
    replaced = next(tmp_path.glob("patient1/*.dcm"))
    replaced.write_bytes(b"other content, other size")
    after = shard_source_versions(tmp_path, 8)
    changed = [shard for shard in before if before[shard] != after[shard]]
    assert changed == [shard_of(replaced.stem, 8)]


def test_a_touched_added_or_deleted_file_changes_its_shard(tmp_path):
    make_tree(tmp_path, ["1", "2", "3"])
    before = shard_source_versions(tmp_path, 2)
    path = tmp_path / "patient0" / "1.dcm"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    touched = shard_source_versions(tmp_path, 2)
    assert touched[shard_of("1", 2)] != before[shard_of("1", 2)]
    (tmp_path / "patient0" / "4.dcm").write_bytes(b"new")
    added = shard_source_versions(tmp_path, 2)
    assert added[shard_of("4", 2)] != touched[shard_of("4", 2)]
    (tmp_path / "patient0" / "4.dcm").unlink()
    assert shard_source_versions(tmp_path, 2) == touched


def test_other_files_are_ignored_and_convert_uses_the_same_shards(tmp_path):
    make_tree(tmp_path, ["7"])
    before = shard_source_versions(tmp_path, 3)
    (tmp_path / "patient0" / "notes.txt").write_text("not a DICOM")
    (tmp_path / "README").write_text("a file beside the patient folders")
    assert shard_source_versions(tmp_path, 3) == before
    assert convert_shard_of is shard_of


def test_absent_dicoms_are_the_train_csv_rows_without_a_file(tmp_path):
    from leanmed.data.sources import absent_dicom_version, dicom_listing

    for patient, image in (("1", "11"), ("1", "12"), ("2", "21")):
        (tmp_path / "images" / patient).mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / patient / f"{image}.dcm").write_bytes(b"x")
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("\ufeffsite_id,patient_id,image_id\n1,1,11\n1,1,12\n1,2,21\n")  # with a byte-order mark
    complete = absent_dicom_version(train_csv, dicom_listing(tmp_path / "images"))
    assert complete.startswith("0 absent, ")
    (tmp_path / "images/1/12.dcm").unlink()
    one_gone = absent_dicom_version(train_csv, dicom_listing(tmp_path / "images"))
    assert one_gone.startswith("1 absent, ") and one_gone != complete
    (tmp_path / "images/3").mkdir()
    (tmp_path / "images/3/31.dcm").write_bytes(b"x")  # a file of no train.csv row changes nothing
    assert absent_dicom_version(train_csv, dicom_listing(tmp_path / "images")) == one_gone
    train_csv.write_text("site_id,image_id\n1,11\n")
    assert absent_dicom_version(train_csv, []) == "unreadable (ValueError)"  # the cohort step says why


def test_file_and_tree_versions_see_a_replacement_with_an_older_time(tmp_path):
    from leanmed.data.sources import file_version, tree_version

    (tmp_path / "ct/patient/series").mkdir(parents=True)
    slice_file = tmp_path / "ct/patient/series/1.dcm"
    slice_file.write_bytes(b"abc")
    before = file_version(slice_file), tree_version(tmp_path / "ct")
    assert before[1].startswith("1 DICOM files, ")
    stat = slice_file.stat()
    slice_file.write_bytes(b"abd")  # same size, other bytes, the time set back before the first
    os.utime(slice_file, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))
    after = file_version(slice_file), tree_version(tmp_path / "ct")
    assert after[0] != before[0] and after[1] != before[1]
    (tmp_path / "ct/patient/series/2.dcm").write_bytes(b"new slice")
    with_new_slice = tree_version(tmp_path / "ct")
    assert with_new_slice.startswith("2 DICOM files, ")
    # What the CT build does not read changes nothing: a downloader's log, a hidden file, a broken link.
    (tmp_path / "ct/download.log").write_text("done")
    (tmp_path / "ct/patient/series/.DS_Store").write_bytes(b"x")
    (tmp_path / "ct/patient/series/3.dcm").symlink_to(tmp_path / "nowhere.dcm")
    assert tree_version(tmp_path / "ct") == with_new_slice


def test_files_and_folders_that_cannot_be_reached_are_left_out_and_come_in_once_fixed(tmp_path, monkeypatch):
    """A broken link, a link loop or a folder without read permission (a disk's root-only lost+found) stopped the
    whole study while it planned (FileNotFoundError, ELOOP, PermissionError from the listing), LIDC included."""
    from leanmed.data import sources
    from leanmed.data.sources import dicom_listing

    make_tree(tmp_path, ["1", "2", "3"])
    before = dicom_listing(tmp_path)
    (tmp_path / "patient0" / "9.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (tmp_path / "patient1" / "8.dcm").symlink_to(tmp_path / "patient1" / "8.dcm")  # a loop
    (tmp_path / "lost+found").mkdir()
    real_scandir = os.scandir

    def scandir_without_permission(path):
        if os.path.basename(path) == "lost+found":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", scandir_without_permission)
    assert dicom_listing(tmp_path) == before
    (tmp_path / "patient0" / "9.dcm").unlink()
    (tmp_path / "patient0" / "9.dcm").symlink_to(tmp_path / "patient2" / "3.dcm")  # the link repaired
    assert [path for path, _, _ in dicom_listing(tmp_path)] == sorted(
        [path for path, _, _ in before] + ["patient0/9.dcm"]
    )
