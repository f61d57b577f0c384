"""The lines a training job logs about its progress (logger ``leanmed.train.job``): a start line, one line per epoch
and an end line, so that a running job's log (``logs/runs/<dataset>/<model>/<setting>/s<S>/seed<N>.log``) says
where it stands and how long it may still take.

The functions here only build the text; ``leanmed.train.job`` logs it. From the demo study (2-core CPU)::

    start lidc/test_vit half_8bit s1 seed1: setting half_8bit (weights float16, no autocast,
        bitsandbytes.optim.Adam8bit, step eager (paper)); device cpu; 0.274 M parameters; images train 192 / val 64 /
        test 64; pretrained: none (random initialisation); max 15 epochs, patience 8, batch 32, lr 0.0003; new run
    epoch 1/15: train loss 0.7071, val loss 0.6753, val acc 0.609, val AUC 0.659, 1.58 s (train 1.50 s + val
        0.08 s); best epoch 1 (0 since); left <= 8 epochs (patience) ~ 13 s, at most 14 epochs ~ 22 s
    end lidc/test_vit half_8bit s1 seed1: max_epochs reached (15 of 15); best epoch 13 (val loss 0.4096); test
        accuracy 0.797, balanced accuracy 0.805, AUC 0.878; training 17 s over 15 epochs; status completed;
        results/runs/lidc/test_vit/half_8bit/s1/seed1/metrics.json

The time left is the mean seconds of the epochs run so far (training + validation, resumed epochs included) times
the epochs left: at most ``patience - epochs since the best`` when the validation loss does not improve again
(the early-stopping rule), at most ``max_epochs - epoch`` in any case.
"""

from __future__ import annotations

import json
import math
import os

__all__ = ["job_name", "start_line", "epoch_line", "end_line", "epochs_left", "stop_reason", "format_number"]


def format_number(value, digits: int = 4) -> str:
    """A metric for a log line: ``n/a`` for None, nan/inf spelled out, else ``digits`` significant-ish decimals."""
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_seconds(seconds: float) -> str:
    """``0.41 s``, ``12 s``, ``14 min``, ``3.2 h``: short, and finite."""
    seconds = float(seconds) if seconds is not None and math.isfinite(seconds) else 0.0
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def job_name(cfg) -> str:
    return f"{cfg.dataset}/{cfg.model} {cfg.setting} s{cfg.scale} seed{cfg.seed}"


def _device_text(device: str) -> str:
    import torch

    text = device
    if torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        try:
            text += f" ({torch.cuda.get_device_name(index)})"
        except Exception:
            pass
    claim = os.environ.get("LEANMED_GPU_CLAIM")  # leanmed.train.devices.CLAIM_ENV, set by claim_gpu
    if claim:
        try:
            claim = json.loads(claim)
        except ValueError:
            claim = None
    if isinstance(claim, dict):
        if claim.get("source") == "lock":
            text += f", claimed GPU {claim.get('device')} of {','.join(claim.get('visible') or [])}"
        elif claim.get("source") == "slurm":
            text += f", SLURM's GPU assignment (CUDA_VISIBLE_DEVICES={claim.get('cuda_visible_devices')})"
        elif torch.device(device).type == "cuda":
            text += f", no GPU claimed ({claim.get('reason')})"
    return text


def _pretrained_text(pretrained) -> str:
    if pretrained is False:
        return "none (random initialisation)"
    if pretrained is True:
        return "timm's default weights"
    return str(pretrained)


def start_line(cfg, resolved, device: str, n_parameters: int, images: dict, pretrained, resumed_from: int | None,
               refused: str | None, finished: bool = False) -> str:
    """``resumed_from``: the epoch of the last.pt continued from (None: a fresh start); ``refused``: why a
    last.pt present was not resumed (None: there was none, or it was resumed)."""
    setting = resolved.record()
    autocast = f"autocast {setting['autocast_dtype']}" if setting["autocast_dtype"] else "no autocast"
    if setting["grad_scaler"]:
        autocast += " + grad scaler"
    parts = [
        f"start {job_name(cfg)}: setting {setting['name']} (weights {setting['weight_dtype']}, {autocast}, "
        f"{setting['optimizer_class']}, step {setting['step']['label']})",
        f"device {_device_text(device)}",
        f"{n_parameters / 1e6:.3f} M parameters",
        "images " + " / ".join(f"{split} {count}" for split, count in images.items()),
        f"pretrained: {_pretrained_text(pretrained)}",
        f"max {cfg.max_epochs} epochs, patience {cfg.patience}, batch {cfg.batch_size}, lr {cfg.lr:g}",
    ]
    if resumed_from is not None:
        resumed = f"resumed from epoch {resumed_from} (last.pt)"
        if finished:
            resumed += ", training already finished: re-evaluating the best checkpoint"
        parts.append(resumed)
    elif refused:
        parts.append(f"starting over: {refused}")
    else:
        parts.append("new run")
    return "; ".join(parts)


def epochs_left(state, cfg) -> tuple[int, int]:
    """(epochs left at most if the validation loss does not improve again, epochs left at most): both 0 once the
    job stops (early stopping, divergence, max_epochs)."""
    if state.early_stopped or state.diverged or state.epoch >= cfg.max_epochs:
        return 0, 0
    at_most = cfg.max_epochs - state.epoch
    return min(max(cfg.patience - state.epochs_without_improvement, 0), at_most), at_most


def epoch_line(state, cfg) -> str:
    """The line of the epoch just finished (``state.history[-1]``)."""
    row = state.history[-1]
    train_s = float(row["epoch_train_seconds"] or 0.0)
    val_s = float(row["epoch_val_seconds"] or 0.0)
    seconds = [float(r["epoch_train_seconds"] or 0.0) + float(r["epoch_val_seconds"] or 0.0) for r in state.history]
    mean_s = sum(seconds) / len(seconds) if seconds else 0.0
    patience_left, at_most = epochs_left(state, cfg)
    if state.best_epoch is None:
        best = "no best epoch yet"
    else:
        best = f"best epoch {state.best_epoch} ({state.epoch - state.best_epoch} since)"
    line = (
        f"epoch {state.epoch}/{cfg.max_epochs}: train loss {format_number(row['train_loss'])}, "
        f"val loss {format_number(row['val_loss'])}, val acc {format_number(row['val_accuracy'], 3)}, "
        f"val AUC {format_number(row['val_roc_auc'], 3)}, {format_seconds(train_s + val_s)} "
        f"(train {format_seconds(train_s)} + val {format_seconds(val_s)}); {best}; "
        f"left <= {patience_left} epochs (patience) ~ {format_seconds(patience_left * mean_s)}, "
        f"at most {at_most} epochs ~ {format_seconds(at_most * mean_s)}"
    )
    if state.diverged:
        line += f"; stopping: diverged ({state.divergence})"
    elif state.early_stopped:
        line += f"; stopping: no improvement for {cfg.patience} epochs"
    return line


def stop_reason(state, cfg) -> str:
    if state.diverged:
        return f"diverged: {state.divergence}"
    if state.early_stopped:
        return (f"early stopping after {cfg.patience} epochs without improvement "
                f"(epoch {state.epoch} of at most {cfg.max_epochs})")
    if state.epoch >= cfg.max_epochs:
        return f"max_epochs reached ({state.epoch} of {cfg.max_epochs})"
    return f"stopped after epoch {state.epoch} of {cfg.max_epochs}"


def end_line(cfg, state, metrics: dict, metrics_path) -> str:
    test = metrics.get("test") or {}
    best = f"best epoch {state.best_epoch}" if state.best_epoch is not None else "no best epoch"
    if state.best_epoch is not None and math.isfinite(state.best_val_loss):
        best += f" (val loss {format_number(state.best_val_loss)})"
    return (
        f"end {job_name(cfg)}: {stop_reason(state, cfg)}; {best}; test accuracy {format_number(test.get('accuracy'), 3)}, "
        f"balanced accuracy {format_number(test.get('balanced_accuracy'), 3)}, "
        f"AUC {format_number(test.get('roc_auc'), 3)}; training {format_seconds(state.train_seconds + state.val_seconds)}"
        f" over {state.epoch} epochs; status {metrics.get('status')}; {metrics_path}"
    )
