# Data preparation: generated demo data, RSNA cohort and DICOM -> PNG, LIDC labelling, subject-level splits.


rule demo_data:
    output:
        rsna_csv=config["data"]["rsna"]["train_csv"],
        lidc_pickle=config["data"]["lidc"]["pickle"],
    log:
        f"{LOGS}/demo_data.log",
    benchmark:
        f"{BENCHMARKS}/demo_data.tsv"
    conda:
        "../../envs/leanmed.yaml"
    params:
        images_dir=config["data"]["rsna"]["images_dir"],
        demo=config["demo"],
    script:
        "../scripts/demo_data.py"


rule rsna_cohort:
    input:
        train_csv=rsna_train_csv,
    output:
        cohort=f"{RESULTS}/rsna/cohort.csv",
        report_csv=f"{RESULTS}/rsna/cohort_report.csv",
        report_md=f"{RESULTS}/rsna/cohort_report.md",
    log:
        f"{LOGS}/rsna/cohort.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        images_dir=config["data"]["rsna"]["images_dir"],
        max_age=config["cohort"]["rsna"]["max_age"],
    script:
        "../scripts/rsna_cohort.py"


rule dicom_to_png:
    input:
        cohort=f"{RESULTS}/rsna/cohort.csv",
    output:
        # Merged into images.csv, then removed; the PNGs themselves are kept (and never redone).
        manifest=temp(f"{RESULTS}/rsna/png/manifest_{{shard}}.csv"),
    log:
        f"{LOGS}/rsna/dicom_to_png_{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/rsna/dicom_to_png_{{shard}}.tsv"
    conda:
        "../../envs/leanmed.yaml"
    threads: config["dicom"]["threads"]
    resources:
        mem_mb=conversion_memory_mb,
    params:
        images_dir=config["data"]["rsna"]["images_dir"],
        out_root=folder_of_output,
        n_shards=config["dicom"]["shards"],
        image_size=config["image_size"],
        bits=config["dicom"]["png_bits"],
        path_mode=config["dicom"]["path_mode"],
        flip_to_left=config["dicom"]["flip_to_left"],
    script:
        "../scripts/dicom_to_png.py"


rule rsna_images:
    input:
        manifests=rsna_manifests,
    output:
        images=f"{RESULTS}/rsna/images.csv",
        excluded=f"{RESULTS}/rsna/excluded.csv",
        preprocessing=f"{RESULTS}/rsna/preprocessing.json",
    log:
        f"{LOGS}/rsna/images.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        max_excluded_fraction=config["dicom"]["max_excluded_fraction"],
        preprocessing=dicom_preprocessing(),
    script:
        "../scripts/rsna_images.py"


rule lidc_from_ct:
    input:
        ct_root=lidc_ct_root,
    output:
        pickle=f"{RESULTS}/lidc/from_ct/data_lidc.pickle",
        report=f"{RESULTS}/lidc/from_ct/report.csv",
    log:
        f"{LOGS}/lidc/from_ct.log",
    benchmark:
        f"{BENCHMARKS}/lidc/from_ct.tsv"
    conda:
        "../../envs/leanmed.yaml"
    params:
        ct=config["data"]["lidc"]["ct"],
    script:
        "../scripts/lidc_from_ct.py"


rule lidc_labels:
    input:
        pickle=lidc_pickle,
    output:
        labels=f"{RESULTS}/lidc/labels.csv",
    log:
        f"{LOGS}/lidc/labels.log",
    benchmark:
        f"{BENCHMARKS}/lidc/labels.tsv"
    conda:
        "../../envs/leanmed.yaml"
    params:
        out_dir=folder_of_output,
        image_size=config["image_size"],
        min_raters=config["cohort"]["lidc"]["min_raters"],
    script:
        "../scripts/lidc_labels.py"


rule split:
    input:
        images=labelled_images,
    output:
        split=f"{RESULTS}/{{dataset}}/split.csv",
        report_csv=f"{RESULTS}/{{dataset}}/split_report.csv",
        report_md=f"{RESULTS}/{{dataset}}/split_report.md",
    log:
        f"{LOGS}/{{dataset}}/split.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
    script:
        "../scripts/split.py"
