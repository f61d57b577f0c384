"""Rule pareto: the Pareto front over accuracy, energy, peak memory and inference time, as a table and a plot."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

import matplotlib

matplotlib.use("Agg")

from leanmed.report.aggregate import read_summary
from leanmed.report.pareto import pareto_front
from leanmed.report.plots import pareto_scatter
from leanmed.report.tables import write_tables

front = pareto_front(read_summary(snakemake.input.summary), snakemake.wildcards.dataset)
write_tables(front, Path(snakemake.output.csv).with_suffix(""))
pareto_scatter(front, snakemake.output.png, snakemake.output.pdf, dpi=snakemake.params.dpi)
