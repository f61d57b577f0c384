# Helpers for the rule files (the job list, paths, parameters and config checks).
# Rule files stay declarative and call only what is defined here.
import inspect
from pathlib import Path

from leanmed.data.sources import shard_source_versions
from leanmed.fingerprint import code_version, file_sha256, script_code_version, value_version
from leanmed.study import canonical_config, downsample_mode_at, studied_datasets
from leanmed.study import training_runs as study_training_runs
from leanmed.study.deleted_outputs import deleted_best_checkpoint, deleted_images, drop_last_checkpoint
from leanmed.study.options_record import mark_to_run_again, options_record_path, write_options_record
from leanmed.data.lidc import LABELS_CSV_COLUMNS as LIDC_LABELS_CSV_COLUMNS
from leanmed.data.rsna import KAGGLE_TRAIN_COLUMNS, train_csv_columns
from leanmed.data.splits import SplitError, validate_fractions
from leanmed.train.registry import MODELS, is_known_model, model_definition, setting_definition
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
def unknown_model(key, model):
    return WorkflowError(
        f"config key {key}: unknown model {model!r}. "
        f"Use a leanmed alias ({', '.join(MODELS)}) or a timm model name (timm.list_models())."
    )


def check_config():
    """Fail before any job runs when the config names something leanmed does not know.

    The schema checks keys and types; this checks what the schema cannot: model names (registry alias or
    timm name), that downsampling runs refer to configured datasets, and that split fractions sum to 1.
    """
    for dataset, entry in config["datasets"].items():
        for model in entry["models"]:
            if not is_known_model(model):
                raise unknown_model(f"datasets.{dataset}.models", model)
    if not DATASETS:
        raise WorkflowError(
            "config key datasets: every dataset's models list is empty, so the study has nothing to train; "
            "name at least one model (e.g. datasets.lidc.models: [densenet121])."
        )
    for index, run in enumerate(config["downsampling"]["runs"]):
        if run["dataset"] not in DATASETS:
            raise WorkflowError(
                f"config key downsampling.runs[{index}].dataset: {run['dataset']!r} is not among the datasets "
                f"of the study ({', '.join(DATASETS)}; a dataset with an empty models list is left out)."
            )
        if not is_known_model(run["model"]):
            raise unknown_model(f"downsampling.runs[{index}].model", run["model"])
    try:
        validate_fractions(config["split"]["fractions"])
    except SplitError as error:
        raise WorkflowError(f"config key {error}") from None
    for dataset, columns in config["split"]["stratify_by"].items():
        known = stratification_columns(dataset)
        unknown = [column for column in columns if column not in known]
        if unknown:
            raise WorkflowError(
                f"config key split.stratify_by.{dataset}: no column {', '.join(unknown)} to stratify the split by; "
                f"{dataset} has {', '.join(known)}."
            )


def stratification_columns(dataset):
    """Columns a dataset's split can be stratified by: the RSNA cohort's (the Kaggle train.csv columns, and any
    others the configured train.csv has), the LIDC labels'."""
    if dataset == "lidc":
        return list(LIDC_LABELS_CSV_COLUMNS)
    train_csv = Path(config["data"]["rsna"]["train_csv"])
    if not config["demo"]["enabled"] and train_csv.is_file():
        return train_csv_columns(train_csv)
    return list(KAGGLE_TRAIN_COLUMNS)


check_config()


# ---------------------------------------------------------------- raw data
MISSING_DATA_HELP = {
    "rsna": (
        "RSNA screening mammography data not found at {path}.\n"
        "Download the Kaggle competition data 'rsna-breast-cancer-detection' "
        "(https://www.kaggle.com/competitions/rsna-breast-cancer-detection/data) and put train.csv at "
        "config data.rsna.train_csv and the train_images/ folder at data.rsna.images_dir.\n"
        "To try leanmed without it: `make demo` runs the whole study on generated data."
    ),
    "lidc": (
        "LIDC-IDRI pickle not found at {path}.\n"
        "Download the Probabilistic U-Net LIDC crops (data_lidc.pickle, see "
        "https://github.com/stefanknegt/Probabilistic-Unet-Pytorch) and put it at config data.lidc.pickle.\n"
        "To try leanmed without it: `make demo` runs the whole study on generated data."
    ),
    "lidc_ct": (
        "LIDC-IDRI CT scans not found at {path} (config data.lidc.source is ct).\n"
        "Download the LIDC-IDRI collection from TCIA (https://www.cancerimagingarchive.net/collection/lidc-idri/) "
        "and put its LIDC-IDRI-XXXX folders under config data.lidc.ct.root, or set data.lidc.source: pickle."
    ),
}


# Raw data is never a rule's output: no rule can write, force-rerun (-F, -R, a code or params trigger) or delete
# (--delete-all-output) the configured data paths. Generated demo data lives in a folder of its own (demo.dir), and
# the rule that writes it exists only in demo mode; then the configured data paths are not read at all.
DEMO = config["demo"]["enabled"]
DEMO_DIR = config["demo"]["dir"].rstrip("/")
DEMO_DATA = dict(
    rsna_csv=f"{DEMO_DIR}/rsna/train.csv",
    rsna_images_dir=f"{DEMO_DIR}/rsna/train_images",
    lidc_pickle=f"{DEMO_DIR}/lidc/data_lidc.pickle",
)


def configured_raw_paths():
    """config key -> the user's raw data path (what no rule may touch)."""
    data = config["data"]
    return {
        "data.rsna.train_csv": data["rsna"]["train_csv"],
        "data.rsna.images_dir": data["rsna"]["images_dir"],
        "data.lidc.pickle": data["lidc"]["pickle"],
        "data.lidc.ct.root": data["lidc"]["ct"]["root"],
    }


def check_demo_config():
    """In demo mode the generated data must not land on, in, or around a configured raw data path."""
    if not DEMO:
        return
    demo_dir = Path(DEMO_DIR).resolve()
    for key, path in configured_raw_paths().items():
        raw = Path(path).resolve()
        if raw == demo_dir or demo_dir in raw.parents or raw in demo_dir.parents:
            raise WorkflowError(
                f"config key demo.dir ({DEMO_DIR}) overlaps {key} ({path}): the demo would write generated data "
                f"where raw data is configured. Choose another demo.dir, or leave {key} at a path outside it "
                "(in demo mode the data: paths are not read)."
            )
    if config["data"]["lidc"]["source"] != "pickle":
        raise WorkflowError(
            "config key data.lidc.source is ct, but demo.enabled is true: the demo generates the LIDC pickle; "
            "set data.lidc.source: pickle for the demo."
        )


check_demo_config()


def raw_data_path(dataset):
    """Path of the raw input of `dataset`: the generated one in demo mode, else the configured one, which must exist."""
    if DEMO:
        return DEMO_DATA["rsna_csv"] if dataset == "rsna" else DEMO_DATA["lidc_pickle"]
    path = config["data"]["rsna"]["train_csv"] if dataset == "rsna" else config["data"]["lidc"]["pickle"]
    if not Path(path).exists():
        raise WorkflowError(MISSING_DATA_HELP[dataset].format(path=path))
    return path


def rsna_images_dir():
    """Folder of the RSNA DICOMs (<patient_id>/<image_id>.dcm): the generated one in demo mode, else configured."""
    return DEMO_DATA["rsna_images_dir"] if DEMO else config["data"]["rsna"]["images_dir"]


def rsna_train_csv(wildcards):
    return raw_data_path("rsna")


def lidc_pickle(wildcards):
    """The patch pickle that LIDC labelling reads: downloaded, or built from the CT scans (data.lidc.source)."""
    if config["data"]["lidc"]["source"] == "ct":
        return f"{RESULTS}/lidc/from_ct/data_lidc.pickle"
    return raw_data_path("lidc")


def lidc_ct_root(wildcards):
    root = config["data"]["lidc"]["ct"]["root"]
    if not Path(root).is_dir():
        raise WorkflowError(MISSING_DATA_HELP["lidc_ct"].format(path=root))
    return root


# ---------------------------------------------------------------- data preparation
def shard_ids():
    return list(range(config["dicom"]["shards"]))


_SHARD_SOURCES = {}


def shard_sources(wildcards):
    """Fingerprint of the raw DICOMs of one shard (size, mtime of each file): a replaced, added or deleted DICOM
    reruns its shard, which reconverts only that image. Demo DICOMs are the output of rule demo_rsna, which
    Snakemake tracks itself. The images folder is listed once per Snakemake run."""
    if DEMO:
        return "generated by rule demo_rsna"
    if not _SHARD_SOURCES:
        _SHARD_SOURCES.update(shard_source_versions(rsna_images_dir(), config["dicom"]["shards"]))
    return _SHARD_SOURCES[int(wildcards.shard)]


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


# ---------------------------------------------------------------- options records
OPTIONS = f"{RESULTS}/options"
# Params that are folders of a job's own outputs: a change of them is a change of the outputs' paths.
OUTPUT_PATH_PARAMS = (folder_of_output,)


def resolved_param(rule_name, name, value, wildcards):
    if not callable(value):
        return value
    arguments = list(inspect.signature(value).parameters)
    if arguments != ["wildcards"]:
        raise WorkflowError(
            f"param {name} of {rule_name} ({value.__name__}) takes {arguments}; an options record can resolve "
            "functions of the wildcards only (list a function of the outputs' folder in OUTPUT_PATH_PARAMS)"
        )
    return value(wildcards)


def images_deleted_from(listing):
    """A `redo_when` check of options_record: converted images that `listing` (images.csv, labels.csv) names were
    deleted outside the workflow (leanmed.study.deleted_outputs); the step writing it converts only those."""
    return lambda wildcards: deleted_images(listing)


def best_checkpoint_deleted(wildcards):
    """A `redo_when` check of options_record: the run's best.pt, which CPU deployment reads, was deleted outside the
    workflow; its training job trains the run again, from scratch: a real run deletes the run's last.pt, which does
    not hold the best epoch's weights (leanmed.study.deleted_outputs)."""
    run = RUN_DIR.format(**wildcards)
    why = deleted_best_checkpoint(run)
    if why and not workflow.dryrun and drop_last_checkpoint(run):
        why += f"; {run}/last.pt deleted (the last epoch's weights: resumed, the run would have no test result)"
    return why


def redo_if(check, rule_name, record, wildcards):
    """Mark the job of `record` to run again (leanmed.study.options_record.mark_to_run_again) when `check` says why:
    a file it writes without declaring it was deleted outside the workflow. A dry run only says so."""
    why = check(wildcards)
    if not why:
        return
    marked = not workflow.dryrun and mark_to_run_again(record, why)
    logger.warning(
        f"{why}, deleted outside the workflow: "
        + (f"{rule_name} runs again and makes it" if marked else f"a real run reruns {rule_name}, which makes it")
    )


def options_record(rule_name, root=OPTIONS, redo_when=None):
    """Input function giving each job of `rule_name` its options record, <root>/<rule>[/<wildcards>].json (the job's
    params as a file), rewritten only when they change; leanmed.study.options_record says why. Dry runs create absent
    records only. Rules that write outside results/ keep their records beside their outputs (root), so that a
    results/ deleted for a clean run does not redo them (a new record is newer than every output: its job reruns).
    `redo_when`: a function of the wildcards saying why the job must run again although its params are the same (a
    file it writes without declaring it was deleted: images_deleted_from, best_checkpoint_deleted), or None."""

    def record(wildcards):
        params = {
            name: resolved_param(rule_name, name, value, wildcards)
            for name, value in getattr(rules, rule_name).params.items()
            if value not in OUTPUT_PATH_PARAMS
        }
        path = options_record_path(root, rule_name, dict(wildcards.items()))
        if workflow.remote_exec:  # a job on a compute node: the records were written where the plan was made
            return path
        try:
            outcome = write_options_record(path, rule_name, params, overwrite=not workflow.dryrun)
        except TypeError as error:
            raise WorkflowError(str(error)) from None
        if outcome == "kept":
            logger.info(f"{path}: the params changed; a real run rewrites this record and reruns the job")
        if redo_when:
            redo_if(redo_when, rule_name, path, wildcards)
        return path

    return record
