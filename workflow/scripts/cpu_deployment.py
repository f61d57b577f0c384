"""Rule cpu_deployment: CPU latency and throughput of every trained best checkpoint, as a table."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from leanmed.deploy import cpu_deployment_table, deployment_caption
from leanmed.report.tables import write_tables

runs_root = Path(snakemake.params.runs_root)
table = cpu_deployment_table(
    snakemake.params.runs,
    runs_root,
    split_csv_of=lambda dataset: runs_root.parent / dataset / "split.csv",
    repeats=snakemake.params.repeats,
    threads=snakemake.threads,
)
write_tables(table, Path(snakemake.output.csv).with_suffix(""), caption=deployment_caption(table))
