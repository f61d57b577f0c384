"""Rule cpu_deployment_model: CPU latency and throughput of the best checkpoint of every run of one model."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from leanmed.deploy import deployment_record
from leanmed.report.deployment import deployment_frame

records = [
    deployment_record(
        run,
        snakemake.params.runs_root,
        snakemake.input.split,
        repeats=snakemake.params.repeats,
        threads=snakemake.threads,
        max_images=snakemake.params.max_images,
    )
    for run in snakemake.params.runs
]
deployment_frame(records).to_csv(snakemake.output.table, index=False)
