"""The paper's Table 1/2 layout from summary.csv, written as CSV, Markdown and LaTeX (booktabs).

Every written table carries a caption that says what each column measures, in which units, on which device(s),
and over how many seeds/runs it was averaged. Cells are display strings; the numbers behind them stay in
summary.csv.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from leanmed.report.captions import describe_memory_kinds, describe_step
from leanmed.report.environments import describe_environments, environment_keys, environments_of
from leanmed.report.grouping import GIGABYTE, SETTING_ALIASES, group_summary, order_settings, split_methods

CHECK = "✓"
UNKNOWN_FLAG = "?"
NOT_AVAILABLE = "n/a"
NOT_MEASURED = "n/m"
ESTIMATE_SUFFIX = " (est.)"
DIVERGED_MARK = "*"

# Paper flags by setting name, used only when no finished run recorded setting.paper_flags (e.g. all seeds
# missing). (8-bit optimiser state, autocast, 16-bit weights) as the registry defines each setting.
FALLBACK_PAPER_FLAGS = {
    "fp32": (False, False, False),
    "amp": (False, True, False),
    "8bit": (True, False, False),
    "amp_8bit": (True, True, False),
    "half_8bit": (True, False, True),
    "half": (False, False, True),
    "bf16_mixed": (False, True, False),
    "bf16_true": (False, False, True),
    "paged_8bit": (True, False, False),
}

# Added before "Runs" only when the table's runs were measured in more than one environment: each row's (E1, E1+E2).
ENVIRONMENT_COLUMN = "Env"
PAPER_TABLE_COLUMNS = (
    "Model",
    "Setting",
    "8bit",
    "AMP",
    "Half",
    "|W| (M)",
    "Test accuracy",
    "Peak memory (GB)",
    "T_c (s)",
    "T (s)",
    "E (Wh)",
    "Runs",
    "Runs not completed",
)

LATEX_HEADERS = {
    "|W| (M)": r"$|W|$ (M)",
    "T_c (s)": r"$T_c$ (s)",
    "T (s)": r"$T$ (s)",
    "E (Wh)": r"$E$ (Wh)",
}


def format_number(value) -> str:
    """A measured quantity for a table cell: 1 decimal from 10 up, 2 from 1 up, else 3 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_AVAILABLE
    value = float(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_accuracy(mean: float, std: float, n: int, any_diverged: bool) -> str:
    """"mean ± std" with three decimals (std over seeds, ddof=1; omitted for one seed); "*" when a seed diverged,
    also on "n/a" (every seed diverged before any checkpoint: no accuracy, yet the row must say why)."""
    if n == 0 or math.isnan(mean):
        return NOT_AVAILABLE + (DIVERGED_MARK if any_diverged else "")
    text = f"{mean:.3f}" if n < 2 or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"
    return text + (DIVERGED_MARK if any_diverged else "")


def format_energy(group: pd.Series) -> str:
    """Training energy in Wh; "n/m" when no finished seed has a value; "(est.)" when any value is an estimate."""
    if group["n_finished"] == 0:
        return NOT_AVAILABLE
    if group["energy_n"] == 0:
        return NOT_MEASURED
    text = format_number(group["energy_wh_mean"])
    if group["energy_n_estimated"] > 0:
        text += ESTIMATE_SUFFIX
    if group["energy_n"] < group["n_finished"]:
        text += f" ({int(group['energy_n'])}/{int(group['n_finished'])} seeds)"
    return text


def paper_flags(group: pd.Series) -> tuple[str, str, str]:
    """Check marks for (8bit, AMP, Half): the run's recorded paper_flags, else the setting-name fallback."""
    recorded = (group.get("paper_flag_8bit"), group.get("paper_flag_amp"), group.get("paper_flag_half"))
    if all(flag is not None and not (isinstance(flag, float) and math.isnan(flag)) for flag in recorded):
        flags = tuple(bool(flag) for flag in recorded)
    else:
        setting = SETTING_ALIASES.get(str(group["setting"]), str(group["setting"]))
        flags = FALLBACK_PAPER_FLAGS.get(setting)
        if flags is None:
            return UNKNOWN_FLAG, UNKNOWN_FLAG, UNKNOWN_FLAG
    return tuple(CHECK if flag else "" for flag in flags)


def _ordered_groups(summary: pd.DataFrame, dataset: str, scale: int) -> pd.DataFrame:
    groups = group_summary(summary, dataset=dataset, scale=scale)
    if groups.empty:
        raise ValueError(f"summary has no runs for dataset {dataset!r} at scale {scale}")
    model_order = list(dict.fromkeys(groups["model"]))
    setting_order = order_settings(groups["setting"])
    groups = groups.assign(
        _model_rank=groups["model"].map(model_order.index),
        _setting_rank=groups["setting"].map(setting_order.index),
    )
    return groups.sort_values(["_model_rank", "_setting_rank"], kind="stable").drop(
        columns=["_model_rank", "_setting_rank"]
    )


def paper_table(summary: pd.DataFrame, dataset: str, scale: int = 1) -> pd.DataFrame:
    """Table 1/2 of the paper for one dataset: rows model x setting, cells as display strings.

    Models keep the order of summary.csv (the configured order); settings follow the paper (fp32/baseline, amp,
    8bit, amp_8bit, half_8bit), then any others alphabetically. The caption from ``paper_caption`` is attached
    as ``table.attrs["caption"]``.
    """
    groups = _ordered_groups(summary, dataset, scale)
    rows = []
    for _, group in groups.iterrows():
        flag_8bit, flag_amp, flag_half = paper_flags(group)
        rows.append(
            {
                "Model": group["model"],
                "Setting": group["setting"],
                "8bit": flag_8bit,
                "AMP": flag_amp,
                "Half": flag_half,
                "|W| (M)": format_number(group["n_parameters_millions_mean"]),
                "Test accuracy": format_accuracy(
                    group["accuracy_mean"], group["accuracy_std"], group["accuracy_n"], group["n_diverged"] > 0
                ),
                "Peak memory (GB)": format_number(group["train_peak_bytes_mean"] / GIGABYTE),
                "T_c (s)": format_number(group["time_to_best_s_mean"]),
                "T (s)": format_number(group["inference_test_set_seconds_mean"]),
                "E (Wh)": format_energy(group),
                "Runs": f"{group['n_finished']}/{group['n_expected']}",
                "Runs not completed": group["runs_not_completed"],
            }
        )
    table = pd.DataFrame(rows, columns=list(PAPER_TABLE_COLUMNS))
    environments = environments_of(groups)
    if len(environments) > 1:  # the paper's layout when all runs share one environment, as they should
        table.insert(table.columns.get_loc("Runs"), ENVIRONMENT_COLUMN,
                     [environment_keys(cell, environments) for cell in groups["environment"]])
    table.attrs["caption"] = paper_caption(summary, dataset, scale)
    return table


def _list_methods(methods: list[str]) -> str:
    """Energy methods printed whole (each contains "; " itself), numbered when there are several."""
    if len(methods) == 1:
        return methods[0]
    return " ".join(f"({number}) {method}" for number, method in enumerate(methods, start=1))


def paper_caption(summary: pd.DataFrame, dataset: str, scale: int = 1) -> str:
    """What the paper table shows: columns, units, devices, and how many runs/seeds it summarises."""
    groups = _ordered_groups(summary, dataset, scale)
    n_expected = int(groups["n_expected"].sum())
    n_finished = int(groups["n_finished"].sum())
    n_diverged = int(groups["n_diverged"].sum())
    n_missing = int(groups["n_missing"].sum())
    n_unreadable = int(groups["n_unreadable"].sum())
    seeds = sorted({int(seed) for text in groups["seeds_expected"] for seed in str(text).split()})
    autocast = sorted({d for text in groups["autocast_dtype"] for d in str(text).split("; ") if d and d != "nan"})
    pues = sorted({p for text in groups["energy_pue"] for p in str(text).split("; ") if p and p != "nan"})
    methods = split_methods(groups["energy_estimate_method"])
    any_estimate = int(groups["energy_n_estimated"].sum()) > 0
    powers = sorted(
        {w for text in groups.get("energy_assumed_power_w", []) for w in str(text).split("; ") if w and w != "nan"},
        key=float,
    )

    measured_methods = split_methods(groups["energy_method"])
    energy_text = (
        "E (Wh) = training energy reported by carbontracker, PUE-adjusted as carbontracker reports it"
        + (f" (PUE {', '.join(pues)})" if pues else "")
        + (f", measured as: {_list_methods(measured_methods)}" if measured_methods else "")
        + f"; '{NOT_MEASURED}' = not measured"
    )
    if any_estimate:
        energy_text += (
            f"; '{ESTIMATE_SUFFIX.strip()}' = an estimate, not a measurement: no energy counter was read "
            "(for some component), carbontracker assumed a constant power"
            + (f" of {', '.join(powers)} W" if powers else "")
            + " times the training time"
            + (f" (method: {_list_methods(methods)})" if methods else "")
        )
    return (
        f"Dataset {dataset}, image scale S={scale} (S=1: full resolution). "
        f"One row per model and training setting. Means over the finished seeds (completed or diverged) of "
        f"{n_expected} expected runs (seeds {', '.join(str(s) for s in seeds)}): {n_finished} finished, "
        f"{n_diverged} diverged, {n_missing} missing, {n_unreadable} unreadable; 'Runs' = finished/expected per row "
        f"and 'Runs not completed' lists the others. "
        f"8bit = 8-bit Adam optimiser state; AMP = automatic mixed precision (autocast"
        + (f" to {', '.join(autocast)}" if autocast else "")
        + "); Half = 16-bit weights. "
        f"|W| (M) = trainable parameters in millions. "
        f"Test accuracy = accuracy on the test set at the best-validation-loss checkpoint, mean ± sample standard "
        f"deviation over seeds (no ± with one seed); {DIVERGED_MARK} = at least one seed diverged (NaN/inf loss), "
        f"its best-checkpoint result included as in the paper. "
        f"Peak memory (GB = 1e9 bytes), training phase = {describe_memory_kinds(groups)}. "
        f"T_c (s) = training wall-clock seconds up to the best-validation epoch. "
        f"T (s) = inference time of the trained model over the whole test set. "
        f"{energy_text}. "
        f"'{NOT_AVAILABLE}' = no finished run has the value. "
        f"Measured on: {describe_environments(groups, keyed=f'column {ENVIRONMENT_COLUMN}')}; "
        f"training step: {describe_step(groups)}; time ratios between "
        f"settings depend on the step."
    )


# ---------------------------------------------------------------------------------------------------------------
# Writers

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SPECIALS_PATTERN = re.compile("|".join(re.escape(char) for char in _LATEX_SPECIALS))
# Unicode a default pdflatex setup cannot typeset, mapped to LaTeX after escaping.
_LATEX_UNICODE = {"✓": r"\checkmark{}", "±": r"$\pm$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$",
                  "–": "--", "—": "---", "≈": r"$\approx$", "µ": r"$\mu$",
                  "Δ": r"$\Delta$"}


def latex_escape(text) -> str:
    """Escape LaTeX's special characters in plain text, then map the Unicode symbols tables use."""
    escaped = _LATEX_SPECIALS_PATTERN.sub(lambda match: _LATEX_SPECIALS[match.group(0)], str(text))
    for symbol, replacement in _LATEX_UNICODE.items():
        escaped = escaped.replace(symbol, replacement)
    return escaped


def _cell_text(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):  # NA: nullable integers
        return ""
    return str(value)


def _markdown_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame, caption: str) -> str:
    """A GitHub-flavoured Markdown table with the caption above it."""
    header = "| " + " | ".join(_markdown_escape(str(column)) for column in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = [
        "| " + " | ".join(_markdown_escape(_cell_text(value)) for value in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join([f"**Table.** {_markdown_escape(caption)}", "", header, rule, *body]) + "\n"


def _column_alignment(values: pd.Series) -> str:
    texts = {_cell_text(value) for value in values}
    return "c" if texts <= {CHECK, "", UNKNOWN_FLAG} else "l"


def to_latex(table: pd.DataFrame, caption: str, label: str | None = None) -> str:
    """A booktabs tabular inside a table environment with \\caption (needs booktabs and amssymb)."""
    alignment = "".join(_column_alignment(table[column]) for column in table.columns)
    header = " & ".join(LATEX_HEADERS.get(str(column), latex_escape(column)) for column in table.columns)
    body = [
        " & ".join(latex_escape(_cell_text(value)) for value in row) + r" \\" for row in table.itertuples(index=False)
    ]
    lines = [
        r"% Requires \usepackage{booktabs} and \usepackage{amssymb} (for \checkmark).",
        r"\begin{table}[htbp]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(caption)}}}",
    ]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        rf"\begin{{tabular}}{{{alignment}}}",
        r"\toprule",
        header + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_tables(table: pd.DataFrame, prefix: str | Path, caption: str | None = None) -> dict[str, Path]:
    """Write prefix.csv, prefix.md (caption above the table) and prefix.tex (booktabs, \\caption, \\label).

    ``caption`` defaults to ``table.attrs["caption"]``; a table without either is refused, because every table
    must say what it measures.
    """
    caption = caption if caption is not None else table.attrs.get("caption")
    if not caption:
        raise ValueError("a table needs a caption saying what it measures, units, device and runs summarised")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": prefix.with_name(prefix.name + ".csv"),
        "md": prefix.with_name(prefix.name + ".md"),
        "tex": prefix.with_name(prefix.name + ".tex"),
    }
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(to_markdown(table, caption))
    label = "tab:" + re.sub(r"[^A-Za-z0-9:-]+", "-", prefix.name)
    paths["tex"].write_text(to_latex(table, caption, label=label))
    return paths
