# Helpers for the rule files (the job list, paths, parameters and config checks); the raw data's paths and versions
# are in raw_data.smk, the options records in options_records.smk. Rule files stay declarative and call only what is
# defined in these three.
from pathlib import Path

import yaml

import leanmed as leanmed_package

from leanmed.fingerprint import code_version, file_sha256, script_code_version, value_version
from leanmed.study import canonical_config, downsample_mode_at, studied_datasets
from leanmed.study import training_runs as study_training_runs
from leanmed.study.config_checks import ConfigError, check_study_config
from leanmed.train.registry import model_definition, setting_definition
from leanmed.train.weights import cache_problem as weights_cache_problem
from leanmed.train.weights import manifest_file as weights_manifest_file
from leanmed.train.weights import set_aside as set_weights_aside
from leanmed.train.weights import weights_file as cached_weights_file
from snakemake.exceptions import WorkflowError
from snakemake.io import apply_wildcards, is_flagged
from snakemake.logging import logger

# One key order for the whole config, set before the rule files take params from it. Snakemake sees a param's dict
# in another key order as a changed param; leanmed.study.canonical_config says when that happened.
_canonical_config = canonical_config(config)
config.clear()
config.update(_canonical_config)

RESULTS = config["results_dir"].rstrip("/")
LOGS = config["logs_dir"].rstrip("/")
BENCHMARKS = f"{RESULTS}/benchmarks"
DATASETS = studied_datasets(config)  # those with models: an empty list leaves one out


# ---------------------------------------------------------------- config checks
CONFIG_SCHEMA = Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"  # Snakefile validates with it
# What the schema cannot check (model names, datasets, split, demo folder): before any job is planned.
try:
    check_study_config(config, yaml.safe_load(CONFIG_SCHEMA.read_text()))
except ConfigError as error:
    raise WorkflowError(str(error)) from None


# ---------------------------------------------------------------- data preparation
def shard_ids():
    return list(range(config["dicom"]["shards"]))


def rsna_manifests(wildcards):
    return expand(f"{RESULTS}/rsna/png/manifest_{{shard}}.csv", shard=shard_ids())


def conversion_memory_mb(wildcards, threads):
    """Host memory of a DICOM -> PNG job: each worker holds one full-size 16-bit mammogram (peak about 150 MB,
    BENCHMARKS.md), plus the parent process."""
    return 400 * threads + 600


# Fingerprints of the package code behind each data step (leanmed.fingerprint.code_files). Snakemake's code trigger
# sees only a rule's script, not the package it imports: passed as params, they rerun a step when its code changes.
PREPROCESSING_CODE_VERSION = code_version("dicom_preprocessing")
RSNA_COHORT_CODE_VERSION = code_version("rsna_cohort")
LIDC_FROM_CT_CODE_VERSION = code_version("lidc_from_ct")
LIDC_LABELS_CODE_VERSION = code_version("lidc_labels")
SPLIT_CODE_VERSION = code_version("split")


# The other rules that run package code (the manifest merge, the report, CPU deployment) run exactly what their script
# imports: their code fingerprint follows the script's imports (leanmed.fingerprint.script_code_files), so that an
# edited table, plot or merge redoes the outputs it made. Not fetch_weights: its files are the hub's bytes, checked
# against their sha256, whatever code fetched them.
SCRIPTS_DIR = Path(workflow.current_basedir).parent / "scripts"


def script_code(script):
    """Fingerprint of the package code that workflow/scripts/<script>.py runs."""
    return script_code_version(SCRIPTS_DIR / f"{script}.py")


def dicom_preprocessing():
    """How the PNGs were made, recorded beside images.csv (options that change pixels, and the preprocessing code)."""
    dicom = config["dicom"]
    return dict(
        image_size=config["image_size"],
        png_bits=dicom["png_bits"],
        path_mode=dicom["path_mode"],
        flip_to_left=dicom["flip_to_left"],
        code=PREPROCESSING_CODE_VERSION,
    )


def split_inputs(wildcards):
    """The per-image table the split of a dataset starts from; for RSNA also the cohort, whose columns (machine_id,
    site_id, ...) the split may be stratified by (split.stratify_by)."""
    if wildcards.dataset == "rsna":
        return {"images": f"{RESULTS}/rsna/images.csv", "cohort": f"{RESULTS}/rsna/cohort.csv"}
    return {"images": f"{RESULTS}/lidc/labels.csv"}


def split_stratify_by(wildcards):
    """The columns besides the label that the split of a dataset is stratified by (config split.stratify_by)."""
    return list(config["split"]["stratify_by"].get(wildcards.dataset, []))


# ---------------------------------------------------------------- the study's jobs
def training_runs():
    """Every training job of the study as dicts (dataset, model, setting, scale, seed), main study first."""
    return study_training_runs(config)


RUNS_ROOT = f"{RESULTS}/runs"
RUN_DIR = f"{RUNS_ROOT}/{{dataset}}/{{model}}/{{setting}}/s{{scale}}/seed{{seed}}"


def run_dir(run):
    return RUN_DIR.format(**run)


def runs_root(wildcards):
    """Folder holding every run folder (the report rules read predictions.csv and checkpoints from it)."""
    return RUNS_ROOT


def folder_of_output(wildcards, output):
    """Folder of a rule's first output: where it writes files it does not declare (PNG images)."""
    return str(Path(output[0]).parent)


def run_out_dir(wildcards):
    return RUN_DIR.format(**wildcards)


def all_metrics():
    return [f"{run_dir(run)}/metrics.json" for run in training_runs()]


def trained_models():
    """(dataset, model) pairs with at least one training run, in the order of the study."""
    return list(dict.fromkeys((run["dataset"], run["model"]) for run in training_runs()))


def runs_of_model(wildcards):
    return [run for run in training_runs() if (run["dataset"], run["model"]) == (wildcards.dataset, wildcards.model)]


def metrics_of_model(wildcards):
    return [f"{run_dir(run)}/metrics.json" for run in runs_of_model(wildcards)]


def all_deployment_tables():
    return [f"{RESULTS}/deployment/models/{dataset}/{model}.csv" for dataset, model in trained_models()]


def deployment_table_order():
    """The order of the merged CPU deployment table's rows, the study's: a param, since Snakemake does not rerun a job
    for the same inputs in another order (the config's models reordered left the old row order; a real rerun)."""
    return [f"{dataset}/{model}" for dataset, model in trained_models()]


def models_of(dataset):
    return config["datasets"][dataset]["models"]


def downsampling_curves():
    """(dataset, model) pairs that get a downsampling figure."""
    return sorted({(extra["dataset"], extra["model"]) for extra in config["downsampling"]["runs"]})


def downsampling_settings(wildcards):
    """Settings the downsampling study ran for one (dataset, model), in the config's order."""
    settings = []
    for extra in config["downsampling"]["runs"]:
        if (extra["dataset"], extra["model"]) == (wildcards.dataset, wildcards.model):
            settings += [setting for setting in extra["settings"] if setting not in settings]
    return settings


# Hash of the package code a training job runs (leanmed.fingerprint.code_files("training")): Snakemake's code
# trigger sees only the script file, not the package it imports; as a param it reruns training when that code changes.
TRAINING_CODE_VERSION = code_version("training")
# Hash of the code that writes a run's results from its state (leanmed.fingerprint, "training_record") and of the
# metrics.json schema it validates them with: a param of its own, out of config_hash, so an edit reruns the training
# jobs, which re-record each finished run from its last.pt.
METRICS_SCHEMA = Path(leanmed_package.__file__).parent / "schemas/metrics.schema.json"
TRAINING_RECORD_CODE_VERSION = code_version("training_record")
METRICS_SCHEMA_SHA256 = file_sha256(METRICS_SCHEMA)


def rerun_triggers(wildcards):
    """What a training job depends on beyond its own options: its setting's and model's registry entries and the
    training code. Passed as params, so a change of any of them reruns exactly the affected jobs."""
    triggers = dict(
        setting_definition=setting_definition(wildcards.setting),
        model_definition=model_definition(wildcards.model),
        code_version=TRAINING_CODE_VERSION,
    )
    weights_sha256 = local_weights_sha256(wildcards.model)
    if weights_sha256 is not None:
        triggers["local_weights_sha256"] = weights_sha256
    return triggers


_LOCAL_WEIGHTS_SHA256 = {}


def local_weights_sha256(model):
    """sha256 of the local weights file given as training.pretrained for `model` (None for true or false): a file
    replaced at the same path changes its training jobs' config_hash, so they rerun and train afresh (their last.pt
    holds what other weights became). Each file is hashed once per Snakemake run."""
    pretrained = pretrained_of(model)
    if pretrained is True or pretrained is False or pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WorkflowError(
            f"config key training.pretrained: the weights file {pretrained!r} for model {model!r} does not exist. "
            "Give the path of a local weights file, true (timm's weights, fetched into training.weights_dir) or false."
        )
    key = str(path.resolve())
    if key not in _LOCAL_WEIGHTS_SHA256:
        _LOCAL_WEIGHTS_SHA256[key] = file_sha256(path)
    return _LOCAL_WEIGHTS_SHA256[key]


def pretrained_of(model):
    """training.pretrained for one model: one value for all models, or a mapping model -> value (false if absent)."""
    pretrained = config["training"]["pretrained"]
    return pretrained.get(model, False) if isinstance(pretrained, dict) else pretrained


# ---------------------------------------------------------------- pretrained weights
WEIGHTS = config["training"]["weights_dir"].rstrip("/")
_CHECKED_WEIGHTS = set()


def fetches_weights(model):
    """Whether the training jobs of `model` load timm's ImageNet weights from the cache (training.pretrained true)."""
    return pretrained_of(model) is True


def pretrained_models():
    """Models of the study whose weights come from the cache, in the order of the study."""
    return [model for model in dict.fromkeys(run["model"] for run in training_runs()) if fetches_weights(model)]


def weights_checksums():
    """Checksum lines of the cache entries, targets of the study (so that a file set aside for failing its checksum,
    which lost its line, is fetched again although the training jobs need only its manifest)."""
    return [f"{WEIGHTS}/{model}.sha256" for model in pretrained_models()]


def weights_manifest(wildcards):
    """Input of a training job: the cache manifest of its model's weights (none unless pretrained is true).

    ancient: a fetch again (a corrupt file replaced by the same weights) does not rerun finished training jobs."""
    if fetches_weights(wildcards.model):
        return ancient(str(weights_manifest_file(WEIGHTS, wildcards.model)))
    return []


def check_weights_cache():
    """Check each cached weights file of the study against the sha256 in its manifest, before the plan is made: a
    file that fails is set aside (<file>.corrupt) and its checksum line dropped, so that rule fetch_weights fetches it
    again (the manifest, an ancient input of the training jobs, stays: finished jobs are not rerun for it).
    Not in the jobs Snakemake runs remotely (compute nodes), which only load the files and check them themselves."""
    if workflow.remote_exec:
        return
    for model in pretrained_models():
        problem = weights_cache_problem(WEIGHTS, model)
        if problem:
            aside = set_weights_aside(WEIGHTS, model)
            logger.warning(
                f"Cached weights of {model} fail their checksum ({problem}): set aside as {aside}; "
                "rule fetch_weights fetches them again."
            )


def weights_fetch_source(wildcards):
    """What rule fetch_weights records as the model's source is decided in the job (timm is not imported while
    planning); this param only names the model's registry entry, so editing it fetches again."""
    return model_definition(wildcards.model)


check_weights_cache()


def pretrained_param(model):
    """training.pretrained as a training job gets it: true becomes the model's file in the weights cache."""
    pretrained = pretrained_of(model)
    return str(cached_weights_file(WEIGHTS, model)) if pretrained is True else pretrained


def train_params(wildcards):
    """The options of one training job (leanmed.train.job.TrainConfig fields); a change reruns that job."""
    training = config["training"]
    params = dict(
        dataset=wildcards.dataset,
        model=wildcards.model,
        setting=wildcards.setting,
        seed=int(wildcards.seed),
        scale=int(wildcards.scale),
        downsample_mode=downsample_mode_at(int(wildcards.scale), config["downsampling"]["mode"]),
        image_size=config["image_size"],
        lr=training["lr"],
        batch_size=training["batch_size"],
        max_epochs=training["max_epochs"],
        patience=training["patience"],
        pretrained=pretrained_param(wildcards.model),
        device=training["device"],
        num_workers=training["num_workers"],
        energy=training["energy"],
        inference_repeats=training["inference_repeats"],
        tuned_step=training["tuned_step"],
        compile=training["compile"],
    )
    trained_by = {name: value for name, value in params.items() if name not in NOT_IN_CONFIG_HASH}
    trained_by["pretrained"] = pretrained_kind(wildcards.model)
    params["config_hash"] = value_version([trained_by, rerun_triggers(wildcards)])
    return params


# Options of a training job kept out of config_hash, the hash its last.pt must match to be resumed: a change reruns
# the job (they are params), which resumes from its finished checkpoint instead of training again.
NOT_IN_CONFIG_HASH = {
    "inference_repeats": "decides only how the finished model is timed: the job times it again",
    "device": "auto resolves at run time; the checkpoint compares the device type the run trained on (cpu, cuda)",
    "max_epochs": "where training ends, all the stopping rule decides; the job replays the checkpoint's history "
    "(leanmed.train.checkpoint.stop_under) to keep, continue or retrain the run",
    "patience": "as max_epochs",
}


def pretrained_kind(model):
    """training.pretrained in config_hash: false, true (timm's weights, wherever weights_dir puts them) or a local
    file, whose sha256 rerun_triggers adds: not its path, so a weights file or cache moved elsewhere resumes runs."""
    pretrained = pretrained_of(model)
    return pretrained if isinstance(pretrained, bool) else "local weights file"


def training_threads():
    return config["training"]["threads"]


def training_cpus():
    """CPUs a training job needs on a cluster node: torch's threads plus the data loader's worker processes."""
    return config["training"]["threads"] + config["training"]["num_workers"]


def training_gpus():
    return config["training"]["gpus_per_job"]


# ---------------------------------------------------------------- report
def comparison_tables():
    """The paired comparison with fp32 of every dataset (rule compare_to_baseline), which rule findings reads."""
    return [f"{RESULTS}/stats/{dataset}_vs_fp32.csv" for dataset in DATASETS]


def final_outputs():
    outputs = [f"{RESULTS}/summary.csv", f"{RESULTS}/findings.md", f"{RESULTS}/deployment/cpu_inference.md"]
    for dataset in DATASETS:
        outputs += expand(f"{RESULTS}/tables/{dataset}.{{ext}}", ext=["csv", "md", "tex"])
        outputs += expand(f"{RESULTS}/stats/{dataset}_vs_fp32.{{ext}}", ext=["csv", "md"])
        outputs += expand(f"{RESULTS}/pareto/{dataset}.{{ext}}", ext=["csv", "md"])
        outputs += expand(f"{RESULTS}/figures/pareto_{dataset}.{{ext}}", ext=["png", "pdf"])
        outputs += expand(
            f"{RESULTS}/figures/radar_{dataset}_{{model}}.{{ext}}", model=models_of(dataset), ext=["png", "pdf"]
        )
        outputs += [f"{RESULTS}/{dataset}/split_report.md"]
    outputs += [f"{RESULTS}/rsna/cohort_report.md"] if "rsna" in DATASETS else []
    for dataset, model in downsampling_curves():
        outputs += expand(f"{RESULTS}/figures/downsampling_{dataset}_{model}.{{ext}}", ext=["png", "pdf"])
    return outputs + weights_checksums()


def study_jobs():
    """(rule, wildcards) of every job of the study but rule all, leftovers and the DICOM shards (whose only output is
    temporary)."""
    jobs = []
    if "rsna" in DATASETS:
        jobs += [("demo_rsna", {})] if DEMO else []
        jobs += [("rsna_cohort", {}), ("rsna_images", {})]
    if "lidc" in DATASETS:
        jobs += [("demo_lidc", {})] if DEMO else []
        jobs += [("lidc_from_ct", {})] if config["data"]["lidc"]["source"] == "ct" else []
        jobs += [("lidc_labels", {})]
    jobs += [("fetch_weights", dict(model=model)) for model in pretrained_models()]
    jobs += [("train", run) for run in training_runs()]
    jobs += [("aggregate", {}), ("cpu_deployment", {}), ("findings", {})]
    for dataset in DATASETS:
        jobs += [(rule, dict(dataset=dataset)) for rule in ("split", "paper_table", "compare_to_baseline", "pareto")]
        jobs += [("radar_plot", dict(dataset=dataset, model=model)) for model in models_of(dataset)]
    jobs += [("cpu_deployment_model", dict(dataset=dataset, model=model)) for dataset, model in trained_models()]
    jobs += [("downsampling_plot", dict(dataset=dataset, model=model)) for dataset, model in downsampling_curves()]
    return jobs


def every_declared_output(wildcards):
    """Every file the study's jobs declare, temporary ones excepted: all targets of rule all. Snakemake does not make
    a deleted file again while the files made from it are up to date, so a run folder, a split.csv or images.csv
    deleted by hand stayed missing, beside tables made from them ("Nothing to be done", shown by a real rerun). As
    targets they are made again, and what is made from them reruns (a run resumes from its last.pt)."""
    return [
        apply_wildcards(str(output), job_wildcards)
        for rule_name, job_wildcards in study_jobs()
        for output in workflow.get_rule(rule_name).output
        if not is_flagged(output, "temp")
    ]


def report_products():
    """The report files the current study makes (rule leftovers deletes other files of the report rules' names)."""
    return final_outputs() + all_deployment_tables()


def study_run_dirs():
    return [run_dir(run) for run in training_runs()]
