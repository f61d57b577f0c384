"""Caption texts about the summarised runs (rows of ``leanmed.report.grouping.group_summary``): the kind of memory
their peaks are, the training step they ran (where they ran: ``leanmed.report.environments``).
"""

from __future__ import annotations

import pandas as pd

from leanmed.report.grouping import ordered_unique

MEMORY_KIND_DESCRIPTIONS = {
    "cuda_max_memory_allocated_bytes": "GPU memory: torch.cuda.max_memory_allocated during the training phase",
    "cpu_peak_rss_bytes": "CPU memory: peak resident set size (RSS) of the training process",
}


def describe_memory_kinds(groups: pd.DataFrame) -> str:
    kinds = ordered_unique(
        kind for text in groups.get("memory_kind", []) for kind in str(text).split("; ") if kind and kind != "nan"
    )
    if not kinds:
        return "kind unknown (no finished run)"
    descriptions = [MEMORY_KIND_DESCRIPTIONS.get(kind, kind) for kind in kinds]
    if len(kinds) > 1:
        return "MIXED across runs, not comparable: " + "; ".join(descriptions)
    return descriptions[0]


# The training step's speed options (setting.step in metrics.json) as captions print them; the same names as
# leanmed.train.settings.STEP_OPTIONS (not imported: the report does not need torch), and why one may not apply.
STEP_OPTION_NAMES = {"channels_last": "channels_last", "cudnn_benchmark": "cudnn.benchmark",
                     "fused_adam": "fused Adam", "compile": "torch.compile"}
STEP_OPTION_LIMITS = {"cudnn_benchmark": "CUDA only", "fused_adam": "CUDA and torch Adam only"}
EAGER_STEP = "eager (paper)"


def _step_options(text) -> set[str]:
    """Option names of a step_requested / step_applied cell ("+"-joined per run, "; "-joined over runs)."""
    return {name for part in str(text).split("; ") for name in part.split("+") if name in STEP_OPTION_NAMES}


def describe_step(groups: pd.DataFrame) -> str:
    """The training step the summarised runs ran, for captions: "eager (paper)" when no speed option was requested
    (runs recorded before setting.step existed ran it too), else "tuned (...)" listing each applied option, the
    settings it applied to where not all, and the requested options that applied nowhere."""
    if "n_finished" in groups:
        groups = groups[groups["n_finished"] > 0]  # rows without a finished run say nothing about the step
    if "step_requested" not in groups or groups.empty:
        return EAGER_STEP
    requested_per_row = [_step_options(text) for text in groups["step_requested"]]
    applied_per_row = [_step_options(text) for text in groups.get("step_applied", [""] * len(groups))]
    requested = set().union(*requested_per_row)
    if not requested:
        return EAGER_STEP
    settings = [str(setting) for setting in groups.get("setting", [""] * len(groups))]
    parts, nowhere = [], []
    for option, name in STEP_OPTION_NAMES.items():
        if option not in requested:
            continue
        rows = [setting for setting, applied in zip(settings, applied_per_row) if option in applied]
        asked = [setting for setting, wanted in zip(settings, requested_per_row) if option in wanted]
        if not rows:
            nowhere.append(name + (f" ({STEP_OPTION_LIMITS[option]})" if option in STEP_OPTION_LIMITS else ""))
        elif len(rows) < len(asked):
            parts.append(f"{name} for {', '.join(ordered_unique(rows))} only")
        else:
            parts.append(name)
    text = f"tuned ({', '.join(parts)})" if parts else EAGER_STEP
    if nowhere:
        text += f"; requested, not applied on this device: {', '.join(nowhere)}"
    if any(not wanted for wanted in requested_per_row):
        text = "MIXED across rows (some ran the eager step): " + text
    return text
