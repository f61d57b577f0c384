"""Rule rsna_images: merge the conversion manifests into images.csv and excluded.csv."""
import json
import logging
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.data.convert import merge_manifests

# Written first: it describes the PNGs even when the merge below fails on too many exclusions.
with open(snakemake.output.preprocessing, "w") as handle:
    json.dump(snakemake.params.preprocessing, handle, indent=2)

try:
    merge_manifests(
        snakemake.input.manifests,
        snakemake.output.images,
        snakemake.output.excluded,
        max_excluded_fraction=snakemake.params.max_excluded_fraction,
    )
except Exception:
    # Snakemake deletes a failed job's outputs: keep the full exclusion list in the log, which stays.
    excluded = Path(snakemake.output.excluded)
    if excluded.exists():
        logging.error("excluded images:\n%s", excluded.read_text())
    raise
