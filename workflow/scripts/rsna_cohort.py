"""Rule rsna_cohort: train.csv -> cohort.csv (age filter, BI-RADS -> label) and the cohort report."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.data.rsna import build_cohort, write_cohort_report

cohort, report = build_cohort(
    snakemake.input.train_csv,
    images_dir=snakemake.params.images_dir,
    max_age=snakemake.params.max_age,
)
cohort.to_csv(snakemake.output.cohort, index=False)
write_cohort_report(report, snakemake.output.report_csv, snakemake.output.report_md)
logging.info("cohort: %d images of %d subjects", len(cohort), cohort["subject_id"].nunique())
