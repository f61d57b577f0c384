# The options records: each job's params as a file, an input of the job rewritten only when they change, so that a
# changed option reruns its jobs also without Snakemake's own records (leanmed.study.options_record says why), and the
# checks that mark a job to run again when a file it writes without declaring it was deleted. Included after
# common.smk, whose paths and helpers it uses; the rule files call options_record().
import functools
import inspect
import os

from leanmed.study.deleted_outputs import deleted_best_checkpoint, deleted_images, drop_damaged_last_checkpoint
from leanmed.study.deleted_outputs import drop_last_checkpoint, is_damaged_checkpoint, stale_metrics
from leanmed.study.options_record import mark_to_run_again, options_record_path, write_options_record
from snakemake.io import IOFile

OPTIONS = f"{RESULTS}/options"


@functools.cache
def writes_while_planning():
    """Whether this plan may write records and "redone" entries and delete damaged checkpoints: not in a dry run, and
    not while another Snakemake holds this folder's lock (Snakemake builds its plan before it takes the lock, so a run
    it then refuses had already rewritten a record of the running one: a real run). Snakemake's lock files are read as
    9.27 (pinned) keeps them."""
    if workflow.dryrun:
        return False
    try:
        return not any(True for _ in workflow.persistence._read_locks())
    except Exception:  # another Snakemake's persistence: as without a lock
        return True


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
    """A `stale_when` check of options_record: converted images that `listing` (images.csv, labels.csv) names were
    deleted, or modified after it was written, outside the workflow (leanmed.study.deleted_outputs); the step writing
    it converts only those."""
    return lambda wildcards: deleted_images(listing)


def run_lost(wildcards):
    """A `redo_when` check of the training jobs' options records (leanmed.study.deleted_outputs): the run's best.pt,
    which CPU deployment reads, was deleted outside the workflow or is damaged: the run trains again, from scratch (a
    real run deletes the run's last.pt, which does not hold the best epoch's weights). A damaged last.pt (read only to
    resume: the job failed on it every time) is deleted in a real run, so the job trains afresh when it runs."""
    run = RUN_DIR.format(**wildcards)
    if not writes_while_planning():
        if is_damaged_checkpoint(f"{run}/last.pt"):
            logger.warning(f"{run}/last.pt is damaged (not a complete checkpoint): a real run deletes it")
    elif dropped := drop_damaged_last_checkpoint(run):
        logger.warning(dropped)
    why = deleted_best_checkpoint(run)
    if why and writes_while_planning():
        if is_damaged_checkpoint(f"{run}/best.pt"):
            Path(run, "best.pt").unlink()
        if drop_last_checkpoint(run):
            why += f"; {run}/last.pt deleted (the last epoch's weights: resumed, the run would have no test result)"
    return why


def run_stale(wildcards):
    """A `stale_when` check of the training jobs' options records: the run's metrics.json cannot be read, or records
    other options or another split.csv than the job has now (an older backup restored with fresh times, a split.csv
    edited by hand; leanmed.study.deleted_outputs.stale_metrics)."""
    run = RUN_DIR.format(**wildcards)
    return stale_metrics(run, train_params(wildcards)["config_hash"], f"{RESULTS}/{wildcards.dataset}/split.csv")


def reruns_for_record(record, outputs):
    """Whether Snakemake reruns a job for its options `record`: when an output is missing, or the record is newer than
    the oldest output and Snakemake does not take the outputs as made from it, which it does when its records of the
    job's last run (.snakemake/metadata) hold the record's checksum (for small inputs it compares checksums before it
    reruns a job for a newer one). So a results/ restored from a backup, its options records with it, stood as current
    once the records were rewritten with the current options, the ones Snakemake recorded (found by a real run); and a
    record rewritten by a run stopped before the job ran (a kill, a failed job under --keep-going) reruns the job.
    Snakemake's persistence is read as 9.27 (pinned) has it."""
    try:
        oldest = min(os.stat(output).st_mtime_ns for output in outputs)
    except FileNotFoundError:
        return True
    if os.stat(record).st_mtime_ns <= oldest:
        return False
    checksum = f"sha256:{file_sha256(record)}"
    try:
        recorded = [workflow.persistence.metadata(IOFile(output)) for output in outputs]
    except Exception:  # another Snakemake's persistence: take the newer record as rerunning the job
        return True
    return not any(
        metadata is not None and (metadata.input_checksums or {}).get(record) in (checksum, checksum[7:])
        for metadata in recorded
    )


def redo_if(check, rule_name, record, wildcards):
    """Mark the job of `record` to run again (leanmed.study.options_record.mark_to_run_again) when `check` says why:
    a file it writes was deleted or damaged outside the workflow, or does not match its options. A dry run only says
    so."""
    why = check(wildcards)
    if not why:
        return
    marked = writes_while_planning() and mark_to_run_again(record, why)
    logger.warning(f"{why}: " + (f"{rule_name} runs again" if marked else f"a real run reruns {rule_name}"))


def known_to_exist(path):
    """Tell Snakemake's cache of which files exist that `path` does now. While it builds the plan, Snakemake lists
    each input's folders once and answers later existence checks from that listing (its IOCache inventory): a record
    created after its folder was listed counted as missing, and a fresh study run for explicit targets (two rules'
    outputs) stopped with a MissingInputException naming the record (found by a real run). Without such a cache (another
    Snakemake) nothing is to be done: the file is then looked up on disk."""
    exists = getattr(getattr(workflow, "iocache", None), "exists_local", None)
    if exists is not None:
        exists[path] = True


def options_record(rule_name, root=OPTIONS, redo_when=None, stale_when=None):
    """Input function giving each job of `rule_name` its options record, <root>/<rule>[/<wildcards>].json (the job's
    params as a file), rewritten only when they change; leanmed.study.options_record says why. Dry runs create absent
    records only. Rules that write outside results/ keep their records beside their outputs (root), so that a
    results/ deleted for a clean run does not redo them (a new record is newer than every output: its job reruns).
    `redo_when`: a function of the wildcards saying why the job must run again although its params are the same (a
    file it writes was deleted or damaged outside the workflow: run_lost), or None.
    `stale_when`: the same for outputs that may not match the params (run_stale, images_deleted_from), checked only where Snakemake would
    not rerun the job for its record (`reruns_for_record`), so that a changed option, which reruns the job anyway,
    writes no "redone" entry a clean run's record would not hold."""

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
            outcome = write_options_record(path, rule_name, params, overwrite=writes_while_planning())
        except TypeError as error:
            raise WorkflowError(str(error)) from None
        if outcome == "created":
            known_to_exist(path)
        if outcome == "kept":
            logger.info(f"{path}: the params changed; a real run rewrites this record and reruns the job")
        if redo_when:
            redo_if(redo_when, rule_name, path, wildcards)
        if stale_when and outcome != "kept":
            outputs = [apply_wildcards(str(output), wildcards) for output in getattr(rules, rule_name).output]
            if not reruns_for_record(path, outputs):
                redo_if(stale_when, rule_name, path, wildcards)
        return path

    return record
