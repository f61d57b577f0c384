"""The CPU deployment table: one row per run as ``leanmed.deploy.deployment_record`` measures it (columns, types),
the per-model tables merged into one, and its caption. Reading and writing the table needs no torch: the job that
merges the per-model tables imports only this (importing leanmed.deploy, which measures, cost it 2.5-3 s)."""

from __future__ import annotations

import platform

import pandas as pd

# The table's columns in order, whatever the first run holds (a diverged run has the run keys and a note only), and
# those holding whole numbers (kept integers where some run has none, as a clean run of other runs would write them).
DEPLOYMENT_COLUMNS = (
    "dataset", "model", "setting", "scale", "seed", "per_image_latency_ms", "test_set_seconds_batch32",
    "throughput_images_per_s", "n_test_images", "latency_images", "input_size", "trained_weight_dtype",
    "deployed_weight_dtype", "cpu", "threads", "repeats", "note",
)
INTEGER_COLUMNS = ("scale", "seed", "n_test_images", "latency_images", "input_size", "threads", "repeats")


def deployment_frame(rows) -> pd.DataFrame:
    """``deployment_record`` rows (dicts or a DataFrame) with DEPLOYMENT_COLUMNS in order, whole numbers as integers
    (empty where a run has none), the note empty rather than missing."""
    frame = pd.DataFrame(rows).reindex(columns=list(DEPLOYMENT_COLUMNS))
    frame = frame.astype({column: "Int64" for column in INTEGER_COLUMNS})
    frame["note"] = frame["note"].fillna("")
    return frame


def deployment_table(table_paths) -> pd.DataFrame:
    """Tables of ``deployment_record`` rows (CSV files, e.g. one per model) as one table, in the given order."""
    return deployment_frame(pd.concat([pd.read_csv(path) for path in table_paths], ignore_index=True))


def deployment_caption(table: pd.DataFrame) -> str:
    cpus = ", ".join(sorted(set(table.get("cpu", pd.Series(dtype=str)).dropna())))
    threads = sorted({int(value) for value in table.get("threads", pd.Series(dtype=float)).dropna()})
    def counts(column):
        values = sorted({int(value) for value in table.get(column, pd.Series(dtype=float)).dropna()})
        return "/".join(map(str, values)) or "n/a"

    return (
        f"CPU inference of the best-validation checkpoint of {len(table)} runs on {cpus or 'this machine'} "
        f"({platform.machine()}), float32 weights, {'/'.join(map(str, threads)) or 'n/a'} thread(s). Latency: median "
        f"over repeats of the mean batch-1 forward time (ms) over the first {counts('latency_images')} test images of "
        "each run. Throughput: images per second in batches of 32 (median pass) over the first "
        f"{counts('n_test_images')} test images of each run. Image decoding excluded; one untimed batch-32 pass and "
        "four untimed batch-1 forwards first. Runs without a best checkpoint are listed with a note."
    )
