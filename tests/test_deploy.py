"""CPU deployment figures of a trained checkpoint: real timing of a real (tiny) trained model."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leanmed.deploy import CheckpointMissing, deployment_record
from leanmed.report.deployment import DEPLOYMENT_COLUMNS, deployment_caption, deployment_frame, deployment_table
from leanmed.report.tables import to_markdown
from leanmed.train.job import TrainConfig, run

REPO = Path(__file__).resolve().parents[1]


def make_split(root, n_per_split=8, size=16):
    """A tiny split.csv whose positives carry a bright square."""
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "val", "test"):
        for index in range(n_per_split):
            label = index % 2
            pixels = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
            if label:
                pixels[4:10, 4:10] = 250
            path = f"png/{split}_{index}.png"
            (root / "png").mkdir(exist_ok=True)
            Image.fromarray(pixels).save(root / path)
            rows.append(dict(image_id=f"{split}{index}", subject_id=f"{split}{index}", label=label, path=path, split=split))
    pd.DataFrame(rows).to_csv(root / "split.csv", index=False)
    return root / "split.csv"


def test_deployment_record_times_the_trained_checkpoint_on_cpu(tmp_path):
    split_csv = make_split(tmp_path)
    runs_root = tmp_path / "runs"
    run_spec = dict(dataset="toy", model="mlp_small", setting="half_8bit", scale=1, seed=1)
    out_dir = runs_root / "toy/mlp_small/half_8bit/s1/seed1"
    run(TrainConfig(split_csv=str(split_csv), out_dir=str(out_dir), image_size=16, max_epochs=2, energy=False,
                    inference_repeats=1, lr=1e-3, **run_spec))
    record = deployment_record(run_spec, runs_root, split_csv, repeats=2, max_images=5)
    assert record["note"] == ""
    assert record["n_test_images"] == 5 and record["latency_images"] == 5  # latency: the first 64 at most
    assert record["per_image_latency_ms"] > 0
    assert record["throughput_images_per_s"] == pytest.approx(5 / record["test_set_seconds_batch32"])
    assert record["trained_weight_dtype"] == "float16"
    assert record["deployed_weight_dtype"] == "float32"

    # fp16 weights with torch Adam: NaN in the first epoch, no best checkpoint; listed with a note saying so.
    diverged_spec = dict(run_spec, setting="half")
    run(TrainConfig(split_csv=str(split_csv), out_dir=str(runs_root / "toy/mlp_small/half/s1/seed1"), image_size=16,
                    max_epochs=2, energy=False, inference_repeats=1, lr=1e-3, **diverged_spec))
    diverged = deployment_record(diverged_spec, runs_root, split_csv)
    assert "the run diverged before its first epoch" in diverged["note"]

    paths = []
    for index, item in enumerate((diverged, record)):  # the diverged run first: its few keys fix no column order
        path = tmp_path / f"model{index}.csv"
        deployment_frame([item]).to_csv(path, index=False)
        paths.append(path)
    table = deployment_table(paths)
    assert list(table.columns) == list(DEPLOYMENT_COLUMNS)
    assert list(table["setting"]) == ["half", "half_8bit"]
    markdown = to_markdown(table, deployment_caption(table))
    assert table.loc[1, "n_test_images"] == 5 and "| 5 |" in markdown  # an integer, not 5.0
    assert "<NA>" not in markdown and "nan" not in markdown  # the diverged run's empty cells
    caption = deployment_caption(table)
    assert "float32" in caption and "2 runs" in caption
    assert "batch-1 forward time (ms) over the first 5 test images" in caption
    assert "batches of 32 (median pass) over the first 5 test images" in caption

    # A finished run's best.pt deleted outside the workflow: an error naming it, not a note calling it diverged.
    (out_dir / "best.pt").unlink()
    with pytest.raises(CheckpointMissing, match=r"best\.pt is missing, yet .*metrics\.json reports best epoch"):
        deployment_record(run_spec, runs_root, split_csv)


def test_the_report_rules_do_not_import_torch():
    """The report's jobs (tables, figures, statistics, the deployment table's merge) read CSV files: importing torch
    cost each job 2.5-3 s of its start on 2 CPU cores (the merge imported leanmed.deploy, which measures)."""
    modules = sorted(f"leanmed.report.{path.stem}" for path in (REPO / "src/leanmed/report").glob("*.py"))
    script = f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\nprint('torch' in sys.modules)"
    printed = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert len(modules) > 10 and printed.split() == ["False"]
