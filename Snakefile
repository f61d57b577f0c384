# leanmed: what resource-efficient training costs and saves for medical image classifiers.
# The chain: raw data -> prepare -> split -> train (one job per dataset x model x setting x scale x seed)
#            -> aggregate -> tables, figures, report. See README "How it works" and docs/architecture.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/raw_data.smk"
include: "workflow/rules/options_records.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    model=r"[A-Za-z0-9_.\-]+",
    setting=r"[A-Za-z0-9_]+",
    scale=r"\d+",
    seed=r"\d+",
    shard=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        every_declared_output,
        f"{RESULTS}/leftovers.md",
