"""Rule leftovers: delete report files of what left the study, list the runs and data it left behind."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from pathlib import Path

from leanmed.study.leftovers import leftovers_markdown, tidy_results

results_dir = snakemake.params.results_dir
found = tidy_results(results_dir, snakemake.params.products, snakemake.params.run_dirs, snakemake.params.datasets)
for path in found["deleted"]:
    logging.info("deleted %s: no dataset, model or curve of the study makes it", path)
for path in found["outdated_reports"]:
    logging.info("deleted %s: gathered before the current results; make it again with snakemake --report", path)
for path in found["abandoned_temporaries"]:
    logging.info("deleted %s: the temporary file of a write killed before it ended", path)
for path in found["kept_runs"] + found["kept_datasets"]:
    logging.info("kept %s: not in the study, read by no table or figure (see %s)", path, snakemake.output.md)
Path(snakemake.output.md).write_text(leftovers_markdown(results_dir, found, snakemake.log[0]))
