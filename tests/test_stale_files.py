"""PNGs of inputs a step no longer has leave results/: the helper, LIDC labelling, and the RSNA image merge."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
from PIL import Image

from leanmed.data import convert, lidc
from leanmed.data.stale_files import remove_stale_pngs


def write_grey_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    return path


def test_only_pngs_not_current_are_deleted_with_the_folders_left_empty(tmp_path):
    folder = tmp_path / "png"
    kept = write_grey_png(folder / "a" / "kept.png")
    stale_alone = write_grey_png(folder / "b" / "old.png")  # its folder empties: removed too
    stale_beside = write_grey_png(folder / "a" / "old.png")
    other = folder / "a" / "notes.txt"
    other.write_text("not a PNG: not ours to judge")
    removed = remove_stale_pngs(folder, [kept])
    assert removed == sorted([stale_beside, stale_alone])
    assert kept.is_file() and other.is_file() and folder.is_dir()
    assert not stale_alone.parent.exists() and not stale_beside.exists()
    assert remove_stale_pngs(folder, [kept]) == []  # nothing left to remove
    assert remove_stale_pngs(tmp_path / "absent", []) == []


def lidc_pickle(path, keys):
    masks = [np.zeros((128, 128), dtype=np.uint8) for _ in range(4)]
    data = {key: {"image": np.full((128, 128), 0.5, np.float32), "masks": masks, "series_uid": "1.2"} for key in keys}
    path.write_bytes(pickle.dumps(data))
    return path


def test_lidc_labelling_removes_the_pngs_of_patches_no_longer_in_the_pickle(tmp_path):
    out = tmp_path / "lidc"
    first = ["LIDC-IDRI-0001_slice_1_nodule_0", "LIDC-IDRI-0002_slice_5_nodule_0"]
    lidc.label_patches(lidc_pickle(tmp_path / "first.pickle", first), out, image_size=16)
    kept = out / "png" / f"{first[0]}.png"
    kept_state = (kept.read_bytes(), kept.stat().st_mtime_ns)
    second = [first[0], "LIDC-IDRI-0003_slice_9_nodule_0"]  # the pickle regenerated: one patch gone, one new
    labels = lidc.label_patches(lidc_pickle(tmp_path / "second.pickle", second), out, image_size=16)
    assert sorted(path.name for path in (out / "png").glob("*.png")) == sorted(f"{key}.png" for key in second)
    assert sorted(labels["path"]) == sorted(f"png/{key}.png" for key in second)
    assert (kept.read_bytes(), kept.stat().st_mtime_ns) == kept_state  # an unchanged patch keeps its PNG as it was


def test_the_rsna_merge_removes_the_pngs_of_images_it_no_longer_converts(tmp_path):
    dataset = tmp_path / "rsna"
    current = write_grey_png(dataset / "png" / "images" / "10" / "1.png")
    left_cohort = write_grey_png(dataset / "png" / "images" / "11" / "2.png")
    now_excluded = write_grey_png(dataset / "png" / "images" / "10" / "3.png")
    merged = pd.DataFrame({
        "image_id": ["1", "3"], "subject_id": ["10", "10"], "label": [0, 0],
        "path": ["png/images/10/1.png", "png/images/10/3.png"], "status": [convert.STATUS_OK, convert.STATUS_EXCLUDED],
        "reason": ["", "decode error"], "fingerprint": ["f", ""],
    })
    assert convert.remove_stale_images(merged, dataset / "png") == sorted([now_excluded, left_cohort])
    assert current.is_file() and not left_cohort.parent.exists()
