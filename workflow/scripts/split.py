"""Rule split: subject-level, label-stratified, seeded train/val/test split and its report."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

import pandas as pd

from leanmed.data.splits import subject_split, write_split_csv, write_split_report

images = pd.read_csv(snakemake.input.images, dtype={"image_id": str, "subject_id": str})
split = subject_split(images, fractions=tuple(snakemake.params.fractions), seed=snakemake.params.seed)
write_split_csv(split, snakemake.output.split)
write_split_report(split, snakemake.output.report_csv, snakemake.output.report_md)
