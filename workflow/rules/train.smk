# One training job per (dataset, model, setting, scale, seed). A job interrupted (SIGTERM, preemption, a
# killed process) resumes from its last checkpoint when rerun; a diverged run completes, marked diverged.


rule train:
    input:
        split=f"{RESULTS}/{{dataset}}/split.csv",
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
        out_dir=run_out_dir,
    script:
        "../scripts/train.py"
