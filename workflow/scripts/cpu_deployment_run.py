"""Rule cpu_deployment_run: CPU latency and throughput of one run's best checkpoint."""
import json
import sys

sys.stderr = open(snakemake.log[0], "w")

from leanmed.deploy import deployment_record

wildcards = snakemake.wildcards
run = dict(
    dataset=wildcards.dataset,
    model=wildcards.model,
    setting=wildcards.setting,
    scale=int(wildcards.scale),
    seed=int(wildcards.seed),
)
record = deployment_record(
    run,
    snakemake.params.runs_root,
    snakemake.input.split,
    repeats=snakemake.params.repeats,
    threads=snakemake.threads,
    max_images=snakemake.params.max_images,
)
with open(snakemake.output.record, "w") as handle:
    json.dump(record, handle, indent=2)
