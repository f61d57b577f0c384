"""Converted images deleted outside the workflow (by hand, to free disk space, a lost folder).

The PNGs under results/<dataset>/png are files a conversion step writes without declaring them (there are tens of
thousands), so Snakemake cannot see one go missing: images.csv / labels.csv still list it, and the next training job
fails on it. The workflow checks, before it plans, that every image its listings name exists; where some do not, it
marks the step that makes them (rsna_images via its DICOM shards, lidc_labels) to run again, which converts only the
missing images (the others keep their fingerprint) and writes the same listing.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

#: dataset -> (listing under results/<dataset>/, the rule that writes it and the images it names).
LISTINGS = {"rsna": ("images.csv", "rsna_images"), "lidc": ("labels.csv", "lidc_labels")}


def missing_listed_images(listing: str | os.PathLike) -> list[Path]:
    """The images a listing names (column ``path``, relative to the listing's folder; rows with a ``status`` other
    than "ok" name none) that are not files, in the listing's order."""
    listing = Path(listing)
    with open(listing, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    named = [listing.parent / row["path"] for row in rows if row.get("status", "ok") == "ok" and row.get("path")]
    return [path for path in named if not path.is_file()]

