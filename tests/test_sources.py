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
