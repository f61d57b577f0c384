"""Rule radar_plot: accuracy, energy, memory and inference time of every setting of one model."""
import sys

sys.stderr = open(snakemake.log[0], "w")

import matplotlib

matplotlib.use("Agg")

from leanmed.report.aggregate import read_summary
from leanmed.report.plots import radar

summary = read_summary(snakemake.input.summary)
radar(
    summary,
    snakemake.wildcards.dataset,
    snakemake.wildcards.model,
    snakemake.output.png,
    snakemake.output.pdf,
    dpi=snakemake.params.dpi,
)
