"""Rule aggregate: every run's metrics.json -> summary.csv (one row per expected run, missing ones listed)."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.report.aggregate import collect, write_summary

summary = collect(snakemake.params.expected_runs, snakemake.params.runs_root)
write_summary(summary, snakemake.output.summary)
logging.info("summary: %s", summary["status"].value_counts().to_dict())
