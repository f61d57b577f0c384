"""LIDC pickle: reading (chunked), structure errors, labelling by number of raters, PNG output."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leanmed.data import lidc
from leanmed.data.png import png_fingerprint


def patch(n_marking_raters: int, value: float = 0.5) -> dict:
    """A 128x128 patch whose first `n_marking_raters` of 4 masks mark a small blob."""
    masks = []
    for rater in range(4):
        mask = np.zeros((128, 128), dtype=np.uint8)
        if rater < n_marking_raters:
            mask[60 + rater : 64 + rater, 60:64] = 1
        masks.append(mask)
    return {"image": np.full((128, 128), value, dtype=np.float32), "masks": masks, "series_uid": "1.2.3"}


def crafted_patches() -> dict:
    data = {f"LIDC-IDRI-0001_slice{n}_nodule0": patch(n) for n in range(5)}
    data["LIDC-IDRI-0002_slice7_nodule1"] = patch(2, value=0.0)
    return data


def write_pickle_in_chunks(path: Path, obj: object, max_bytes: int) -> Path:
    """Write `obj` the way the original LIDC writer does: one pickle stream, written in pieces."""
    payload = pickle.dumps(obj)
    with open(path, "wb") as handle:
        for start in range(0, len(payload), max_bytes):
            handle.write(payload[start : start + max_bytes])
    return path


@pytest.fixture()
def pickle_path(tmp_path):
    return write_pickle_in_chunks(tmp_path / "data_lidc.pickle", crafted_patches(), max_bytes=lidc.MAX_READ_BYTES)


@pytest.mark.parametrize(("min_raters", "expected"), [(2, [0, 0, 1, 1, 1, 1]), (3, [0, 0, 0, 1, 1, 0])])
def test_labels_follow_the_number_of_raters(pickle_path, tmp_path, min_raters, expected):
    labels = lidc.label_patches(pickle_path, tmp_path / "lidc", image_size=64, min_raters=min_raters)
    assert list(labels.columns) == ["image_id", "subject_id", "n_raters", "label", "path", "fingerprint"]
    assert labels["image_id"].tolist() == [f"LIDC-IDRI-0001_slice{n}_nodule0" for n in range(5)] + [
        "LIDC-IDRI-0002_slice7_nodule1"
    ]
    assert labels["n_raters"].tolist() == [0, 1, 2, 3, 4, 2]
    assert labels["label"].tolist() == expected
    assert labels["subject_id"].tolist() == ["LIDC-IDRI-0001"] * 5 + ["LIDC-IDRI-0002"]
    written = pd.read_csv(tmp_path / "lidc" / "labels.csv")
    pd.testing.assert_frame_equal(written, labels)


def test_png_written_8bit_at_the_requested_size(pickle_path, tmp_path):
    out = tmp_path / "lidc"
    labels = lidc.label_patches(pickle_path, out, image_size=256)
    assert labels["path"].iloc[0] == "png/LIDC-IDRI-0001_slice0_nodule0.png"
    for relative in labels["path"]:
        with Image.open(out / relative) as image:
            assert image.size == (256, 256) and image.mode == "L"
    with Image.open(out / labels["path"].iloc[0]) as grey, Image.open(out / labels["path"].iloc[5]) as black:
        assert set(np.asarray(grey).ravel().tolist()) == {128}  # 0.5 * 255 = 127.5, rounded
        assert set(np.asarray(black).ravel().tolist()) == {0}
    assert not list((out / "png").glob(".*"))  # atomic writes leave no temporary files


OLD_NS = 1_000_000_000_000_000_000  # a recognisable past mtime: a rewrite replaces it


def age_pngs(out: Path) -> dict[Path, bytes]:
    pngs = sorted((out / "png").glob("*.png"))
    for png in pngs:
        os.utime(png, ns=(OLD_NS, OLD_NS))
    return {png: png.read_bytes() for png in pngs}


def test_each_png_records_its_fingerprint_as_labels_csv_does(pickle_path, tmp_path):
    out = tmp_path / "lidc"
    labels = lidc.label_patches(pickle_path, out, image_size=32, code="code-1")
    data = crafted_patches()
    for key, relative, fingerprint in zip(labels["image_id"], labels["path"], labels["fingerprint"]):
        assert png_fingerprint(out / relative) == fingerprint
        assert fingerprint == lidc.patch_fingerprint(data[key]["image"], 32, "code-1")
    assert pd.read_csv(out / "labels.csv")["fingerprint"].tolist() == labels["fingerprint"].tolist()


def test_min_raters_changes_labels_csv_only_not_the_pngs(pickle_path, tmp_path):
    out = tmp_path / "lidc"
    lidc.label_patches(pickle_path, out, image_size=32, min_raters=2, code="code-1")
    before_csv = (out / "labels.csv").read_bytes()
    before = age_pngs(out)
    lidc.label_patches(pickle_path, out, image_size=32, min_raters=3, code="code-1")
    assert (out / "labels.csv").read_bytes() != before_csv
    for png, data in before.items():
        assert png.stat().st_mtime_ns == OLD_NS and png.read_bytes() == data
    # Unchanged: labels.csv's bytes too.
    lidc.label_patches(pickle_path, out, image_size=32, min_raters=2, code="code-1")
    assert (out / "labels.csv").read_bytes() == before_csv


@pytest.mark.parametrize("change", [{"image_size": 48}, {"code": "code-2"}], ids=lambda change: next(iter(change)))
def test_a_change_of_size_or_code_rewrites_every_png(pickle_path, tmp_path, change):
    out = tmp_path / "lidc"
    first = lidc.label_patches(pickle_path, out, **{"image_size": 32, "code": "code-1"})
    before = age_pngs(out)
    second = lidc.label_patches(pickle_path, out, **{"image_size": 32, "code": "code-1", **change})
    assert (second["fingerprint"] != first["fingerprint"]).all()
    for png in before:
        assert png.stat().st_mtime_ns != OLD_NS
    for relative, fingerprint in zip(second["path"], second["fingerprint"]):
        assert png_fingerprint(out / relative) == fingerprint


def test_a_changed_patch_in_the_pickle_rewrites_only_its_png(pickle_path, tmp_path):
    out = tmp_path / "lidc"
    lidc.label_patches(pickle_path, out, image_size=32, code="code-1")
    before = age_pngs(out)
    data = crafted_patches()
    changed = "LIDC-IDRI-0001_slice3_nodule0"
    data[changed]["image"] = np.full((128, 128), 0.25, dtype=np.float32)
    replaced = write_pickle_in_chunks(tmp_path / "data_lidc.pickle", data, max_bytes=lidc.MAX_READ_BYTES)
    lidc.label_patches(replaced, out, image_size=32, code="code-1")
    for png, content in before.items():
        if png.stem == changed:
            assert png.stat().st_mtime_ns != OLD_NS and png.read_bytes() != content
        else:
            assert png.stat().st_mtime_ns == OLD_NS and png.read_bytes() == content


def test_a_damaged_png_is_rewritten(pickle_path, tmp_path):
    out = tmp_path / "lidc"
    labels = lidc.label_patches(pickle_path, out, image_size=32, code="code-1")
    damaged = out / labels["path"].iloc[0]
    good = damaged.read_bytes()
    damaged.write_bytes(good[:40])
    lidc.label_patches(pickle_path, out, image_size=32, code="code-1")
    assert damaged.read_bytes() == good


def test_patch_to_uint8_resizes_smoothly_and_keeps_the_range():
    ramp = np.tile(np.linspace(0.0, 1.0, 128, dtype=np.float32), (128, 1))
    pixels = lidc.patch_to_uint8(ramp, 256)
    assert pixels.shape == (256, 256) and pixels.dtype == np.uint8
    assert pixels[:, 0].max() <= 1 and pixels[:, -1].min() >= 254
    assert np.all(np.diff(pixels[128].astype(int)) >= 0)  # a ramp stays a monotone ramp
    assert np.array_equal(lidc.patch_to_uint8(ramp, 128), np.rint(ramp * 255).astype(np.uint8))


def test_chunked_reading_reads_pieces_no_larger_than_the_limit(tmp_path, monkeypatch):
    data = crafted_patches()
    path = write_pickle_in_chunks(tmp_path / "chunks.pickle", data, max_bytes=1000)
    sizes: list[int] = []
    real_open = open

    class RecordingReader:
        def __init__(self, handle):
            self.handle = handle

        def readinto(self, view):
            sizes.append(len(view))
            return self.handle.readinto(view)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(
        lidc, "open", lambda *args, **kwargs: RecordingReader(real_open(*args, **kwargs)), raising=False
    )
    monkeypatch.setattr(lidc, "MAX_READ_BYTES", 4096)
    loaded = lidc.load_pickle(path)
    file_size = path.stat().st_size
    assert max(sizes) <= 4096 and len(sizes) == -(-file_size // 4096)
    assert sorted(loaded) == sorted(data)
    np.testing.assert_array_equal(
        loaded["LIDC-IDRI-0001_slice3_nodule0"]["masks"][2], data["LIDC-IDRI-0001_slice3_nodule0"]["masks"][2]
    )
    assert lidc.read_file_in_chunks(path, chunk_bytes=7) == path.read_bytes()


def test_truncated_pickle_is_reported_with_the_file(tmp_path, pickle_path):
    truncated = tmp_path / "truncated.pickle"
    truncated.write_bytes(pickle_path.read_bytes()[:-50])
    with pytest.raises(lidc.LidcError, match=r"truncated\.pickle.*not a readable pickle"):
        lidc.load_pickle(truncated)


def broken(mutate) -> dict:
    data = crafted_patches()
    mutate(data)
    return data


KEY = "LIDC-IDRI-0001_slice2_nodule0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (broken(lambda d: d[KEY].pop("image")), "missing 'image'"),
        (broken(lambda d: d[KEY].pop("masks")), "missing 'masks'"),
        (broken(lambda d: d.__setitem__(KEY, [1, 2])), "expected a dict"),
        (broken(lambda d: d[KEY]["masks"].pop()), "must hold 4 masks"),
        (broken(lambda d: d[KEY].__setitem__("masks", "mask")), "must be a list of 4"),
        (broken(lambda d: d[KEY].__setitem__("image", np.zeros((64, 64)))), r"shape \(128, 128\)"),
        (broken(lambda d: d[KEY].__setitem__("image", np.zeros((128, 128, 3)))), "must be 2-D"),
        (broken(lambda d: d[KEY].__setitem__("image", np.full((128, 128), 2.0))), r"\[0, 1\].*max 2"),
        (broken(lambda d: d[KEY]["image"].__setitem__((0, 0), np.nan)), "NaN"),
        (broken(lambda d: d[KEY]["masks"].__setitem__(1, np.zeros((128, 127)))), r"masks\[1\].*shape"),
        (broken(lambda d: d[KEY]["masks"].__setitem__(3, -np.ones((128, 128)))), r"masks\[3\].*negative"),
        (broken(lambda d: d[KEY].__setitem__("image", np.full((128, 128), "a"))), "numeric array"),
    ],
)
def test_structure_errors_name_the_file_and_the_key(tmp_path, data, message):
    path = write_pickle_in_chunks(tmp_path / "bad.pickle", data, max_bytes=lidc.MAX_READ_BYTES)
    with pytest.raises(lidc.LidcError, match=message) as error:
        lidc.load_pickle(path)
    assert "bad.pickle" in str(error.value) and repr(KEY) in str(error.value)
    # Nothing is written for a pickle with a bad entry.
    with pytest.raises(lidc.LidcError):
        lidc.label_patches(path, tmp_path / "out")
    assert not (tmp_path / "out" / "labels.csv").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([patch(1)], "expected a dict"),
        ({}, "no patches"),
        ({"nounderscore": patch(1)}, "'nounderscore'.*<patient>_<rest>"),
        ({"_slice1": patch(1)}, "'_slice1'"),
        ({7: patch(1)}, "key 7.*text"),
    ],
)
def test_top_level_and_key_errors(tmp_path, data, message):
    path = write_pickle_in_chunks(tmp_path / "top.pickle", data, max_bytes=lidc.MAX_READ_BYTES)
    with pytest.raises(lidc.LidcError, match=message):
        lidc.load_pickle(path)


def test_unsafe_keys_get_safe_unique_file_names(tmp_path):
    data = {"P1_a/b c": patch(1), "P1_a_b_c": patch(2), "P1_a:b c": patch(3), "P2_../../escape": patch(0)}
    path = write_pickle_in_chunks(tmp_path / "keys.pickle", data, max_bytes=lidc.MAX_READ_BYTES)
    out = tmp_path / "lidc"
    labels = lidc.label_patches(path, out, image_size=32)
    stems = [Path(relative).stem for relative in labels["path"]]
    assert len(set(stems)) == 4
    assert "P1_a_b_c" in stems  # safe keys are kept as they are
    for relative in labels["path"]:
        assert relative.startswith("png/") and "/" not in relative[len("png/") :]
        assert (out / relative).is_file()
    assert sorted(p.name for p in (out / "png").iterdir()) == sorted(f"{stem}.png" for stem in stems)
    assert labels.set_index("image_id").loc["P2_../../escape", "subject_id"] == "P2"


def test_invalid_arguments_are_rejected(pickle_path, tmp_path):
    with pytest.raises(ValueError, match="min_raters"):
        lidc.label_patches(pickle_path, tmp_path / "out", min_raters=5)
    with pytest.raises(ValueError, match="image_size"):
        lidc.label_patches(pickle_path, tmp_path / "out", image_size=0)


def test_masks_as_one_stacked_array_are_accepted(tmp_path):
    entry = copy.deepcopy(patch(3))
    entry["masks"] = np.stack(entry["masks"])
    path = write_pickle_in_chunks(tmp_path / "stacked.pickle", {"P9_s1": entry}, max_bytes=lidc.MAX_READ_BYTES)
    labels = lidc.label_patches(path, tmp_path / "lidc", image_size=16)
    assert labels["n_raters"].tolist() == [3]


def test_generated_demo_pickle_is_labelled_as_its_summary_says(tmp_path):
    from leanmed import demo

    summary = demo.generate_lidc(tmp_path / "demo.pickle", n_patients=3, patches_per_patient=5, seed=0)
    for min_raters, expected in ((2, summary["n_at_least_2_raters"]), (3, summary["n_at_least_3_raters"])):
        labels = lidc.label_patches(
            tmp_path / "demo.pickle", tmp_path / f"lidc{min_raters}", image_size=32, min_raters=min_raters
        )
        assert len(labels) == summary["n_patches"] and labels["label"].sum() == expected
        assert labels["subject_id"].nunique() == summary["n_patients"]
