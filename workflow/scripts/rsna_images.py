"""Rule rsna_images: merge the conversion manifests into images.csv and excluded.csv."""
import json
import logging
import sys

sys.stderr = open(snakemake.log.log, "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from pathlib import Path

from leanmed.data.convert import merge_manifests, preprocessing_version, remove_stale_images

# Written first: it describes the PNGs even when the merge below fails on too many exclusions.
options = snakemake.params.preprocessing
preprocessing = dict(
    options,
    fingerprint=preprocessing_version(
        options["image_size"], options["png_bits"], options["path_mode"], options["flip_to_left"], options["code"]
    ),
)
with open(snakemake.output.preprocessing, "w") as handle:
    json.dump(preprocessing, handle, indent=2)

# The exclusion list goes to the kept log file too: Snakemake deletes a failed job's outputs (excluded.csv), not its
# logs, and the error past dicom.max_excluded_fraction names the kept file.
merged = merge_manifests(
    snakemake.input.manifests,
    snakemake.output.images,
    snakemake.output.excluded,
    max_excluded_fraction=snakemake.params.max_excluded_fraction,
    kept_excluded_csv=snakemake.log.excluded,
)
# PNGs of images a previous run converted and this one does not (a subject left the cohort) leave results/.
remove_stale_images(merged, Path(snakemake.input.manifests[0]).parent)  # the shards' out_root
