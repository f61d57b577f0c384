"""Files that jobs write without declaring them, deleted outside the workflow (by hand, to free disk space, a lost
folder), found before the workflow plans so that the job making them runs again.

Snakemake cannot see such a file go missing, as it is no output of any rule:
- the converted PNGs under results/<dataset>/png (tens of thousands): images.csv / labels.csv still list a deleted one,
  and the next training job fails on it. The step that makes them (rsna_images via its DICOM shards, lidc_labels)
  runs again and converts only the missing images (the others keep their fingerprint), writing the same listing. So
  it does for a listed image modified after its listing was written (overwritten, cut short).
- a run's best-validation checkpoint, best.pt (hundreds of MB for the larger models): CPU deployment reads it, and a
  rerun of deployment reported the run as "diverged before its first epoch". The training job runs again and, as
  its best weights are gone, trains the run afresh: its last.pt, which holds the last epoch's weights and not the
  best one's (resumed, the run would have no test result), is deleted first (``drop_last_checkpoint``). This is done
  here, while planning, not in the training job, whose code is part of every run's fingerprint.
Besides deleted, such files and a run's declared metrics.json can be damaged or stand from elsewhere (a copy cut short,
a disk error, an older backup restored with fresh modification times, which Snakemake takes as current when its own
records say the job last ran with the current options):
- a best.pt or last.pt that is not a complete checkpoint (torch.save writes a zip archive; one cut short lacks the
  archive's closing directory, found by reading the file's last bytes): a damaged best.pt reruns the run as a deleted
  one does; a damaged last.pt, read only to resume, is deleted (resumed, the job failed on it every time);
- a metrics.json that cannot be read, or that records other options (its ``provenance.config_hash``) or another
  split.csv (``inputs.split_csv_sha256``) than the job has now: the job runs again, resuming from last.pt only where
  that matches (leanmed.train.checkpoint).
Each check returns why the job must run again, or None.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import stat
import zipfile
from pathlib import Path

from leanmed.fingerprint import file_sha256

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


def _listed_images(listing: Path) -> list[Path]:
    with open(listing, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [listing.parent / row["path"] for row in rows if row.get("status", "ok") == "ok" and row.get("path")]


def missing_listed_images(listing: str | os.PathLike) -> list[Path]:
    """The images a listing names (column ``path``, relative to the listing's folder; rows with a ``status`` other
    than "ok" name none) that are not files, in the listing's order."""
    return [path for path in _listed_images(Path(listing)) if not path.is_file()]


def changed_listed_images(listing: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The images a listing names that are not files, and those modified after the listing was written (its step
    writes every image before the listing: one newer was overwritten since, by hand or by another program), each in
    the listing's order. One stat per image (the RSNA cohort's 11,856: tens of milliseconds)."""
    listing = Path(listing)
    written_ns = listing.stat().st_mtime_ns
    missing, modified = [], []
    for path in _listed_images(listing):
        try:
            status = path.stat()
        except FileNotFoundError:
            missing.append(path)
            continue
        if not stat.S_ISREG(status.st_mode):
            missing.append(path)
        elif status.st_mtime_ns > written_ns:
            modified.append(path)
    return missing, modified


def deleted_images(listing: str | os.PathLike) -> str | None:
    """Why the step writing ``listing`` must run again: images it names are missing, or were overwritten after it
    was written (the step then converts again each whose fingerprint chunk (leanmed.data.png) is gone or whose data
    is damaged; an overwrite that keeps the chunk with other pixels is not found); None when all exist unchanged or
    the listing is not there yet (the step runs anyway)."""
    if not Path(listing).is_file():
        return None
    missing, modified = changed_listed_images(listing)
    reasons = []
    if missing:
        reasons.append(f"{len(missing)} image(s) listed in {listing} were missing, deleted outside the workflow "
                       f"(first: {missing[0]})")
    if modified:
        reasons.append(f"{len(modified)} image(s) listed in {listing} were modified after it was written (by hand, "
                       f"another program, or a run stopped before writing it again; first: {modified[0]})")
    return "; ".join(reasons) or None


def is_damaged_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a file but no complete torch checkpoint: torch.save writes a zip archive, whose closing
    directory a file cut short lacks (zipfile finds it by reading the last bytes only, milliseconds for a 1.4 GB
    ViT checkpoint)."""
    return Path(path).is_file() and not zipfile.is_zipfile(path)


def read_metrics(run_dir: str | os.PathLike) -> dict | None | str:
    """The run's metrics.json as a dict; None when there is none; "damaged" when it cannot be read as a JSON object."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "damaged"
    return metrics if isinstance(metrics, dict) else "damaged"


def deleted_best_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Why the training job of ``run_dir`` must run again: its metrics.json names a best epoch whose checkpoint
    (best.pt) is missing, or best.pt is damaged (``is_damaged_checkpoint``). None when best.pt is sound, when the run
    has no readable metrics.json (it runs anyway, or ``stale_metrics`` says why) and when it diverged before its first
    finished epoch (such a run has no best checkpoint)."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_CHECKPOINT
    if is_damaged_checkpoint(best):
        return f"{best} was damaged (not a complete checkpoint)"
    if best.is_file():
        return None
    metrics = read_metrics(run_dir)
    best_epoch = (metrics.get("training") or {}).get("best_epoch") if isinstance(metrics, dict) else None
    if best_epoch is None:
        return None
    return f"{best} (the checkpoint of best epoch {best_epoch}, which metrics.json reports) was missing"


def stale_metrics(run_dir: str | os.PathLike, config_hash: str, split_csv: str | os.PathLike) -> str | None:
    """Why the training job of ``run_dir`` must run again although Snakemake takes its outputs as current: its
    metrics.json cannot be read, records another ``config_hash`` than the job's current one, or another split.csv
    (sha256) than `split_csv` on disk. None when there is no metrics.json (the job runs anyway), when it matches, and
    when `split_csv` does not exist yet (its step runs first, and Snakemake reruns the job after it)."""
    metrics = read_metrics(run_dir)
    if metrics is None:
        return None
    where = Path(run_dir) / "metrics.json"
    if metrics == "damaged":
        return f"{where} was damaged (not a readable JSON object)"
    recorded = (metrics.get("provenance") or {}).get("config_hash")
    if recorded is not None and recorded != config_hash:
        return (f"{where} records other training options (config_hash {recorded}, now {config_hash}): restored from a "
                "backup or copied from elsewhere, or marked as current by --touch")
    trained_on = (metrics.get("inputs") or {}).get("split_csv_sha256")
    if trained_on is not None and Path(split_csv).is_file() and trained_on != split_sha256(split_csv):
        return f"{where} records another {split_csv} than the one there now (edited or restored by hand)"
    return None


def split_sha256(split_csv: str | os.PathLike) -> str:
    """sha256 of a split.csv, hashed once per version of the file (path, size, mtime) in a process: the checks of all
    runs of a dataset read the same file while the workflow plans (about 1 MB for the RSNA cohort)."""
    status = os.stat(split_csv)
    return _sha256_of_version(str(split_csv), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def drop_damaged_last_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Delete the run's last.pt when it is damaged (``is_damaged_checkpoint``: read only to resume, it failed the job
    every time); what was done, or None."""
    last = Path(run_dir) / LAST_CHECKPOINT
    if not is_damaged_checkpoint(last):
        return None
    last.unlink(missing_ok=True)
    return f"{last} was damaged (not a complete checkpoint) and is deleted: the run trains afresh when it runs again"


def drop_last_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Delete the run's last.pt (once its best.pt is gone, resuming it would end without a test result); True when
    there was one."""
    last = Path(run_dir) / LAST_CHECKPOINT
    existed = last.is_file()
    last.unlink(missing_ok=True)
    return existed
