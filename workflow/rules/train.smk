# One training job per (dataset, model, setting, scale, seed). A job interrupted (SIGTERM, preemption, a
# killed process) resumes from its last checkpoint when rerun; a diverged run completes, marked diverged.


# Pretrained weights are fetched once per model into training.weights_dir, where Snakemake runs (a login node has
# network, compute nodes often have none); training jobs load the cached file. `snakemake --until fetch_weights`
# fills the cache alone. A cached file failing its sha256 is set aside and fetched again.
localrules:
    fetch_weights,


rule fetch_weights:
    input:
        options=options_record("fetch_weights", root=f"{WEIGHTS}/options"),
    output:
        manifest=f"{WEIGHTS}/{{model}}.json",
        checksum=f"{WEIGHTS}/{{model}}.sha256",
    log:
        f"{LOGS}/weights/{{model}}.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        weights_dir=folder_of_output,
        model_definition=weights_fetch_source,
    script:
        "../scripts/fetch_weights.py"


rule train:
    input:
        split=f"{RESULTS}/{{dataset}}/split.csv",
        weights=weights_manifest,
        options=options_record("train", redo_when=run_lost, stale_when=run_stale),
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        epochs=f"{RUN_DIR}/epochs.csv",
        predictions=f"{RUN_DIR}/predictions.csv",
    log:
        f"{LOGS}/runs/{{dataset}}/{{model}}/{{setting}}/s{{scale}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/runs/{{dataset}}/{{model}}/{{setting}}/s{{scale}}/seed{{seed}}.tsv"
    conda:
        "../../envs/leanmed.yaml"
    threads: training_threads()
    resources:
        gpu=training_gpus(),
        cpus_per_task=training_cpus(),
        mem_mb=8000,
    params:
        run=train_params,
        triggers=rerun_triggers,
        record_code=TRAINING_RECORD_CODE_VERSION,
        metrics_schema=METRICS_SCHEMA_SHA256,
        out_dir=run_out_dir,
    script:
        "../scripts/train.py"
