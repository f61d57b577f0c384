"""Rule rsna_images: merge the conversion manifests into images.csv and excluded.csv."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.data.convert import merge_manifests

merge_manifests(
    snakemake.input.manifests,
    snakemake.output.images,
    snakemake.output.excluded,
    max_excluded_fraction=snakemake.params.max_excluded_fraction,
)
