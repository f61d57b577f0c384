"""Rule paper_table: the paper's Table 1/2 layout for one dataset as CSV, Markdown and LaTeX."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from leanmed.report.aggregate import read_summary
from leanmed.report.tables import paper_table, write_tables

table = paper_table(read_summary(snakemake.input.summary), snakemake.wildcards.dataset)
write_tables(table, Path(snakemake.output.csv).with_suffix(""))
