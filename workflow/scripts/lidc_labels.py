"""Rule lidc_labels: Probabilistic U-Net pickle -> PNG patches and labels.csv."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.data.lidc import label_patches

labels = label_patches(
    snakemake.input.pickle,
    snakemake.params.out_dir,
    image_size=snakemake.params.image_size,
    min_raters=snakemake.params.min_raters,
    code=snakemake.params.code,
)
labels.to_csv(snakemake.output.labels, index=False)
logging.info("LIDC: %d patches, %d tumour", len(labels), int(labels["label"].sum()))
