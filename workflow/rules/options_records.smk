# The options records: each job's params as a file, an input of the job rewritten only when they change, so that a
# changed option reruns its jobs also without Snakemake's own records (leanmed.study.options_record says why), and the
# checks that mark a job to run again when a file it writes without declaring it was deleted. Included after
# common.smk, whose paths and helpers it uses; the rule files call options_record().
import inspect

from leanmed.study.options_record import mark_to_run_again, options_record_path, write_options_record

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


def known_to_exist(path):
    """Tell Snakemake's cache of which files exist that `path` does now. While it builds the plan, Snakemake lists
    each input's folders once and answers later existence checks from that listing (its IOCache inventory): a record
    created after its folder was listed counted as missing, and a fresh study run for explicit targets (two rules'
    outputs) stopped with a MissingInputException naming the record (found by a real run). Without such a cache (another
    Snakemake) nothing is to be done: the file is then looked up on disk."""
    exists = getattr(getattr(workflow, "iocache", None), "exists_local", None)
    if exists is not None:
        exists[path] = True


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
        if outcome == "created":
            known_to_exist(path)
        if outcome == "kept":
            logger.info(f"{path}: the params changed; a real run rewrites this record and reruns the job")
        if redo_when:
            redo_if(redo_when, rule_name, path, wildcards)
        return path

    return record
