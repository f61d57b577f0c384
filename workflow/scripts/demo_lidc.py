"""Rule demo_lidc: a generated LIDC-IDRI lookalike pickle (128x128 CT patches, 4 rater masks each)."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.demo.lidc import generate_lidc

lidc = snakemake.params.lidc
summary = generate_lidc(
    snakemake.output.lidc_pickle,
    n_patients=lidc["patients"],
    patches_per_patient=lidc["patches_per_patient"],
    borderline_fraction=lidc["borderline_fraction"],
    seed=snakemake.params.seed,
)
logging.info("LIDC: %s", summary)
