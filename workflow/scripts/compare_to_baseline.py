"""Rule compare_to_baseline: paired bootstrap CIs, McNemar and non-inferiority of every setting against fp32."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from leanmed.report.aggregate import read_summary
from leanmed.report.stats import comparison_display_table, comparison_table
from leanmed.report.tables import write_tables

comparison = comparison_table(
    snakemake.params.runs_root,
    read_summary(snakemake.input.summary),
    snakemake.wildcards.dataset,
    margin=snakemake.params.margin,
    n_bootstrap=snakemake.params.n_bootstrap,
    # Several images of one patient are not independent: resample patients, not images.
    resample_unit="subject_id",
)
prefix = Path(snakemake.output.csv).with_suffix("")
display = comparison_display_table(comparison)
write_tables(display, prefix)
comparison.to_csv(snakemake.output.csv, index=False)  # the CSV keeps every number unformatted
