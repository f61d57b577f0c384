"""Rule cpu_deployment: the per-model CPU inference tables as one table (CSV, Markdown, LaTeX)."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from leanmed.report.deployment import deployment_caption, deployment_table
from leanmed.report.tables import write_tables

table = deployment_table(snakemake.input.tables)
# Timer resolution and run-to-run noise make more digits meaningless.
table = table.round({"per_image_latency_ms": 3, "test_set_seconds_batch32": 4, "throughput_images_per_s": 1})
write_tables(table, Path(snakemake.output.csv).with_suffix(""), caption=deployment_caption(table))
