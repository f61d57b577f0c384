"""The study's results in words: what each setting did against its model's fp32 baseline (``findings.md``).

Built from the tables the workflow already writes, nothing recomputed: the accuracy comparison, its confidence
interval and the non-inferiority verdict are read from the comparison table of ``leanmed.report.stats``
(``stats/<dataset>_vs_fp32.csv``), and peak memory, time to convergence, energy and the diverged or missing runs
from ``summary.csv`` through ``grouping.group_summary``, the same means the paper tables show.

The text is Markdown that is also valid reStructuredText (setext titles, ``-`` bullets, one line per bullet,
``**bold**``), so the Snakemake report's front page (an rst document) can include the file as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from leanmed.report.environments import same_environment
from leanmed.report.grouping import GIGABYTE, group_summary, order_settings
from leanmed.report.stats import VERDICT_DEGRADATION, VERDICT_INCONCLUSIVE, VERDICT_NON_INFERIOR

FINDINGS_FILE = "findings.md"
BASELINE_SETTING = "fp32"
NO_RESULT_STATUSES = ("missing", "unreadable")


def read_comparison(path: str | Path) -> pd.DataFrame:
    """A comparison table written by rule compare_to_baseline; empty when the dataset has no setting but fp32."""
    try:
        return pd.read_csv(path, dtype={"seeds_paired": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _title(text: str, underline: str) -> list[str]:
    """A setext title: the same in Markdown (= and - levels) and reStructuredText."""
    return [text, underline * len(text), ""]


def verdict_text(comparison: pd.Series) -> str:
    """The comparison's verdict in words, or "no verdict" and why when there is no interval to judge by."""
    margin = f"{comparison['margin']:g}"
    if comparison.get("verdict") == "not compared" or _missing(comparison.get("accuracy_diff")):
        reason = comparison.get("note")
        return "no verdict: " + (reason if isinstance(reason, str) and reason else "no paired predictions")
    if _missing(comparison.get("accuracy_diff_ci_low")) or _missing(comparison.get("accuracy_diff_ci_high")):
        return "no verdict: the confidence interval could not be computed"
    return {
        VERDICT_NON_INFERIOR: f"non-inferior at margin {margin} (no degradation beyond the margin)",
        VERDICT_DEGRADATION: f"possible degradation (worse than {comparison['baseline']}, and a loss of {margin} "
                             "or more is not excluded)",
        VERDICT_INCONCLUSIVE: f"inconclusive (no difference shown, but a loss of {margin} or more is not excluded "
                              "either: too few test images to decide)",
    }.get(comparison["verdict"], str(comparison["verdict"]))


def accuracy_text(comparison: pd.Series | None, baseline: str) -> str:
    """"accuracy 0.812 vs fp32 0.820, difference -0.008 (95% CI -0.030 to +0.020): non-inferior (...)"."""
    if comparison is None:
        return f"no verdict: no comparison with {baseline} in the statistics table"
    if _missing(comparison.get("accuracy_diff")):
        return verdict_text(comparison)
    text = (f"test accuracy {comparison['accuracy_other']:.3f} vs {baseline} {comparison['accuracy_baseline']:.3f}, "
            f"difference {comparison['accuracy_diff']:+.3f}")
    if not (_missing(comparison.get("accuracy_diff_ci_low")) or _missing(comparison.get("accuracy_diff_ci_high"))):
        text += (f" ({100 * comparison['confidence']:g}% CI {comparison['accuracy_diff_ci_low']:+.3f} to "
                 f"{comparison['accuracy_diff_ci_high']:+.3f})")
    seeds = str(comparison.get("seeds_paired", "")).split()
    text += f" over {len(seeds)} paired seed{'s' if len(seeds) != 1 else ''}"
    return text + ": " + verdict_text(comparison)


def ratio_text(name: str, group: pd.Series, base: pd.Series | None, column: str, note: str = "") -> str:
    """"peak training memory 0.52x" (setting mean / baseline mean), or why there is no ratio."""
    if base is None:
        return f"{name} n/a (no baseline run)"
    value, reference = group[column], base[column]
    if _missing(value) or _missing(reference):
        return f"{name} n/a (not measured)"
    if reference == 0:
        return f"{name} n/a (baseline value is 0)"
    return f"{name} {value / reference:.2f}x" + (f" ({note})" if note else "")


def energy_is_estimated(*groups: pd.Series | None) -> bool:
    return any(group is not None and group["energy_n_estimated"] > 0 for group in groups)


# Time, memory and energy measured in different environments (or a mean over seeds from several) say nothing
# about the setting: the ratio is printed with this note (leanmed.report.environments).
OTHER_ENVIRONMENTS = "measured in different environments, not comparable"


def cost_ratios(group: pd.Series, base: pd.Series | None) -> str:
    """Peak memory, time to convergence and training energy as ratios to the baseline's means."""
    environments_note = OTHER_ENVIRONMENTS if base is not None and not same_environment(group, base) else ""
    memory_notes = [environments_note]
    if base is not None and group["memory_kind"] != base["memory_kind"]:
        memory_notes.append("memory kinds differ, not comparable")
    energy_notes = [environments_note, "estimated" if energy_is_estimated(group, base) else ""]
    return ", ".join([
        ratio_text("peak training memory", group, base, "train_peak_bytes_mean", _notes(memory_notes)),
        ratio_text("time to convergence", group, base, "time_to_best_s_mean", environments_note),
        ratio_text("training energy", group, base, "energy_wh_mean", _notes(energy_notes)),
    ])


def _notes(notes: list[str]) -> str:
    return "; ".join(note for note in notes if note)


def _number(value, unit: str, digits: str = ".3g") -> str:
    return "n/a" if _missing(value) else f"{value:{digits}} {unit}"


def baseline_text(base: pd.Series) -> str:
    """The baseline's own values, which the ratios of the other settings are relative to."""
    energy = _number(base["energy_wh_mean"], "Wh")
    if energy != "n/a" and energy_is_estimated(base):
        energy += " (estimated)"
    seeds = "seed" if base["n_expected"] == 1 else "seeds"
    return (f"test accuracy {_number(base['accuracy_mean'], '', '.3f').strip()} (mean over "
            f"{int(base['accuracy_n'])} of {int(base['n_expected'])} {seeds}), peak training memory "
            f"{_number(base['train_peak_bytes_mean'] / GIGABYTE, 'GB')}, time to convergence "
            f"{_number(base['time_to_best_s_mean'], 's')}, training energy {energy}")


def _run_name(run: pd.Series, scale: int) -> str:
    at_scale = "" if int(run["scale"]) == scale else f" S={int(run['scale'])}"
    return f"{run['setting']}{at_scale} seed {int(run['seed'])}"


def run_problems(runs: pd.DataFrame, scale: int) -> list[str]:
    """Bullets naming the diverged runs and those without a result (of every scale: each is a run lost)."""
    lines = []
    diverged = runs[runs["diverged"].map(bool)]
    if not diverged.empty:
        lines.append("- Diverged (NaN/inf training loss; their best checkpoint still counts in the means): "
                     + ", ".join(_run_name(run, scale) for _, run in diverged.iterrows()))
    no_result = runs[runs["status"].isin(NO_RESULT_STATUSES)]
    if not no_result.empty:
        lines.append("- Without a result: " + ", ".join(f"{_run_name(run, scale)} ({run['status']})"
                                                        for _, run in no_result.iterrows()))
    return lines


def model_findings(runs: pd.DataFrame, groups: pd.DataFrame, comparison: pd.DataFrame, scale: int,
                   baseline: str) -> list[str]:
    """Bullet lines for one model: the baseline, every other setting against it, and the runs lost.

    ``runs``: the model's rows of summary.csv (every scale); ``groups``: its group_summary rows at ``scale``;
    ``comparison``: its dataset's comparison table."""
    model = groups["model"].iloc[0]
    groups = groups.set_index("setting")
    base = groups.loc[baseline] if baseline in groups.index else None
    lines = []
    if base is not None:
        lines.append(f"- {baseline} (baseline): {baseline_text(base)}.")
    else:
        lines.append(f"- {baseline} (baseline): not run; no setting can be compared.")
    for setting in order_settings(groups.index):
        if setting == baseline:
            continue
        rows = comparison[(comparison["model"] == model) & (comparison["setting"] == setting)] \
            if not comparison.empty else comparison
        compared = rows.iloc[0] if not rows.empty else None
        group = groups.loc[setting]
        if group["n_finished"] == 0:
            lines.append(f"- {setting}: no finished run; {accuracy_text(compared, baseline)}.")
            continue
        lines.append(f"- {setting}: {accuracy_text(compared, baseline)}; {cost_ratios(group, base)}.")
    return lines + run_problems(runs, scale)


def introduction(comparison: pd.DataFrame, baseline: str) -> list[str]:
    """How to read the bullets: what is compared, with which interval and margin (one config value for all)."""
    text = (f"Each setting against the same model's {baseline} run. Test accuracy pooled over the seeds both "
            f"finished; difference = setting - {baseline}")
    if not comparison.empty and "confidence" in comparison and comparison["confidence"].notna().any():
        confidence = comparison["confidence"].dropna().iloc[0]
        margin = comparison["margin"].dropna().iloc[0]
        text += (f", with its {100 * confidence:g}% paired bootstrap confidence interval; non-inferior when the "
                 f"interval's lower end is above -{margin:g} (the margin, absolute accuracy)")
    text += (f". Costs are ratios of means over finished seeds, setting / {baseline} (below 1: the setting needs "
             "less); energy is training energy, PUE-adjusted, and marked estimated where carbontracker assumed a "
             "constant power instead of reading a counter.")
    return [text, ""]


def findings_markdown(summary: pd.DataFrame, comparisons: Iterable[pd.DataFrame], scale: int = 1,
                      baseline: str = BASELINE_SETTING) -> str:
    """The findings text: per dataset and model, every setting against the baseline (see the module docstring).

    ``summary`` is summary.csv as ``aggregate.read_summary`` returns it; ``comparisons`` the comparison tables of
    ``stats.comparison_table`` (one per dataset, rows carry their dataset).
    """
    frames = [frame for frame in comparisons if not frame.empty]
    comparison = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    lines = _title("Findings", "=")
    main_study = summary[summary["scale"].astype(int) == int(scale)]
    if main_study.empty:
        return "\n".join(lines + [f"No runs at S={scale} in the summary.", ""])
    lines += introduction(comparison, baseline)
    for dataset in dict.fromkeys(main_study["dataset"].astype(str)):
        of_dataset = comparison[comparison["dataset"].astype(str) == dataset] if not comparison.empty else comparison
        runs = summary[summary["dataset"].astype(str) == dataset]
        groups = group_summary(summary, dataset=dataset, scale=scale)
        lines += _title(f"Dataset {dataset}, S={scale}", "-")
        for model in dict.fromkeys(groups["model"]):
            lines += [f"**{dataset} / {model}**", ""]
            lines += model_findings(runs[runs["model"] == model], groups[groups["model"] == model], of_dataset,
                                    scale, baseline)
            lines.append("")
    return "\n".join(lines)


def write_findings(summary: pd.DataFrame, comparisons: Iterable[pd.DataFrame], path: str | Path,
                   scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(findings_markdown(summary, comparisons, scale=scale))
    return path
