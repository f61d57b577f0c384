"""Rule findings: what the results say in words (each setting against fp32), from summary.csv and the comparisons."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from leanmed.report.aggregate import read_summary
from leanmed.report.findings import read_comparison, write_findings

write_findings(
    read_summary(snakemake.input.summary),
    [read_comparison(path) for path in snakemake.input.comparisons],
    snakemake.output.md,
)
