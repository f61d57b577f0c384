"""Rule cpu_deployment: the per-model CPU inference tables as one table (CSV, Markdown, LaTeX)."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from leanmed.deploy import deployment_caption, deployment_table
from leanmed.report.tables import write_tables

table = deployment_table(snakemake.input.tables)
write_tables(table, Path(snakemake.output.csv).with_suffix(""), caption=deployment_caption(table))
