# Data preparation: generated demo data, RSNA cohort and DICOM -> PNG, LIDC labelling, subject-level splits.


if DEMO:

    # One rule per dataset, each with only its own part of demo: as params, so that a knob of one dataset's
    # generator regenerates that dataset only.
    rule demo_rsna:
        input:
            options=options_record("demo_rsna", root=f"{DEMO_DIR}/options"),
        output:
            rsna_csv=DEMO_DATA["rsna_csv"],
        log:
            f"{LOGS}/demo_rsna.log",
        benchmark:
            f"{BENCHMARKS}/demo_rsna.tsv"
        conda:
            "../../envs/leanmed.yaml"
        params:
            seed=config["demo"]["seed"],
            rsna=config["demo"]["rsna"],
            code=code_version("demo_rsna"),
        script:
            "../scripts/demo_rsna.py"

    rule demo_lidc:
        input:
            options=options_record("demo_lidc", root=f"{DEMO_DIR}/options"),
        output:
            lidc_pickle=DEMO_DATA["lidc_pickle"],
        log:
            f"{LOGS}/demo_lidc.log",
        benchmark:
            f"{BENCHMARKS}/demo_lidc.tsv"
        conda:
            "../../envs/leanmed.yaml"
        params:
            seed=config["demo"]["seed"],
            lidc=config["demo"]["lidc"],
            code=code_version("demo_lidc"),
        script:
            "../scripts/demo_lidc.py"


rule rsna_cohort:
    input:
        train_csv=rsna_train_csv,
        options=options_record("rsna_cohort"),
    output:
        cohort=f"{RESULTS}/rsna/cohort.csv",
        report_csv=f"{RESULTS}/rsna/cohort_report.csv",
        report_md=f"{RESULTS}/rsna/cohort_report.md",
    log:
        f"{LOGS}/rsna/cohort.log",
    conda:
        "../../envs/leanmed.yaml"
    params:
        images_dir=rsna_images_dir(),
        max_age=config["cohort"]["rsna"]["max_age"],
        code=RSNA_COHORT_CODE_VERSION,
        train_csv_sha256=train_csv_sha256,
        absent_dicoms=absent_dicoms,
    script:
        "../scripts/rsna_cohort.py"


rule dicom_to_png:
    input:
        cohort=f"{RESULTS}/rsna/cohort.csv",
        options=options_record("dicom_to_png"),
    output:
        # Merged into images.csv, then removed; the PNGs themselves are kept, and redone only when their recorded
        # fingerprint (options, preprocessing code, source DICOM) is not the current one.
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
        images_dir=rsna_images_dir(),
        out_root=folder_of_output,
        n_shards=config["dicom"]["shards"],
        image_size=config["image_size"],
        bits=config["dicom"]["png_bits"],
        path_mode=config["dicom"]["path_mode"],
        flip_to_left=config["dicom"]["flip_to_left"],
        preprocessing_code=PREPROCESSING_CODE_VERSION,
        sources=shard_sources,
        # The shard's own code (which images to convert, the manifest): a change reruns the shard, which redoes only
        # the PNGs whose fingerprint (preprocessing_code above) is no longer current.
        code=script_code("dicom_to_png"),
    script:
        "../scripts/dicom_to_png.py"


rule rsna_images:
    input:
        manifests=rsna_manifests,
        options=options_record("rsna_images", stale_when=images_deleted_from(f"{RESULTS}/rsna/images.csv")),
    output:
        images=f"{RESULTS}/rsna/images.csv",
        excluded=f"{RESULTS}/rsna/excluded.csv",
        preprocessing=f"{RESULTS}/rsna/preprocessing.json",
    log:
        log=f"{LOGS}/rsna/images.log",
        # The full exclusion list again: Snakemake keeps a failed job's logs, but deletes excluded.csv.
        excluded=f"{LOGS}/rsna/excluded.csv",
    conda:
        "../../envs/leanmed.yaml"
    params:
        max_excluded_fraction=config["dicom"]["max_excluded_fraction"],
        preprocessing=dicom_preprocessing(),
        code=script_code("rsna_images"),
    script:
        "../scripts/rsna_images.py"


rule lidc_from_ct:
    input:
        ct_root=lidc_ct_root,
        options=options_record("lidc_from_ct"),
    output:
        pickle=f"{RESULTS}/lidc/from_ct/data_lidc.pickle",
        report=f"{RESULTS}/lidc/from_ct/report.csv",
    log:
        log=f"{LOGS}/lidc/from_ct.log",
        # The scans not found under ct.root, kept when too many of them fail the job.
        missing_scans=f"{LOGS}/lidc/from_ct_missing_scans.csv",
    benchmark:
        f"{BENCHMARKS}/lidc/from_ct.tsv"
    conda:
        "../../envs/leanmed.yaml"
    params:
        ct=config["data"]["lidc"]["ct"],
        code=LIDC_FROM_CT_CODE_VERSION,
        ct_files=lidc_ct_version,
    script:
        "../scripts/lidc_from_ct.py"


rule lidc_labels:
    input:
        pickle=lidc_pickle,
        options=options_record("lidc_labels", stale_when=images_deleted_from(f"{RESULTS}/lidc/labels.csv")),
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
        code=LIDC_LABELS_CODE_VERSION,
        source=lidc_source_version,
    script:
        "../scripts/lidc_labels.py"


rule split:
    input:
        unpack(split_inputs),
        options=options_record("split"),
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
        stratify_by=split_stratify_by,
        code=SPLIT_CODE_VERSION,
    script:
        "../scripts/split.py"
