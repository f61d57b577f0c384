# Aggregation and every table and figure of the study; `snakemake --report` gathers them with captions.


rule aggregate:
    input:
        metrics=all_metrics(),
        options=options_record("aggregate"),
    output:
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "all runs"},
        ),
    log:
        f"{LOGS}/report/aggregate.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        expected_runs=training_runs(),
        runs_root=runs_root,
        code=script_code("aggregate"),
    script:
        "../scripts/aggregate.py"


rule paper_table:
    input:
        summary=f"{RESULTS}/summary.csv",
        options=options_record("paper_table"),
    output:
        csv=f"{RESULTS}/tables/{{dataset}}.csv",
        md=report(
            f"{RESULTS}/tables/{{dataset}}.md",
            caption="../report/paper_table.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"table": "Table 1/2 layout"},
        ),
        tex=f"{RESULTS}/tables/{{dataset}}.tex",
    log:
        f"{LOGS}/report/paper_table_{{dataset}}.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        code=script_code("paper_table"),
    script:
        "../scripts/paper_table.py"


rule radar_plot:
    input:
        summary=f"{RESULTS}/summary.csv",
        options=options_record("radar_plot"),
    output:
        png=report(
            f"{RESULTS}/figures/radar_{{dataset}}_{{model}}.png",
            caption="../report/radar.rst",
            category="{dataset}",
            subcategory="{model}",
            labels={"figure": "radar"},
        ),
        pdf=f"{RESULTS}/figures/radar_{{dataset}}_{{model}}.pdf",
    log:
        f"{LOGS}/report/radar_{{dataset}}_{{model}}.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        dpi=config["report"]["dpi"],
        code=script_code("radar_plot"),
    script:
        "../scripts/radar_plot.py"


rule downsampling_plot:
    input:
        summary=f"{RESULTS}/summary.csv",
        options=options_record("downsampling_plot"),
    output:
        png=report(
            f"{RESULTS}/figures/downsampling_{{dataset}}_{{model}}.png",
            caption="../report/downsampling.rst",
            category="{dataset}",
            subcategory="{model}",
            labels={"figure": "downsampling"},
        ),
        pdf=f"{RESULTS}/figures/downsampling_{{dataset}}_{{model}}.pdf",
    log:
        f"{LOGS}/report/downsampling_{{dataset}}_{{model}}.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        dpi=config["report"]["dpi"],
        settings=downsampling_settings,
        code=script_code("downsampling_plot"),
    script:
        "../scripts/downsampling_plot.py"


rule compare_to_baseline:
    input:
        summary=f"{RESULTS}/summary.csv",
        options=options_record("compare_to_baseline"),
    output:
        csv=f"{RESULTS}/stats/{{dataset}}_vs_fp32.csv",
        md=report(
            f"{RESULTS}/stats/{{dataset}}_vs_fp32.md",
            caption="../report/stats.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"table": "paired comparison with fp32"},
        ),
        tex=f"{RESULTS}/stats/{{dataset}}_vs_fp32.tex",
    log:
        f"{LOGS}/report/stats_{{dataset}}.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        runs_root=runs_root,
        margin=config["report"]["non_inferiority_margin"],
        n_bootstrap=config["report"]["n_bootstrap"],
        code=script_code("compare_to_baseline"),
    script:
        "../scripts/compare_to_baseline.py"


rule pareto:
    input:
        summary=f"{RESULTS}/summary.csv",
        options=options_record("pareto"),
    output:
        csv=f"{RESULTS}/pareto/{{dataset}}.csv",
        md=report(
            f"{RESULTS}/pareto/{{dataset}}.md",
            caption="../report/pareto_table.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"table": "Pareto front"},
        ),
        tex=f"{RESULTS}/pareto/{{dataset}}.tex",
        png=report(
            f"{RESULTS}/figures/pareto_{{dataset}}.png",
            caption="../report/pareto_plot.rst",
            category="{dataset}",
            subcategory="Figures",
            labels={"figure": "Pareto front"},
        ),
        pdf=f"{RESULTS}/figures/pareto_{{dataset}}.pdf",
    log:
        f"{LOGS}/report/pareto_{{dataset}}.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        dpi=config["report"]["dpi"],
        code=script_code("pareto"),
    script:
        "../scripts/pareto.py"


rule cpu_deployment_model:
    input:
        metrics=metrics_of_model,
        split=f"{RESULTS}/{{dataset}}/split.csv",
        options=options_record("cpu_deployment_model"),
    output:
        table=f"{RESULTS}/deployment/models/{{dataset}}/{{model}}.csv",
    log:
        f"{LOGS}/deployment/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/deployment/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/leanmed.yaml"
    threads: config["deployment"]["threads"]
    params:
        runs=runs_of_model,
        runs_root=runs_root,
        repeats=config["deployment"]["repeats"],
        max_images=config["deployment"]["max_images"],
        # The CPU threads the latency is measured with (the job gets them as its threads, capped by --cores): as a
        # param, so that another deployment.threads measures again (the threads directive alone reruns nothing).
        threads_asked=config["deployment"]["threads"],
        code=script_code("cpu_deployment_model"),
    script:
        "../scripts/cpu_deployment_model.py"


rule cpu_deployment:
    input:
        tables=all_deployment_tables(),
        options=options_record("cpu_deployment"),
    output:
        csv=f"{RESULTS}/deployment/cpu_inference.csv",
        md=report(
            f"{RESULTS}/deployment/cpu_inference.md",
            caption="../report/deployment.rst",
            category="Deployment on CPU",
            labels={"table": "CPU inference"},
        ),
        tex=f"{RESULTS}/deployment/cpu_inference.tex",
    log:
        f"{LOGS}/report/cpu_deployment.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        order=deployment_table_order(),
        code=script_code("cpu_deployment"),
    script:
        "../scripts/cpu_deployment.py"


rule findings:
    input:
        summary=f"{RESULTS}/summary.csv",
        comparisons=comparison_tables(),
        options=options_record("findings"),
    output:
        md=report(
            f"{RESULTS}/findings.md",
            caption="../report/findings.rst",
            category="Summary",
            labels={"table": "findings in words"},
        ),
    log:
        f"{LOGS}/report/findings.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        code=script_code("findings"),
    script:
        "../scripts/findings.py"


# Last: report files of a dataset, model or curve no longer in the config are deleted, the runs and data it left are
# listed (kept: they may cost hours, and come back into use with it). See leanmed.study.leftovers.
localrules:
    leftovers,


rule leftovers:
    input:
        final_outputs(),
        options=options_record("leftovers"),
    output:
        md=f"{RESULTS}/leftovers.md",
    log:
        f"{LOGS}/report/leftovers.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        results_dir=folder_of_output,
        products=report_products(),
        run_dirs=study_run_dirs(),
        datasets=DATASETS,
        code=script_code("leftovers"),
    script:
        "../scripts/leftovers.py"
