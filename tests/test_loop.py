"""The training job end to end on generated images (CPU, tiny models, seconds per run)."""

import csv
import json
import logging
import math
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leanmed.data.png import write_png
from leanmed.synthetic import write_split
from leanmed.report.aggregate import flatten_metrics
from leanmed.report.environments import run_environment
from leanmed.train import loop, record
from leanmed.train.checkpoint import LastCheckpointSchedule, stop_under
from leanmed.train.job import TrainConfig, TrainingInterrupted, main, run
from leanmed.train.record import validate_metrics
from test_metrics_definitions import undefined_fields

# bitsandbytes says so for every paged optimiser on CPU; the resolution notes record it already.
pytestmark = pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")

ALL_SETTINGS = ["fp32", "amp", "8bit", "amp_8bit", "half_8bit", "bf16_mixed", "bf16_true", "half", "paged_8bit"]
# Fields that measure time, memory, energy or the machine: allowed to differ between identical jobs.
VOLATILE = {
    ("training", "time_to_best_s"), ("training", "train_time_total_s"), ("training", "validation_time_total_s"),
    ("training", "resumed"),
}
VOLATILE_BLOCKS = {"memory", "inference", "energy", "provenance"}


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory):
    """48 train / 16 val / 16 test grey 32x32 PNGs; positives carry a brighter central square (learnable)."""
    return write_split(tmp_path_factory.mktemp("data"), {"train": 48, "val": 16, "test": 16}, size=32)


def config(split_csv, out_dir, **changes):
    values = dict(split_csv=split_csv, out_dir=str(out_dir), dataset="demo", model="mlp_small", setting="fp32",
                  seed=7, image_size=32, lr=1e-2, batch_size=16, max_epochs=3, patience=5, energy=False,
                  inference_repeats=1, threads=1)
    values.update(changes)
    return TrainConfig(**values)


def epoch_rows(out_dir):
    with open(os.path.join(out_dir, "epochs.csv")) as handle:
        return list(csv.DictReader(handle))


def stable_part(metrics):
    """metrics.json without what legitimately varies between identical jobs (timings, memory, energy, host)."""
    kept = {key: value for key, value in metrics.items() if key not in VOLATILE_BLOCKS}
    kept["training"] = {key: value for key, value in metrics["training"].items()
                        if ("training", key) not in VOLATILE}
    return kept


@pytest.mark.parametrize("setting", ALL_SETTINGS)
def test_each_setting_trains_or_is_marked_diverged(split_csv, tmp_path, setting):
    metrics = run(config(split_csv, tmp_path, setting=setting))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    validate_metrics(on_disk)
    losses = [float(row["train_loss"]) for row in epoch_rows(tmp_path)]
    if setting == "half":
        # float16 weights + torch Adam: NaN after the first step, as the paper saw; the job still completes.
        assert metrics["status"] == "diverged" and metrics["diverged"] is True
        assert math.isnan(losses[-1])
        assert metrics["test"]["checkpoint"] is None and metrics["test"]["accuracy"] is None
        assert "diverged" in metrics["test"]["note"]
        return
    assert metrics["status"] == "completed" and metrics["diverged"] is False
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert metrics["test"]["checkpoint"] == "best"
    assert metrics["setting"]["name"] == setting and metrics["setting"]["device"] == "cpu"
    with open(tmp_path / "predictions.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 16 and predictions[0]["image_id"] == "img64"
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_cnn_trains_with_8bit_adam(split_csv, tmp_path):
    metrics = run(config(split_csv, tmp_path, model="test_resnet", setting="8bit", max_epochs=2, lr=1e-3))
    losses = [float(row["train_loss"]) for row in epoch_rows(tmp_path)]
    assert metrics["status"] == "completed" and losses[-1] < losses[0]
    assert metrics["setting"]["optimizer_class"] == "bitsandbytes.optim.Adam8bit"
    assert metrics["memory"]["optimizer_state_bytes"] < 2 * metrics["memory"]["weights_bytes"]


def test_same_job_twice_gives_identical_results(split_csv, tmp_path):
    first = run(config(split_csv, tmp_path / "a", setting="amp_8bit"))
    second = run(config(split_csv, tmp_path / "b", setting="amp_8bit"))
    assert stable_part(first) == stable_part(second)
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    losses = [[row["train_loss"], row["val_loss"]] for row in epoch_rows(tmp_path / "a")]
    assert losses == [[row["train_loss"], row["val_loss"]] for row in epoch_rows(tmp_path / "b")]


def sigterm_after_epoch(interrupted_epoch):
    """An on_epoch_end that sends the job SIGTERM (as SLURM does) once that epoch has finished."""
    def on_epoch_end(epoch):
        if epoch == interrupted_epoch:
            os.kill(os.getpid(), signal.SIGTERM)
    return on_epoch_end


def test_sigterm_then_rerun_resumes_to_the_same_metrics(split_csv, tmp_path):
    uninterrupted = run(config(split_csv, tmp_path / "full", setting="8bit", max_epochs=5))

    interrupted_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted) as raised:
        # An hour between last.pt writes: SIGTERM writes it anyway, after the epoch it ends.
        run(config(split_csv, interrupted_dir, setting="8bit", max_epochs=5, checkpoint_interval_s=3600),
            on_epoch_end=sigterm_after_epoch(2))
    assert raised.value.code == 143
    assert not (interrupted_dir / "metrics.json").exists()
    checkpoint = torch.load(interrupted_dir / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    for key in ("model_state", "optimizer_state", "scaler_state", "best_val_loss", "best_epoch",
                "epochs_without_improvement", "rng_states", "elapsed", "model", "image_size", "input_size", "setting"):
        assert key in checkpoint

    resumed = run(config(split_csv, interrupted_dir, setting="8bit", max_epochs=5, checkpoint_interval_s=3600))
    assert resumed["training"]["resumed"] is True and uninterrupted["training"]["resumed"] is False
    assert stable_part(resumed) == stable_part(uninterrupted)
    assert (interrupted_dir / "predictions.csv").read_text() == (tmp_path / "full" / "predictions.csv").read_text()


class JobKilled(Exception):
    """Stands for a kill without SIGTERM (SIGKILL, a node failure): the job ends wherever it is."""


def test_last_pt_is_written_as_often_as_the_interval_says_and_a_killed_job_resumes_to_the_same_metrics(
        split_csv, tmp_path):
    uninterrupted = run(config(split_csv, tmp_path / "full", max_epochs=5, checkpoint_interval_s=0))
    last_pt = tmp_path / "killed" / "last.pt"
    last_pt_epochs = {}  # epoch -> the epoch last.pt held when that epoch ended (None: no last.pt yet)

    def slow_second_epoch_then_kill_in_the_third(epoch):
        last_pt_epochs[epoch] = torch.load(last_pt, weights_only=True)["epoch"] if last_pt.exists() else None
        if epoch == 2:
            time.sleep(2.1)  # the interval passes: last.pt is written after this epoch
        if epoch == 3:
            raise JobKilled

    with pytest.raises(JobKilled):
        run(config(split_csv, tmp_path / "killed", max_epochs=5, checkpoint_interval_s=2.0),
            on_epoch_end=slow_second_epoch_then_kill_in_the_third)
    # Not after epoch 1 (the interval had not passed), after epoch 2, not after epoch 3 (killed first).
    assert last_pt_epochs == {1: None, 2: None, 3: 2}
    assert len(epoch_rows(tmp_path / "killed")) == 3 and torch.load(last_pt, weights_only=True)["epoch"] == 2

    resumed = run(config(split_csv, tmp_path / "killed", max_epochs=5, checkpoint_interval_s=2.0))
    assert resumed["training"]["resumed"] is True
    assert stable_part(resumed) == stable_part(uninterrupted)
    assert (tmp_path / "killed" / "predictions.csv").read_text() == (tmp_path / "full" / "predictions.csv").read_text()
    # The finished job wrote its last state, whatever the interval: a rerun only re-evaluates it.
    assert torch.load(last_pt, weights_only=True)["epoch"] == 5


def test_sigterm_during_an_epoch_leaves_the_last_pt_written_before_and_the_rerun_ends_alike(
        split_csv, tmp_path, monkeypatch):
    uninterrupted = run(config(split_csv, tmp_path / "full", max_epochs=4, checkpoint_interval_s=0))
    real_train_one_epoch, epochs_started = loop.train_one_epoch, []

    def sigterm_in_the_third_epoch(*args, **kwargs):
        epochs_started.append(len(epochs_started) + 1)
        if len(epochs_started) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # seen between the epoch's batches
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", sigterm_in_the_third_epoch)
    interrupted_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted) as raised:
        run(config(split_csv, interrupted_dir, max_epochs=4, checkpoint_interval_s=1.0),
            on_epoch_end=lambda epoch: time.sleep(1.1) if epoch == 1 else None)  # last.pt after epoch 1 only
    assert str(raised.value) == "SIGTERM during epoch 3; last.pt holds epoch 1"
    assert torch.load(interrupted_dir / "last.pt", weights_only=True)["epoch"] == 1
    assert len(epoch_rows(interrupted_dir)) == 2

    monkeypatch.undo()
    resumed = run(config(split_csv, interrupted_dir, max_epochs=4, checkpoint_interval_s=1.0))
    assert resumed["training"]["resumed"] is True
    assert stable_part(resumed) == stable_part(uninterrupted)
    assert (interrupted_dir / "predictions.csv").read_text() == (tmp_path / "full" / "predictions.csv").read_text()


def test_a_run_resumed_with_another_thread_count_records_both_training_environments(split_csv, tmp_path):
    """Its training time mixes two environments: metrics.json says each (provenance.training_environments), not only
    the one it finished in."""
    with pytest.raises(TrainingInterrupted):
        run(config(split_csv, tmp_path, max_epochs=3, threads=1), on_epoch_end=sigterm_after_epoch(1))
    resumed = run(config(split_csv, tmp_path, max_epochs=3, threads=2))
    trained_in = resumed["provenance"]["training_environments"]
    assert [environment["torch_threads"] for environment in trained_in] == [1, 2]
    assert {environment["device"] for environment in trained_in} == {"cpu"}
    assert resumed["provenance"]["torch_threads"] == 2

    again = run(config(split_csv, tmp_path, max_epochs=3, threads=1))  # finished: only re-evaluated, nothing trained
    assert again["provenance"]["training_environments"] == trained_in
    single = run(config(split_csv, tmp_path / "single", max_epochs=2, threads=1))
    assert [environment["torch_threads"] for environment in single["provenance"]["training_environments"]] == [1]
    # As the report reads them: one environment for the run trained and tested in one process, both for the other.
    assert run_environment(flatten_metrics(single)) == run_environment(flatten_metrics(metrics_in_one(single)))
    assert "training in" not in run_environment(flatten_metrics(single))
    assert run_environment(flatten_metrics(resumed)).startswith("training in cpu (")


def metrics_in_one(metrics):
    """metrics.json as one process of its environment would have written it: no separate training environments."""
    return {**metrics, "provenance": {**metrics["provenance"], "training_environments": []}}


def test_the_last_checkpoint_schedule():
    now = [0.0]
    schedule = LastCheckpointSchedule(60, clock=lambda: now[0])
    now[0] = 59.9
    assert not schedule.due() and schedule.due(forced=True)
    now[0] = 60.0
    assert schedule.due()
    schedule.written(epoch=3)
    now[0] = 119.0
    assert not schedule.due() and schedule.epoch == 3
    assert LastCheckpointSchedule(0, clock=lambda: now[0]).due()


def test_a_checkpoint_of_another_configuration_is_not_resumed_the_job_starts_over(split_csv, tmp_path):
    run(config(split_csv, tmp_path / "changed", max_epochs=1))
    rerun = run(config(split_csv, tmp_path / "changed", max_epochs=2, lr=1e-3))
    fresh = run(config(split_csv, tmp_path / "fresh", max_epochs=2, lr=1e-3))
    assert rerun["training"]["resumed"] is False
    assert stable_part(rerun) == stable_part(fresh)


def test_a_changed_config_hash_starts_over(split_csv, tmp_path):
    run(config(split_csv, tmp_path, max_epochs=1, config_hash="before"))
    rerun = run(config(split_csv, tmp_path, max_epochs=1, config_hash="after"))
    assert rerun["training"]["resumed"] is False


def _copy_split(split_csv, destination):
    """A copy of the test split (split.csv and its PNGs) that a test may change."""
    import shutil

    source = os.path.dirname(split_csv)
    shutil.copytree(source, destination)
    return os.path.join(destination, "split.csv")


def test_a_checkpoint_trained_on_another_split_is_not_resumed(split_csv, tmp_path):
    """A finished job whose split.csv changed (new labels, here) trains from scratch instead of re-scoring the old
    weights on the new test split, and ends as a clean run on the new split."""
    changed = _copy_split(split_csv, tmp_path / "data")
    run(config(changed, tmp_path / "run", max_epochs=2))
    with open(changed) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[::3]:
        row["label"] = str(1 - int(row["label"]))
    with open(changed, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rerun = run(config(changed, tmp_path / "run", max_epochs=2))
    fresh = run(config(changed, tmp_path / "fresh", max_epochs=2))
    assert rerun["training"]["resumed"] is False
    assert stable_part(rerun) == stable_part(fresh)
    assert rerun["inputs"]["split_csv_sha256"] == fresh["inputs"]["split_csv_sha256"]


def test_a_checkpoint_trained_on_other_pixels_is_not_resumed(split_csv, tmp_path):
    """Re-converted images under the same paths (split.csv unchanged) also start the job over."""
    changed = _copy_split(split_csv, tmp_path / "data")
    first = run(config(changed, tmp_path / "run", max_epochs=2))
    png = os.path.join(os.path.dirname(changed), "png", "0.png")
    pixels = np.asarray(Image.open(png))
    Image.fromarray(255 - pixels).save(png)
    rerun = run(config(changed, tmp_path / "run", max_epochs=2))
    assert rerun["training"]["resumed"] is False
    assert rerun["inputs"]["split_csv_sha256"] == first["inputs"]["split_csv_sha256"]
    assert rerun["inputs"]["images_sha256"] != first["inputs"]["images_sha256"]


def test_images_made_again_with_the_same_pixels_resume_the_checkpoint(split_csv, tmp_path):
    """A PNG converted again after its DICOM was touched (or copied without its mtime) records another fingerprint of
    how it was made, with the same pixels: the job resumes its finished checkpoint instead of training again."""
    changed = _copy_split(split_csv, tmp_path / "data")
    first = run(config(changed, tmp_path / "run", max_epochs=2))
    png = os.path.join(os.path.dirname(changed), "png", "0.png")
    before = Path(png).read_bytes()
    write_png(np.asarray(Image.open(png)), png, fingerprint="made-again-0000")
    assert Path(png).read_bytes() != before
    rerun = run(config(changed, tmp_path / "run", max_epochs=2))
    assert rerun["training"]["resumed"] is True
    assert rerun["inputs"] == first["inputs"] and stable_part(rerun) == stable_part(first)


def test_a_job_deletes_the_temporary_files_of_writes_killed_in_its_folder(split_csv, tmp_path):
    # SIGKILL during a checkpoint write leaves atomic_path's temporary file (a real run left a partial best.pt's
    # through every rerun); the job, alone in its run folder, deletes such files when it starts.
    abandoned = tmp_path / ".best.pt.17594.dba5c6a4.tmp"
    abandoned.write_bytes(b"part of a checkpoint")
    kept = tmp_path / "notes.tmp"
    kept.write_text("not a temporary file of leanmed's")
    run(config(split_csv, tmp_path, max_epochs=1))
    assert not abandoned.exists() and kept.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_rerun_of_a_finished_job_only_reevaluates(split_csv, tmp_path):
    first = run(config(split_csv, tmp_path, max_epochs=2))
    again = run(config(split_csv, tmp_path, max_epochs=2))
    assert again["training"]["epochs_run"] == 2 and stable_part(again) == stable_part(first)


def test_forced_divergence_is_recorded_and_the_job_returns(split_csv, tmp_path):
    metrics = run(config(split_csv, tmp_path, lr=1e20))
    assert metrics["status"] == "diverged" and metrics["diverged"]
    assert metrics["training"]["best_epoch"] is None and "training loss" in metrics["training"]["note"]
    assert metrics["test"]["accuracy"] is None
    validate_metrics(json.loads((tmp_path / "metrics.json").read_text()))
    # Every declared output exists: no predictions, but the file with its header.
    assert (tmp_path / "predictions.csv").read_text().splitlines() == [",".join(record.PREDICTION_COLUMNS)]


def test_divergence_after_a_good_epoch_evaluates_the_best_checkpoint(split_csv, tmp_path, monkeypatch):
    original = loop.train_one_epoch
    calls = []

    def poison_third_epoch(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(float("nan"))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", poison_third_epoch)
    metrics = run(config(split_csv, tmp_path, max_epochs=5))
    assert metrics["status"] == "diverged" and metrics["training"]["epochs_run"] == 3
    assert metrics["training"]["best_epoch"] == 2 and metrics["test"]["checkpoint"] == "best"
    assert metrics["test"]["accuracy"] is not None and metrics["test"]["best_epoch"] == 2


REAL_EVALUATE = loop.evaluate


def scripted_validation_losses(monkeypatch, losses, first_epoch=1):
    """Validation passes report ``losses`` (epoch ``first_epoch`` on); the test pass keeps its real figures."""
    remaining = iter(losses[first_epoch - 1:])

    def scripted(model, loader, *args, **kwargs):
        result = REAL_EVALUATE(model, loader, *args, **kwargs)
        if loader.dataset.split == "val":
            result.mean_loss = next(remaining)
        return result

    monkeypatch.setattr(loop, "evaluate", scripted)


def test_early_stopping_after_patience_epochs_without_improvement(split_csv, tmp_path, monkeypatch):
    # best at epoch 2; epoch 4 ties it: no improvement
    scripted_validation_losses(monkeypatch, [0.50, 0.40, 0.45, 0.40, 0.41])
    metrics = run(config(split_csv, tmp_path, max_epochs=10, patience=2))
    training = metrics["training"]
    assert training["early_stopped"] and training["epochs_run"] == 4 and training["best_epoch"] == 2
    assert training["best_val_loss"] == pytest.approx(0.40) and metrics["test"]["best_epoch"] == 2


@pytest.mark.parametrize("history, patience, max_epochs, expected", [
    ([0.5, 0.4, 0.45, 0.4], 2, 10, (4, "early_stopped")),  # a tie is no improvement
    ([0.5, 0.4, 0.45, 0.4], 3, 10, None),  # would train on
    ([0.5, 0.4, 0.45, 0.4], 3, 4, (4, "max_epochs")),
    ([0.5, 0.4, 0.45, 0.4], 2, 3, (3, "max_epochs")),  # stops before the history ends
    ([0.5, 0.4, 0.45, 0.4], 1, 10, (3, "early_stopped")),
    ([0.5, None], 5, 10, (2, "diverged")),  # the training loss diverged: no validation
    ([0.5, float("nan")], 5, 10, (2, "diverged")),
    ([0.5, float("nan")], 5, 1, (1, "max_epochs")),
    ([], 5, 10, None),
])
def test_the_stopping_rule_replayed_on_a_history(history, patience, max_epochs, expected):
    rows = [{"epoch": epoch, "val_loss": loss} for epoch, loss in enumerate(history, start=1)]
    assert stop_under(rows, patience, max_epochs) == expected


def test_a_higher_max_epochs_continues_a_run_that_reached_the_limit_to_a_fresh_runs_result(split_csv, tmp_path):
    first = run(config(split_csv, tmp_path / "run", max_epochs=2))
    assert first["training"]["epochs_run"] == 2 and not first["training"]["early_stopped"]
    continued = run(config(split_csv, tmp_path / "run", max_epochs=4))
    fresh = run(config(split_csv, tmp_path / "fresh", max_epochs=4))
    assert continued["training"]["resumed"] is True and continued["training"]["epochs_run"] == 4
    assert stable_part(continued) == stable_part(fresh)
    assert (tmp_path / "run/predictions.csv").read_text() == (tmp_path / "fresh/predictions.csv").read_text()
    # Lowered again below the epochs trained: last.pt is past the new limit, so the run trains afresh.
    lowered = run(config(split_csv, tmp_path / "run", max_epochs=3))
    assert lowered["training"]["resumed"] is False and lowered["training"]["epochs_run"] == 3


def test_another_patience_keeps_continues_or_retrains_a_run_as_a_fresh_run_would_stop(
    split_csv, tmp_path, monkeypatch
):
    losses = [0.50, 0.40, 0.45, 0.46, 0.47, 0.30, 0.35, 0.36]  # best at 2, then 3 epochs without improvement
    scripted_validation_losses(monkeypatch, losses)
    stopped = run(config(split_csv, tmp_path / "run", max_epochs=8, patience=3))
    assert stopped["training"]["early_stopped"] and stopped["training"]["epochs_run"] == 5

    # Patience 4: the run would have gone on from epoch 5; it continues (epoch 6 improves, then 2 without).
    scripted_validation_losses(monkeypatch, losses, first_epoch=6)
    continued = run(config(split_csv, tmp_path / "run", max_epochs=8, patience=4))
    scripted_validation_losses(monkeypatch, losses)
    fresh = run(config(split_csv, tmp_path / "fresh", max_epochs=8, patience=4))
    assert continued["training"]["resumed"] is True
    assert continued["training"]["epochs_run"] == fresh["training"]["epochs_run"] == 8
    assert continued["training"]["best_epoch"] == fresh["training"]["best_epoch"] == 6
    assert stable_part(continued) == stable_part(fresh)

    # Patience 2: a run would have stopped at epoch 4, before the 8 trained: it trains afresh and stops there.
    scripted_validation_losses(monkeypatch, losses)
    retrained = run(config(split_csv, tmp_path / "run", max_epochs=8, patience=2))
    assert retrained["training"]["resumed"] is False and retrained["training"]["epochs_run"] == 4
    assert retrained["training"]["early_stopped"] is True


def test_smaller_input_downsampling_and_time_fields(split_csv, tmp_path):
    metrics = run(config(split_csv, tmp_path, scale=2, downsample_mode="smaller_input", max_epochs=2))
    assert metrics["model"]["image_size"] == 32 and metrics["model"]["input_size"] == 16
    assert metrics["model"]["n_parameters"] == 16 * 16 * 64 + 64 + 64 * 32 + 32 + 32 + 1
    training = metrics["training"]
    best_rows = [row for row in epoch_rows(tmp_path) if int(row["epoch"]) <= training["best_epoch"]]
    assert training["time_to_best_s"] == pytest.approx(sum(float(row["epoch_train_seconds"]) for row in best_rows))
    assert training["train_time_total_s"] >= training["time_to_best_s"] > 0
    assert metrics["inference"]["test_set_seconds"] > 0 and metrics["memory"]["kind"] == "cpu_peak_rss_bytes"


def test_energy_block_when_measured(split_csv, tmp_path):
    metrics = run(config(split_csv, tmp_path, energy=True, max_epochs=2, inference_repeats=2))
    train = metrics["energy"]["train"]
    # A real counter read (RAPL), or carbontracker's assumed constant CPU power x time, labelled as an estimate.
    assert train["measured"] is True or (train["estimated"] is True and train["assumed_power_w"] > 0), train["note"]
    assert train["energy_kwh"] > 0 and train["pue"] == pytest.approx(1.58)
    # The timed inference of this tiny model lasts milliseconds: carbontracker (sampling every 0.1 s) may see no
    # power sample in it, and then the record must say so instead of reporting a measured zero.
    inference = metrics["energy"]["inference"]
    if inference["measured"] or inference["estimated"]:
        assert inference["energy_kwh"] > 0
    else:
        assert inference["energy_kwh"] is None and "sampling interval" in inference["note"]
    assert list((tmp_path / "energy" / "train").glob("*carbontracker_output.log"))
    assert undefined_fields(metrics) == []  # every field, the energy block's included, says what it is


def test_metrics_schema_rejects_a_missing_field(split_csv, tmp_path):
    import jsonschema

    metrics = run(config(split_csv, tmp_path, max_epochs=1))
    broken = json.loads(json.dumps(metrics))
    del broken["test"]["accuracy"]
    with pytest.raises(jsonschema.ValidationError):
        validate_metrics(broken)
    assert set(metrics["definitions"]) >= {"training.time_to_best_s", "memory.kind", "energy.train"}


def test_command_line(split_csv, tmp_path, capsys):
    code = main(["--split-csv", split_csv, "--out-dir", str(tmp_path), "--dataset", "demo", "--model",
                      "mlp_small", "--setting", "fp32", "--seed", "1", "--image-size", "32", "--max-epochs", "1",
                      "--batch-size", "16", "--lr", "0.01", "--energy", "false", "--inference-repeats", "1"])
    assert code == 0 and (tmp_path / "metrics.json").is_file()
    assert "completed" in capsys.readouterr().out


def test_loader_workers_do_not_change_results(split_csv, tmp_path):
    in_process = run(config(split_csv, tmp_path / "w0", max_epochs=2))
    with_workers = run(config(split_csv, tmp_path / "w2", max_epochs=2, num_workers=2))
    assert stable_part(with_workers) == stable_part(in_process)


# --------------------------------------------------------------------------------------------------------------------
# The training step's speed options (training.tuned_step): off by default, channels_last the only one on a CPU


def test_step_options_off_are_the_eager_step_with_the_same_results(split_csv, tmp_path, monkeypatch):
    default = run(config(split_csv, tmp_path / "default", model="test_resnet", max_epochs=2, lr=1e-3))
    explicit = run(config(split_csv, tmp_path / "off", model="test_resnet", max_epochs=2, lr=1e-3,
                          tuned_step=False, compile=False))
    assert stable_part(explicit) == stable_part(default)
    assert default["setting"]["step"] == {"requested": [], "applied": [], "not_applied": {}, "label": "eager (paper)"}
    # The eager path hands the model the loader's batches as they are (no memory-format conversion).
    seen = []
    monkeypatch.setattr(loop, "to_step_format", lambda images, resolved: seen.append(images) or images)
    run(config(split_csv, tmp_path / "spy", model="test_resnet", max_epochs=1, lr=1e-3))
    assert seen == []


def test_tuned_step_on_cpu_trains_with_channels_last_and_records_what_applied(split_csv, tmp_path, monkeypatch):
    converted = []
    real = loop.to_step_format
    monkeypatch.setattr(loop, "to_step_format", lambda images, resolved: converted.append(1) or real(images, resolved))
    run(config(split_csv, tmp_path / "eager", model="test_resnet", max_epochs=2, lr=1e-3))
    tuned = run(config(split_csv, tmp_path / "tuned", model="test_resnet", max_epochs=2, lr=1e-3, tuned_step=True))
    validate_metrics(tuned)
    assert tuned["status"] == "completed" and converted  # training and validation batches went channels_last
    step = tuned["setting"]["step"]
    assert step["requested"] == ["channels_last", "cudnn_benchmark", "fused_adam"]
    assert step["applied"] == ["channels_last"] and step["label"] == "tuned (channels_last)"
    assert set(step["not_applied"]) == {"cudnn_benchmark", "fused_adam"}
    assert "CUDA only" in step["not_applied"]["cudnn_benchmark"] and "CUDA only" in step["not_applied"]["fused_adam"]
    # The same arithmetic in another memory layout: the losses agree to rounding.
    for tuned_row, eager_row in zip(epoch_rows(tmp_path / "tuned"), epoch_rows(tmp_path / "eager")):
        for key in ("train_loss", "val_loss"):
            assert float(tuned_row[key]) == pytest.approx(float(eager_row[key]), rel=1e-4)
    # A last.pt of the eager step is not resumed by a tuned job (and vice versa): the option is part of the fingerprint.
    from leanmed.train.checkpoint import RESULT_FIELDS

    assert {"tuned_step", "compile"} <= set(RESULT_FIELDS)


def test_tuned_step_with_8bit_adam_keeps_bitsandbytes(split_csv, tmp_path):
    metrics = run(config(split_csv, tmp_path, setting="8bit", max_epochs=1, tuned_step=True))
    assert metrics["setting"]["optimizer_class"] == "bitsandbytes.optim.Adam8bit"
    assert "bitsandbytes" in metrics["setting"]["step"]["not_applied"]["fused_adam"]


def test_command_line_takes_the_step_options(split_csv, tmp_path):
    code = main(["--split-csv", split_csv, "--out-dir", str(tmp_path), "--dataset", "demo", "--model",
                 "mlp_small", "--setting", "fp32", "--seed", "1", "--image-size", "32", "--max-epochs", "1",
                 "--batch-size", "16", "--energy", "false", "--inference-repeats", "1", "--tuned-step", "true"])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["setting"]["step"]["applied"] == ["channels_last"]


# --------------------------------------------------------------------------------------------------------------------
# Progress in the job log (logger leanmed.train.job; carbontracker's assumptions from leanmed.train.energy)

ETA = re.compile(r"left <= (\d+) epochs \(patience\) ~ ([0-9.]+) (s|min|h), at most (\d+) epochs ~ ([0-9.]+) (s|min|h)")


def job_lines(caplog, prefix):
    return [record.getMessage() for record in caplog.records
            if record.name == "leanmed.train.job" and record.getMessage().startswith(prefix)]


def test_the_job_logs_its_start_each_epoch_with_an_eta_and_its_end(split_csv, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="leanmed")
    metrics = run(config(split_csv, tmp_path, energy=True, max_epochs=3, patience=5))

    [start] = job_lines(caplog, "start ")
    assert start.startswith("start demo/mlp_small fp32 s1 seed7: setting fp32 (weights float32, no autocast, ")
    assert "device cpu" in start and "0.068 M parameters" in start and "new run" in start
    assert "images train 48 / val 16 / test 16" in start and "pretrained: none (random initialisation)" in start

    epochs = job_lines(caplog, "epoch ")
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    for number, line in enumerate(epochs, start=1):
        assert re.search(r"train loss \d+\.\d{4}, val loss \d+\.\d{4}, val acc \d\.\d{3}, val AUC \d\.\d{3}", line)
        assert "best epoch" in line
        eta = ETA.search(line)
        assert eta, line
        patience_left, at_most = int(eta.group(1)), int(eta.group(4))
        assert at_most == 3 - number and patience_left == min(5, at_most)
        assert all(math.isfinite(float(eta.group(group))) for group in (2, 5))

    [end] = job_lines(caplog, "end ")
    assert "max_epochs reached (3 of 3)" in end and f"best epoch {metrics['training']['best_epoch']}" in end
    assert f"test accuracy {metrics['test']['accuracy']:.3f}, balanced accuracy" in end and "AUC" in end
    assert end.endswith(str(tmp_path / "metrics.json"))

    # carbontracker's fallback assumptions: one leanmed line, and none of its own start-up messages on the console
    energy = [record.getMessage() for record in caplog.records
              if record.name == "leanmed.train.energy" and record.levelno >= logging.INFO]
    own = [message for message in energy if message.startswith("energy: ")]
    assert len(own) == 1 and own[0].startswith("energy: carbontracker")
    assert "CO2eq at carbontracker's world average" in own[0] and "PUE of 1.58" in own[0]
    assert "RAPL" in own[0]  # counters read, or their absence and the assumed power stated
    # Forwarded at their own level: only what carbontracker warns while measuring (on a loaded machine, e.g. "Epoch
    # duration is too short for a measurement to be collected"), never its start-up messages.
    assert all(message.startswith("carbontracker warning: ") for message in energy if message not in own)
    printed = capsys.readouterr()
    assert "CarbonTracker" not in printed.out + printed.err
    assert metrics["energy"]["train"]["energy_kwh"] > 0  # still measured


def test_the_log_says_why_training_stopped_and_counts_the_epochs_since_the_best(split_csv, tmp_path, monkeypatch,
                                                                               caplog):
    caplog.set_level(logging.INFO, logger="leanmed.train.job")
    # best at epoch 2, then two epochs without improvement
    scripted_validation_losses(monkeypatch, [0.50, 0.40, 0.45, 0.40])
    run(config(split_csv, tmp_path, max_epochs=10, patience=2))
    epochs = job_lines(caplog, "epoch ")
    assert len(epochs) == 4
    assert "best epoch 2 (1 since); left <= 1 epochs (patience)" in epochs[2] and "at most 7 epochs" in epochs[2]
    assert "stopping: no improvement for 2 epochs" in epochs[3]
    [end] = job_lines(caplog, "end ")
    assert "early stopping after 2 epochs without improvement (epoch 4 of at most 10); best epoch 2" in end


def test_the_log_says_interrupted_resumed_and_started_over(split_csv, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="leanmed")

    with pytest.raises(TrainingInterrupted):
        run(config(split_csv, tmp_path, max_epochs=2), on_epoch_end=sigterm_after_epoch(1))
    [interrupted] = job_lines(caplog, "end ")
    assert "interrupted: SIGTERM after epoch 1" in interrupted and "a rerun resumes" in interrupted

    caplog.clear()
    run(config(split_csv, tmp_path, max_epochs=2))
    [start] = job_lines(caplog, "start ")
    assert start.endswith("resumed from epoch 1 (last.pt)")
    assert [line.split(":")[0] for line in job_lines(caplog, "epoch ")] == ["epoch 2/2"]

    caplog.clear()
    run(config(split_csv, tmp_path, max_epochs=2, lr=1e-3))
    [start] = job_lines(caplog, "start ")
    assert start.endswith("starting over: last.pt of another configuration/inputs (differs in lr)")
    # one line says it: checkpoint.py's own warning (with both fingerprints) is left to the start line
    assert not [record for record in caplog.records
                if record.name == "leanmed.train.checkpoint" and record.levelno >= logging.INFO]
