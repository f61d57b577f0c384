"""Files that jobs write without declaring them, deleted outside the workflow (by hand, to free disk space, a lost
folder), found before the workflow plans so that the job making them runs again.

Snakemake cannot see such a file go missing, as it is no output of any rule:
- the converted PNGs under results/<dataset>/png (tens of thousands): images.csv / labels.csv still list a deleted one,
  and the next training job fails on it. The step that makes them (rsna_images via its DICOM shards, lidc_labels)
  runs again and converts only the missing images (the others keep their fingerprint), writing the same listing.
- a run's best-validation checkpoint, best.pt (hundreds of MB for the larger models): CPU deployment reads it, and a
  rerun of deployment reported the run as "diverged before its first epoch". The training job runs again and, as
  its best weights are gone, trains the run afresh: its last.pt, which holds the last epoch's weights and not the
  best one's (resumed, the run would have no test result), is deleted first (``drop_last_checkpoint``). This is done
  here, while planning, not in the training job, whose code is part of every run's fingerprint.
Each check returns why the job must run again, or None.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


def missing_listed_images(listing: str | os.PathLike) -> list[Path]:
    """The images a listing names (column ``path``, relative to the listing's folder; rows with a ``status`` other
    than "ok" name none) that are not files, in the listing's order."""
    listing = Path(listing)
    with open(listing, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    named = [listing.parent / row["path"] for row in rows if row.get("status", "ok") == "ok" and row.get("path")]
    return [path for path in named if not path.is_file()]


def deleted_images(listing: str | os.PathLike) -> str | None:
    """Why the step writing ``listing`` must run again: images it names are missing; None when all exist or the
    listing is not there yet (the step runs anyway)."""
    if not Path(listing).is_file():
        return None
    missing = missing_listed_images(listing)
    if not missing:
        return None
    return f"{len(missing)} image(s) listed in {listing} were missing (first: {missing[0]})"


def deleted_best_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Why the training job of ``run_dir`` must run again: its metrics.json names a best epoch whose checkpoint
    (best.pt) is missing. None when best.pt exists, when the run has no metrics.json (it runs anyway) or a damaged
    one, and when it diverged before its first finished epoch (such a run has no best checkpoint)."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_CHECKPOINT
    if best.is_file():
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    best_epoch = (metrics.get("training") or {}).get("best_epoch") if isinstance(metrics, dict) else None
    if best_epoch is None:
        return None
    return f"{best} (the checkpoint of best epoch {best_epoch}, which metrics.json reports) was missing"


def drop_last_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Delete the run's last.pt (once its best.pt is gone, resuming it would end without a test result); True when
    there was one."""
    last = Path(run_dir) / LAST_CHECKPOINT
    existed = last.is_file()
    last.unlink(missing_ok=True)
    return existed
