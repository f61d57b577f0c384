"""Rule downsampling_plot: test accuracy against the downsampling scale S, mean line and +- std band per setting."""
import sys

sys.stderr = open(snakemake.log[0], "w")

import matplotlib

matplotlib.use("Agg")

from leanmed.report.aggregate import read_summary
from leanmed.report.plots import downsampling

summary = read_summary(snakemake.input.summary)
downsampling(
    summary,
    snakemake.wildcards.dataset,
    snakemake.wildcards.model,
    snakemake.output.png,
    snakemake.output.pdf,
    settings=snakemake.params.settings,
    dpi=snakemake.params.dpi,
)
