"""Rule split: subject-level, label-stratified (and optionally machine-stratified), seeded split and its report."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

import pandas as pd

from leanmed.data.splits import subject_split, with_stratification_columns, write_split_csv, write_split_report

stratify_by = list(snakemake.params.stratify_by)
images = pd.read_csv(snakemake.input.images, dtype={"image_id": str, "subject_id": str})
if stratify_by:
    has_cohort = "cohort" in snakemake.input.keys()
    cohort = pd.read_csv(snakemake.input.cohort, dtype={"image_id": str}) if has_cohort else None
    key = f"split.stratify_by.{snakemake.wildcards.dataset}"
    images = with_stratification_columns(images, cohort, stratify_by, key=key)
split = subject_split(images, fractions=tuple(snakemake.params.fractions), seed=snakemake.params.seed,
                      stratify_by=stratify_by)
write_split_csv(split, snakemake.output.split)
write_split_report(split, snakemake.output.report_csv, snakemake.output.report_md, stratify_by=stratify_by)
