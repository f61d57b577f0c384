"""leanmed.study.options_record: each workflow job's params as a file, rewritten only when they change; and every rule
with params takes its record as an input (so that a change reruns it without Snakemake's own records)."""

import json
import os
import re

import pytest
import torch

from leanmed.study.deleted_outputs import (
    deleted_best_checkpoint, deleted_images, drop_last_checkpoint, missing_listed_images,
)
from leanmed.study.options_record import (
    mark_to_run_again, options_record_path, options_record_text, write_options_record,
)
from workflow_helpers import REPO

RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk"))
RULE_BLOCK = re.compile(r"^ *rule (\w+):\n(.*?)(?=^ *rule \w+:|\Z)", re.S | re.M)


def test_the_record_path_names_the_rule_and_each_wildcard():
    assert options_record_path("results/options", "aggregate", {}) == "results/options/aggregate.json"
    wildcards = dict(dataset="rsna", model="densenet121", setting="fp32", scale="1", seed="10")
    assert options_record_path("results/options/", "train", wildcards) == (
        "results/options/train/dataset=rsna/model=densenet121/setting=fp32/scale=1/seed=10.json"
    )


def test_equal_params_give_the_same_text_whatever_their_order():
    first = options_record_text("split", {"seed": 1, "fractions": [0.6, 0.2, 0.2], "stratify_by": {"b": 1, "a": 2}})
    second = options_record_text("split", {"stratify_by": {"a": 2, "b": 1}, "fractions": [0.6, 0.2, 0.2], "seed": 1})
    assert first == second
    record = json.loads(first)
    assert record["rule"] == "split" and record["params"]["seed"] == 1 and "rerun" in record["about"]
    assert options_record_text("split", {"seed": 2}) != options_record_text("split", {"seed": 1})


def test_a_param_that_is_not_json_data_is_refused_with_the_rule_and_param_named():
    with pytest.raises(TypeError, match=r"rule train: param 'run' is not JSON data"):
        options_record_text("train", {"run": object()})


def test_the_record_is_rewritten_only_when_the_params_change(tmp_path):
    path = tmp_path / "options/lidc_labels.json"
    assert write_options_record(path, "lidc_labels", {"min_raters": 2}) == "created"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert write_options_record(path, "lidc_labels", {"min_raters": 2}) == "unchanged"
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert write_options_record(path, "lidc_labels", {"min_raters": 3}) == "rewritten"
    assert path.stat().st_mtime_ns > 1_000_000_000
    assert json.loads(path.read_text())["params"] == {"min_raters": 3}


def test_a_dry_run_creates_an_absent_record_but_leaves_an_existing_one_as_it_is(tmp_path):
    path = tmp_path / "options/split/dataset=rsna.json"
    assert write_options_record(path, "split", {"seed": 1}, overwrite=False) == "created"
    assert write_options_record(path, "split", {"seed": 7}, overwrite=False) == "kept"
    assert json.loads(path.read_text())["params"] == {"seed": 1}


def test_every_rule_with_params_takes_its_own_options_record_as_input():
    text = "\n".join(path.read_text() for path in RULE_FILES)
    blocks = dict(RULE_BLOCK.findall(text))
    with_params = sorted(rule for rule, block in blocks.items() if re.search(r"^\s+params:", block, re.M))
    assert {"demo_rsna", "dicom_to_png", "split", "train", "aggregate", "leftovers"} <= set(with_params)
    for rule in with_params:
        block = blocks[rule]
        inputs = re.search(r"^(\s+)input:\n(.*?)(?=^\1\w+:)", block, re.S | re.M)
        assert inputs, f"rule {rule} has params but no input section holding its options record"
        assert f'options=options_record("{rule}"' in inputs.group(2), f"rule {rule}: no options_record({rule!r})"


def test_a_job_marked_to_run_again_gets_a_new_text_once_which_later_writes_keep(tmp_path):
    """A touch would not rerun the job: Snakemake compares a small input's checksum with the one it recorded."""
    path = tmp_path / "options/rsna_images.json"
    assert mark_to_run_again(path, "images missing") is False  # no record: the job runs anyway
    write_options_record(path, "rsna_images", {"max_excluded_fraction": 0.1})
    before = path.read_text()
    assert mark_to_run_again(path, "2 image(s) listed in results/rsna/images.csv were missing") is True
    marked = path.read_text()
    assert marked != before and json.loads(marked)["redone"]["why"].startswith("2 image(s)")
    assert write_options_record(path, "rsna_images", {"max_excluded_fraction": 0.1}) == "unchanged"
    assert write_options_record(path, "rsna_images", {"max_excluded_fraction": 0.2}) == "rewritten"
    assert json.loads(path.read_text())["redone"] == json.loads(marked)["redone"]


def test_the_images_a_listing_names_that_are_gone_are_found_in_its_order(tmp_path):
    listing = tmp_path / "rsna/images.csv"
    (tmp_path / "rsna/png/images/7").mkdir(parents=True)
    (tmp_path / "rsna/png/images/7/1.png").write_bytes(b"png")
    listing.write_text(
        "image_id,subject_id,label,path,status,reason,fingerprint\n"
        "1,7,0,png/images/7/1.png,ok,,f1\n"
        "3,8,1,png/images/8/3.png,ok,,f3\n"
        "2,7,0,png/images/7/2.png,ok,,f2\n"
        "4,8,1,,excluded,corrupt DICOM,\n"
    )
    assert missing_listed_images(listing) == [
        tmp_path / "rsna/png/images/8/3.png", tmp_path / "rsna/png/images/7/2.png"]
    labels = tmp_path / "lidc/labels.csv"  # no status column: every row names an image
    (tmp_path / "lidc/png").mkdir(parents=True)
    labels.write_text("image_id,subject_id,n_raters,label,path,fingerprint\na,p,2,1,png/a.png,f\n")
    assert missing_listed_images(labels) == [tmp_path / "lidc/png/a.png"]
    first = tmp_path / "lidc/png/a.png"
    assert deleted_images(labels) == (
        f"1 image(s) listed in {labels} were missing, deleted outside the workflow (first: {first})")
    first.write_bytes(b"png")
    written_ns = labels.stat().st_mtime_ns
    os.utime(first, ns=(written_ns - 10**9, written_ns - 10**9))  # made before its listing, as its step does
    assert deleted_images(labels) is None
    assert deleted_images(tmp_path / "absent/labels.csv") is None  # not made yet: its step runs anyway
    # Overwritten after the listing (by hand, another program): its step runs again and converts it anew.
    os.utime(first, ns=(written_ns + 10**9, written_ns + 10**9))
    assert deleted_images(labels) == (
        f"1 image(s) listed in {labels} were modified after it was written (by hand, another program, or a run "
        f"stopped before writing it again; first: {first})")


def test_a_missing_best_checkpoint_reruns_a_run_that_reports_a_best_epoch_only(tmp_path):
    run_dir = tmp_path / "seed1"
    run_dir.mkdir()
    assert deleted_best_checkpoint(run_dir) is None  # no metrics.json: the job runs anyway
    metrics = run_dir / "metrics.json"
    metrics.write_text(json.dumps({"training": {"best_epoch": None}}))
    assert deleted_best_checkpoint(run_dir) is None  # diverged before its first epoch: it never had a best.pt
    metrics.write_text(json.dumps({"training": {"best_epoch": 3}}))
    assert deleted_best_checkpoint(run_dir) == (
        f"{run_dir / 'best.pt'} (the checkpoint of best epoch 3, which metrics.json reports) was missing")
    (run_dir / "last.pt").write_bytes(b"last epoch")
    assert drop_last_checkpoint(run_dir) is True and not (run_dir / "last.pt").exists()
    assert drop_last_checkpoint(run_dir) is False
    torch.save({"weights": torch.zeros(4)}, run_dir / "best.pt")
    assert deleted_best_checkpoint(run_dir) is None
    metrics.write_text("{damaged")
    (run_dir / "best.pt").unlink()
    assert deleted_best_checkpoint(run_dir) is None  # stale_metrics says why a damaged metrics.json reruns the job


def test_damaged_checkpoints_and_metrics_that_do_not_match_the_jobs_options_or_split_are_found(tmp_path):
    import hashlib

    from leanmed.study.deleted_outputs import drop_damaged_last_checkpoint, is_damaged_checkpoint, stale_metrics

    run_dir = tmp_path / "seed1"
    run_dir.mkdir()
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("image_id,split\\n1,train\\n")
    split_sha256 = hashlib.sha256(split_csv.read_bytes()).hexdigest()
    assert stale_metrics(run_dir, "abc", split_csv) is None  # no metrics.json: the job runs anyway
    metrics = run_dir / "metrics.json"
    record = {"training": {"best_epoch": 2}, "provenance": {"config_hash": "abc"}, "inputs": {"split_csv_sha256": split_sha256}}
    metrics.write_text(json.dumps(record))
    assert stale_metrics(run_dir, "abc", split_csv) is None
    assert "records other training options (config_hash abc, now def)" in stale_metrics(run_dir, "def", split_csv)
    assert stale_metrics(run_dir, "abc", tmp_path / "not-made-yet.csv") is None  # its step runs first
    split_csv.write_text("image_id,split\\n1,test\\n")  # edited by hand
    assert f"records another {split_csv}" in stale_metrics(run_dir, "abc", split_csv)
    metrics.write_text(json.dumps(record)[:40])
    assert stale_metrics(run_dir, "abc", split_csv) == f"{metrics} was damaged (not a readable JSON object)"
    assert deleted_best_checkpoint(run_dir) is None  # stale_metrics says why

    torch.save({"weights": torch.zeros(64)}, run_dir / "best.pt")
    torch.save({"weights": torch.zeros(64)}, run_dir / "last.pt")
    assert not is_damaged_checkpoint(run_dir / "best.pt") and not is_damaged_checkpoint(tmp_path / "absent.pt")
    assert deleted_best_checkpoint(run_dir) is None and drop_damaged_last_checkpoint(run_dir) is None
    for name in ("best.pt", "last.pt"):
        path = run_dir / name
        path.write_bytes(path.read_bytes()[:-30])  # cut short
        assert is_damaged_checkpoint(path)
    assert deleted_best_checkpoint(run_dir) == f"{run_dir / 'best.pt'} was damaged (not a complete checkpoint)"
    assert "is deleted" in drop_damaged_last_checkpoint(run_dir) and not (run_dir / "last.pt").exists()
