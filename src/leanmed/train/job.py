"""One training job: train with early stopping, evaluate the best checkpoint on the test split, write the run folder.

The job (``run(cfg)``) writes into ``cfg.out_dir`` (see docs/architecture.md): ``metrics.json`` (validated against
``leanmed/schemas/metrics.schema.json``), ``epochs.csv``, ``predictions.csv``, ``best.pt``, ``last.pt`` and
carbontracker logs under ``energy/train/`` and ``energy/inference/``.

The epoch passes are ``leanmed.train.loop``, checkpoints and when they are resumed ``leanmed.train.checkpoint``, the
content of metrics.json and the other files ``leanmed.train.record``. Behaviour that the pipeline relies on:

- Adam at ``cfg.lr`` (settings decide torch or bitsandbytes 8-bit), BCE-with-logits on one logit, batches of
  ``cfg.batch_size``, at most ``cfg.max_epochs`` epochs, early stopping when the validation loss has not improved
  (strictly decreased) for ``cfg.patience`` epochs.
- Seeded: python, numpy and torch are seeded with ``cfg.seed`` before the model is built; the training order of
  epoch e is drawn from a generator seeded with (seed, e). On CPU deterministic algorithms are switched on, so the same
  job twice gives the same losses, predictions and metrics (only timings, memory and energy differ).
- Checkpoints: ``last.pt`` as often as ``cfg.checkpoint_interval_s`` says (``LastCheckpointSchedule``; always at the
  end) and ``best.pt`` at every improvement, each written to a temporary file and renamed (atomic). ``best.pt`` holds
  the model weights and bookkeeping, without optimiser state (it is only evaluated, and this halves the disk space of
  big models).
- Resume: with ``last.pt`` present the job continues from it (model, optimiser, scaler, history, RNG states), and ends
  with the same metrics as an uninterrupted run. A ``last.pt`` of another configuration or other inputs is refused;
  under another stopping rule (patience, max_epochs) it is kept, continued or refused as its history says a run
  under the new rule would have stopped (``leanmed.train.checkpoint.stop_under``).
- SIGTERM (e.g. a cluster's time limit): the current batch finishes, the epoch is abandoned, ``last.pt`` keeps the
  last finished epoch, and ``TrainingInterrupted`` (a SystemExit with code 143) ends the job non-zero so the workflow
  reruns it, which resumes.
- Divergence: a NaN/inf training loss (checked every step on CPU, every 25 steps on CUDA to avoid a sync per step)
  or validation loss stops training; the job still evaluates the best checkpoint (if an epoch finished with a finite
  validation loss before), writes ``metrics.json`` with ``"status": "diverged"`` (and a ``predictions.csv`` holding
  only its header when there is no checkpoint) and returns normally.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from leanmed.atomic import remove_abandoned_temporaries
from leanmed.data.images import ImageDataset, make_loader, reseed_shuffle, split_fingerprint
from leanmed.metrics import binary_metrics
from leanmed.train import loop
from leanmed.train.carbontracker_setup import prefetch_cpu_info
from leanmed.train.checkpoint import (
    JobState,
    LastCheckpointSchedule,
    checkpoint_for_resume,
    checkpoint_payload,
    job_fingerprint,
    load_checkpoint,
    resume_state,
    save_atomically,
    validation_outcome,
)
from leanmed.train.energy import EnergyMeter
from leanmed.train.energy_records import unmeasured
from leanmed.train.loop import Determinism, StopOnSigterm, epoch_seed, seed_everything
from leanmed.train.measure import (
    PeakMemoryMeter,
    gradient_bytes,
    measurement_environment,
    optimizer_state_bytes,
    release_training_state,
    time_inference,
)
from leanmed.train.models import build_model
from leanmed.train.progress import end_line, epoch_line, job_name, start_line
from leanmed.train.record import (
    EPOCH_COLUMNS,
    PREDICTION_COLUMNS,
    finite_or_none,
    memory_block,
    metrics_record,
    pretrained_record,
    validate_metrics,
    write_csv,
    write_json,
)
from leanmed.train.settings import (
    ResolvedSetting,
    build_optimizer,
    cudnn_benchmark,
    make_grad_scaler,
    prepare_model,
    resolve,
    resolve_device,
)

__all__ = ["TrainConfig", "TrainingInterrupted", "run", "main", "exit_without_teardown", "THRESHOLD",
           "INTERRUPTED_EXIT_CODE"]

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a SIGTERM-killed process


@dataclass
class TrainConfig:
    """One training job (one dataset x model x setting x scale x seed).

    split_csv: path of split.csv. out_dir: the run folder. image_size: side the images are resized to before any
    downsampling. scale, downsample_mode: see leanmed.data.images. threads: torch CPU threads (None: torch's
    default). pretrained: False, True (timm's weights) or a path to a weights file. device: "auto", "cpu", "cuda".
    energy: measure energy with carbontracker. inference_repeats: timed passes over the test set (at most: the passes
    stop once they took inference_budget_s seconds, at least one; 0: no budget). config_hash: hash of
    the workflow configuration that decides the training (not inference_repeats or device), recorded in provenance
    and in last.pt, which is resumed only under the same hash. energy_country: ISO code whose grid intensity
    carbontracker uses (None: its world average). tuned_step: the step's speed options channels_last,
    cudnn.benchmark and fused torch Adam where they apply (False: the paper's eager step); compile: torch.compile the
    model for the training and validation passes (the test evaluation and inference timing run it uncompiled). See
    leanmed.train.settings. checkpoint_interval_s: how often last.pt (weights, optimiser and RNG states, history) is
    written: after the first epoch that ends this many seconds after the training loop started or last.pt was last
    written, and always when training ends or SIGTERM stops it (0: after every epoch). It changes no result: a job
    killed otherwise resumes from the last.pt it wrote and trains the epochs since again, to the same weights on CPU
    (leanmed.train.checkpoint.LastCheckpointSchedule says what it saves).
    """

    split_csv: str
    out_dir: str
    dataset: str
    model: str
    setting: str
    seed: int
    scale: int = 1
    downsample_mode: str = "pooled_upsampled"
    image_size: int = 256
    lr: float = 1e-5
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    num_workers: int = 0
    threads: int | None = None
    pretrained: bool | str = False
    device: str = "auto"
    energy: bool = True
    inference_repeats: int = 5
    config_hash: str = ""
    energy_country: str | None = None
    inference_warmup: int = 1
    inference_budget_s: float = 1.0
    tuned_step: bool = False
    compile: bool = False
    checkpoint_interval_s: float = 0.0



class TrainingInterrupted(SystemExit):
    """The job stopped on SIGTERM: between epochs, after writing last.pt; during one, leaving the last.pt written before
    (see LastCheckpointSchedule). Exit code 143."""

    def __init__(self, message: str):
        super().__init__(INTERRUPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message



# --------------------------------------------------------------------------------------------------------------------
# The job


def run(cfg: TrainConfig, on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Run the job described by ``cfg`` (resuming from ``last.pt`` when present) and return metrics.json's content.

    ``on_epoch_end(epoch)`` is called after each finished epoch, its best.pt and epochs.csv written and before last.pt
    is (tests use it to interrupt).
    Raises TrainingInterrupted on SIGTERM; returns normally for completed and diverged runs.
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_abandoned_temporaries(out_dir, recursive=False):  # the run folder is this job's alone
        logger.info("deleted %s: the temporary file of a write killed in an earlier attempt", path)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.energy:
        prefetch_cpu_info()
    resolved = resolve(cfg.setting, device, tuned_step=cfg.tuned_step, compile=cfg.compile)
    with Determinism(device), cudnn_benchmark(resolved), StopOnSigterm() as stop:
        try:
            return _run(cfg, out_dir, device, resolved, stop, on_epoch_end)
        except TrainingInterrupted as interrupted:
            logger.warning("end %s: interrupted: %s; a rerun resumes from last.pt", job_name(cfg), interrupted)
            raise


def _run(cfg, out_dir: Path, device: str, resolved: ResolvedSetting, stop: StopOnSigterm, on_epoch_end) -> dict:
    seed_everything(cfg.seed)
    datasets = {
        split: ImageDataset(cfg.split_csv, split, cfg.scale, cfg.downsample_mode, cfg.image_size)
        for split in ("train", "val", "test")
    }
    input_size = datasets["train"].input_size
    pin_memory = torch.device(device).type == "cuda"
    loaders = {
        split: make_loader(dataset, cfg.batch_size, shuffle=(split == "train"), seed=cfg.seed,
                           num_workers=cfg.num_workers, pin_memory=pin_memory)
        for split, dataset in datasets.items()
    }
    model = build_model(cfg.model, input_size, pretrained=cfg.pretrained)
    model = prepare_model(model, resolved)  # device, weight dtype, channels_last where applied
    step_model = torch.compile(model) if resolved.step.compile else model  # shares model's parameters
    optimizer = build_optimizer(model.parameters(), resolved, cfg.lr)
    scaler = make_grad_scaler(resolved)
    inputs = split_fingerprint(cfg.split_csv)
    fingerprint = job_fingerprint(cfg, device, inputs)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    checkpoint, refused = checkpoint_for_resume(last_path, fingerprint, cfg.patience, cfg.max_epochs)
    resumed_now = checkpoint is not None
    if resumed_now:
        state = resume_state(checkpoint, model, optimizer, scaler)
        del checkpoint  # its tensors are copied into the model and optimiser
    else:
        state = JobState()
        for stale in (last_path, best_path, out_dir / "metrics.json"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(out_dir / "energy" / "train", ignore_errors=True)
    state.segments += 1
    finished_before = state.early_stopped or state.diverged or state.epoch >= cfg.max_epochs
    logger.info("%s", start_line(
        cfg, resolved, device, sum(parameter.numel() for parameter in model.parameters()),
        {split: len(dataset) for split, dataset in datasets.items()}, pretrained_record(cfg),
        resumed_from=state.epoch if resumed_now else None, refused=refused, finished=finished_before,
    ))

    # ---- training ---------------------------------------------------------------------------------------------
    gradients_measured = None
    epochs_left = 0 if finished_before else cfg.max_epochs - state.epoch
    energy_train = EnergyMeter("train", out_dir / "energy" / "train", device, enabled=cfg.energy,
                               epochs=max(epochs_left, 1), country=cfg.energy_country)
    if epochs_left:
        def payload(full: bool) -> dict:
            return checkpoint_payload(cfg, state, model, optimizer, scaler, input_size, fingerprint, full=full)

        last_checkpoints = LastCheckpointSchedule(cfg.checkpoint_interval_s, epoch=state.epoch)
        environment = measurement_environment(device)  # where this process's epochs are measured
        if state.training_environments[-1:] != [environment]:
            state.training_environments.append(environment)
        memory = PeakMemoryMeter(device)
        state.memory_kind = memory.kind
        try:
            with memory:
                while not (state.early_stopped or state.diverged) and state.epoch < cfg.max_epochs:
                    _train_epoch(cfg, state, step_model, optimizer, scaler, resolved, loaders, energy_train, memory,
                                 stop, last_checkpoints.epoch)
                    logger.info("%s", epoch_line(state, cfg))
                    if gradients_measured is None:
                        gradients_measured = gradient_bytes(model)
                    if state.best_epoch == state.epoch and not state.diverged:
                        save_atomically(payload(full=False), best_path)
                    # epochs.csv after every epoch, so progress can be watched while the job runs
                    write_csv(out_dir / "epochs.csv", EPOCH_COLUMNS, state.history)
                    if on_epoch_end is not None:
                        on_epoch_end(state.epoch)
                    ended = state.early_stopped or state.diverged or state.epoch >= cfg.max_epochs
                    if last_checkpoints.due(ended or stop.requested.is_set()):
                        save_atomically(payload(full=True), last_path)
                        last_checkpoints.written(state.epoch)
                    if stop.requested.is_set():
                        raise TrainingInterrupted(f"SIGTERM after epoch {state.epoch}: {last_path} holds it")
        finally:
            energy_train.finish()

    # ---- release what only training needs (optimiser state, gradients), measured first ------------------------
    # so that the inference phase's memory is the model's alone and compares across settings (last.pt keeps it)
    optimizer_bytes = optimizer_state_bytes(optimizer)
    if gradients_measured is None:
        gradients_measured = gradient_bytes(model)
    release_training_state(model, optimizer, device)

    # ---- test evaluation and inference timing with the best checkpoint -----------------------------------------
    test_block, inference_block, inference_memory, energy_inference = _test_and_time(
        cfg, state, model, resolved, datasets["test"], loaders["test"], best_path, out_dir, device, stop,
        announce_energy=not energy_train.announced,
    )
    if stop.requested.is_set():
        raise TrainingInterrupted("SIGTERM during the test evaluation; training is complete in last.pt")

    # ---- record ---------------------------------------------------------------------------------------------------
    memory_record = memory_block(state, model, gradients_measured, inference_memory, optimizer_bytes)
    metrics = metrics_record(cfg, state, resolved, model, input_size, test_block, memory_record, inference_block,
                             energy_train, energy_inference, inputs)
    write_csv(out_dir / "epochs.csv", EPOCH_COLUMNS, state.history)
    validate_metrics(metrics)
    write_json(out_dir / "metrics.json", metrics)
    logger.info("%s", end_line(cfg, state, metrics, out_dir / "metrics.json"))
    return metrics


def _train_epoch(cfg, state, model, optimizer, scaler, resolved, loaders, energy_train, memory, stop,
                 saved_epoch: int) -> None:
    """Train and validate one epoch; update ``state`` (history, best, patience, divergence). ``saved_epoch``: the epoch
    last.pt holds, which a SIGTERM during the epoch leaves to resume from."""
    epoch = state.epoch + 1
    reseed_shuffle(loaders["train"], epoch_seed(cfg.seed, epoch))
    energy_train.epoch_start()
    trained = loop.train_one_epoch(model, loaders["train"], optimizer, scaler, resolved, stop.requested.is_set)
    if trained.interrupted:
        energy_train.epoch_end()
        raise TrainingInterrupted(f"SIGTERM during epoch {epoch}; {_resumes_from(saved_epoch)}")
    validated = None
    if not trained.diverged:
        validated = loop.evaluate(model, loaders["val"], resolved, stop.requested.is_set)
        if validated.interrupted:
            energy_train.epoch_end()
            raise TrainingInterrupted(f"SIGTERM during validation of epoch {epoch}; {_resumes_from(saved_epoch)}")
    energy_train.epoch_end()

    row = {
        "epoch": epoch,
        "train_loss": trained.mean_loss,
        "val_loss": None,
        "val_accuracy": None,
        "val_roc_auc": None,
        "epoch_train_seconds": trained.seconds,
        "epoch_val_seconds": None,
        "lr": cfg.lr,
    }
    state.epoch = epoch
    if trained.diverged:
        state.diverged = True
        state.divergence = f"training loss became {trained.mean_loss} in epoch {epoch} (after {trained.steps} steps)"
    else:
        val_metrics = binary_metrics(validated.labels, validated.probabilities, THRESHOLD)
        row.update(val_loss=validated.mean_loss, val_accuracy=val_metrics["accuracy"],
                   val_roc_auc=val_metrics["roc_auc"], epoch_val_seconds=validated.seconds)
        outcome, state.epochs_without_improvement = validation_outcome(
            validated.mean_loss, state.best_val_loss, state.epochs_without_improvement, cfg.patience)
        if outcome == "diverged":
            state.diverged = True
            state.divergence = f"validation loss became {validated.mean_loss} in epoch {epoch}"
        elif outcome == "improved":
            state.best_val_loss = validated.mean_loss
            state.best_epoch = epoch
        elif outcome == "early_stopped":
            state.early_stopped = True
    state.history.append(row)
    running_peak = memory.current_peak()
    state.train_peak_bytes = _max_or_none(state.train_peak_bytes, running_peak[0])
    state.train_peak_reserved_bytes = _max_or_none(state.train_peak_reserved_bytes, running_peak[1])


def _resumes_from(saved_epoch: int) -> str:
    return f"last.pt holds epoch {saved_epoch}" if saved_epoch else "no last.pt yet: a rerun trains from the start"


def _max_or_none(*values):
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _test_and_time(cfg, state, model, resolved, test_dataset, test_loader, best_path, out_dir, device, stop,
                   announce_energy: bool = True):
    """Evaluate the best checkpoint on the test split, write predictions.csv, time inference and measure its energy."""
    energy_dir = out_dir / "energy" / "inference"
    shutil.rmtree(energy_dir, ignore_errors=True)
    test_block = {
        "checkpoint": None, "n_images": len(test_dataset), "threshold": THRESHOLD, "accuracy": None, "roc_auc": None,
        "sensitivity": None, "specificity": None, "balanced_accuracy": None, "loss": None, "note": None,
    }
    inference_block = {
        "test_set_seconds": None, "batch_size": 32, "per_image_latency_ms": None, "repeats": cfg.inference_repeats,
        "warmup": cfg.inference_warmup, "latency_images": None, "note": None,
    }
    (out_dir / "predictions.csv").unlink(missing_ok=True)
    if state.best_epoch is None or not best_path.is_file():
        reason = "no checkpoint: training diverged before any epoch finished with a finite validation loss"
        test_block["note"] = inference_block["note"] = reason
        # Every run ends with all its declared outputs: no test predictions, but the file with its header.
        write_csv(out_dir / "predictions.csv", PREDICTION_COLUMNS, [])
        return test_block, inference_block, None, unmeasured(reason)

    best = load_checkpoint(best_path)
    model.load_state_dict(best["model_state"])
    evaluated = loop.evaluate(model, test_loader, resolved, stop.requested.is_set)
    if evaluated.interrupted:
        return test_block, inference_block, None, unmeasured("interrupted")
    values = binary_metrics(evaluated.labels, evaluated.probabilities, THRESHOLD)
    test_block.update(
        checkpoint="best", best_epoch=int(best["epoch"]),
        **{key: finite_or_none(values[key]) for key in
           ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy")},
        loss=finite_or_none(evaluated.mean_loss),
        n_positive=values["n_positive"],
    )
    undefined = [key for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy", "loss")
                 if test_block[key] is None]
    if undefined:
        test_block["note"] = (f"undefined for this test set or model output (one class present, or non-finite "
                              f"probabilities): {', '.join(undefined)}")
    write_csv(out_dir / "predictions.csv", PREDICTION_COLUMNS, [
        {"image_id": image_id, "subject_id": subject_id, "label": int(label), "probability": float(probability),
         "prediction": int(probability >= THRESHOLD)}
        for image_id, subject_id, label, probability in zip(
            test_dataset.image_ids, test_dataset.subject_ids, evaluated.labels, evaluated.probabilities)
    ])

    images, _ = test_dataset[list(range(len(test_dataset)))]  # the loader's batches in one piece, no second pass
    # The test evaluation just ran these batches through this model (eval mode, no_grad, the setting's precision):
    # at batch size 32 it was the warm-up of the batch-32 passes, so none is repeated.
    warmup = 0 if cfg.batch_size == 32 and cfg.inference_warmup else cfg.inference_warmup
    energy_inference = EnergyMeter("inference", energy_dir, device, enabled=cfg.energy, epochs=1,
                                   country=cfg.energy_country, announce=announce_energy)
    memory = PeakMemoryMeter(device)
    try:
        with memory:
            timing = time_inference(model, images, resolved, batch_size=32, repeats=cfg.inference_repeats,
                                    warmup=warmup, latency_warmup=cfg.inference_warmup,
                                    energy_meter=energy_inference, budget_s=cfg.inference_budget_s or None)
    finally:
        energy_inference.finish()
    inference_block.update({key: timing[key] for key in
                            ("test_set_seconds", "batch_size", "per_image_latency_ms", "repeats", "warmup",
                             "latency_images", "latency_repeats", "budget_s")})
    if warmup != cfg.inference_warmup:
        inference_block["note"] = "warm-up of the batch-32 passes: the test evaluation (same batches of 32)"
    energy_record = energy_inference.result(divide_by=timing["repeats"],
                                            what="timed pass over the test set (batch 32)")
    return test_block, inference_block, memory, energy_record




# --------------------------------------------------------------------------------------------------------------------
# Command line


def _parse_pretrained(value: str) -> bool | str:
    lowered = value.strip().lower()
    if lowered in ("false", "no", "0", "none", ""):
        return False
    if lowered in ("true", "yes", "1"):
        return True
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: every TrainConfig field as --option (e.g. --split-csv, --out-dir). Exit 0 for completed and
    diverged runs, 143 after SIGTERM (rerun to resume), 1 on errors."""
    parser = argparse.ArgumentParser(prog="python -m leanmed.train.job", description=__doc__.splitlines()[0])
    for config_field in dataclasses.fields(TrainConfig):
        option = "--" + config_field.name.replace("_", "-")
        required = config_field.default is dataclasses.MISSING
        kind = {"int": int, "float": float, "int | None": int, "str | None": str}.get(str(config_field.type), str)
        if config_field.name == "pretrained":
            parser.add_argument(option, type=_parse_pretrained, default=False)
        elif config_field.type == "bool":
            parser.add_argument(option, type=_parse_pretrained, default=config_field.default)
        else:
            parser.add_argument(option, type=kind, required=required,
                                default=None if required else config_field.default)
    arguments = vars(parser.parse_args(argv))
    cfg = TrainConfig(**arguments)
    try:
        metrics = run(cfg)
    except TrainingInterrupted as interrupted:
        print(f"leanmed: {interrupted}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    print(f"leanmed: {metrics['status']} {cfg.out_dir} test accuracy {metrics['test']['accuracy']}")
    return 0


def exit_without_teardown(code: int = 0) -> None:
    """End the process now, once the job has written everything: run the atexit handlers (the GPU claim's
    release), flush the logs, and skip the interpreter's teardown of torch, timm and the rest (about 1.2 s on a 2-core
    CPU, for nothing). For the end of a job's own process only (the Snakemake script, the command line)."""
    import atexit
    import os

    try:
        atexit._run_exitfuncs()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


if __name__ == "__main__":
    exit_without_teardown(main())
