"""The findings text: each setting against fp32 in words, read from the comparison and summary tables."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from docutils.core import publish_parts

from leanmed.report import findings, stats, where

SEEDS = (1, 2)


def run(setting, seed, accuracy=0.80, *, peak_gb=2.0, time_to_best_s=50.0, energy_wh=10.0, estimated=False,
        status="completed", model="densenet121", dataset="rsna", scale=1):
    """One summary.csv row with the columns the findings read."""
    finished = status in ("completed", "diverged")
    value = (lambda v: v if finished else math.nan)
    return {"dataset": dataset, "model": model, "setting": setting, "scale": scale, "seed": seed, "status": status,
            "diverged": status == "diverged", "test_accuracy": value(accuracy),
            "train_peak_bytes": value(peak_gb * 1e9), "time_to_best_s": value(time_to_best_s),
            "energy_train_kwh_pue": value(energy_wh / 1000), "energy_estimated": estimated if finished else None,
            "energy_measured": not estimated if finished else None, "memory_kind": "cpu_peak_rss_bytes"}


def compared(setting, diff, low, high, verdict, *, baseline_accuracy=0.820, seeds="1 2", model="densenet121",
             dataset="rsna", margin=0.01):
    """One row of the comparison table as stats.comparison_table writes it."""
    return {"dataset": dataset, "scale": 1, "model": model, "setting": setting, "baseline": "fp32", "margin": margin,
            "seeds_paired": seeds, "confidence": 0.95, "accuracy_baseline": baseline_accuracy,
            "accuracy_other": baseline_accuracy + diff, "accuracy_diff": diff, "accuracy_diff_ci_low": low,
            "accuracy_diff_ci_high": high, "verdict": verdict, "note": ""}


def bullet(text, setting):
    return next(line for line in text.splitlines() if line.startswith(f"- {setting}"))


@pytest.fixture
def study():
    runs = []
    for seed in SEEDS:
        runs.append(run("fp32", seed, 0.82, peak_gb=2.0, time_to_best_s=50.0, energy_wh=10.0))
        runs.append(run("amp", seed, 0.815, peak_gb=1.04, time_to_best_s=45.0, energy_wh=11.0, estimated=True))
        runs.append(run("8bit", seed, 0.70, peak_gb=1.5, status="diverged" if seed == 2 else "completed"))
        runs.append(run("half_8bit", seed, 0.81, peak_gb=1.0))
    runs.append(run("amp_8bit", 1, status="missing"))
    runs.append(run("amp_8bit", 2, status="missing"))
    summary = pd.DataFrame(runs)
    comparison = pd.DataFrame([
        compared("amp", -0.005, -0.008, 0.002, stats.VERDICT_NON_INFERIOR),
        compared("8bit", -0.12, -0.15, -0.09, stats.VERDICT_DEGRADATION),
        {**compared("amp_8bit", math.nan, math.nan, math.nan, "not compared", seeds=""),
         "note": "no seed with predictions under both fp32 and amp_8bit"},
        compared("half_8bit", -0.01, -0.04, 0.02, stats.VERDICT_INCONCLUSIVE),
    ])
    return summary, comparison


def test_non_inferior_setting_with_ratios_and_estimated_energy(study):
    text = findings.findings_markdown(*study[:1], [study[1]])
    assert bullet(text, "amp") == (
        "- amp: test accuracy 0.815 vs fp32 0.820, difference -0.005 (95% CI -0.008 to +0.002) over 2 paired "
        "seeds: non-inferior at margin 0.01 (no degradation beyond the margin); peak training memory 0.52x, "
        "time to convergence 0.90x, training energy 1.10x (estimated).")


def test_the_baseline_states_its_own_values(study):
    text = findings.findings_markdown(study[0], [study[1]])
    assert bullet(text, "fp32") == (
        "- fp32 (baseline): test accuracy 0.820 (mean over 2 of 2 seeds), peak training memory 2 GB, "
        "time to convergence 50 s, training energy 10 Wh.")


def test_inferior_and_inconclusive_settings_say_so(study):
    text = findings.findings_markdown(study[0], [study[1]])
    assert "difference -0.120 (95% CI -0.150 to -0.090) over 2 paired seeds: possible degradation" in bullet(
        text, "8bit")
    assert "training energy 1.00x;" not in bullet(text, "8bit")  # measured energy: no "estimated"
    assert bullet(text, "8bit").endswith("training energy 1.00x.")
    assert ": inconclusive (no difference shown" in bullet(text, "half_8bit")


def test_diverged_and_missing_runs_are_listed_and_no_verdict_is_said_plainly(study):
    text = findings.findings_markdown(study[0], [study[1]])
    assert bullet(text, "amp_8bit") == (
        "- amp_8bit: no finished run; no verdict: no seed with predictions under both fp32 and amp_8bit.")
    assert bullet(text, "Diverged").endswith(": 8bit seed 2")
    assert bullet(text, "Without a result") == "- Without a result: amp_8bit seed 1 (missing), amp_8bit seed 2 (missing)"


def test_no_verdict_when_the_interval_could_not_be_computed(study):
    summary, comparison = study
    comparison.loc[comparison["setting"] == "amp", ["accuracy_diff_ci_low", "accuracy_diff_ci_high"]] = math.nan
    text = findings.findings_markdown(summary, [comparison])
    assert "over 2 paired seeds: no verdict: the confidence interval could not be computed" in bullet(text, "amp")


def test_every_dataset_and_model_has_its_section_and_other_scales_only_list_lost_runs():
    summary = pd.DataFrame([
        run("fp32", 1), run("amp", 1, 0.81),
        run("fp32", 1, dataset="lidc", model="vit"), run("8bit", 1, 0.79, dataset="lidc", model="vit"),
        run("fp32", 1, 0.6, scale=4, status="diverged"),
    ])
    comparisons = [pd.DataFrame([compared("amp", -0.01, -0.02, 0.0, stats.VERDICT_INCONCLUSIVE, seeds="1")]),
                   pd.DataFrame([compared("8bit", -0.01, -0.02, 0.0, stats.VERDICT_INCONCLUSIVE, seeds="1",
                                          dataset="lidc", model="vit")])]
    text = findings.findings_markdown(summary, comparisons)
    assert "Dataset rsna, S=1" in text and "Dataset lidc, S=1" in text
    assert "**rsna / densenet121**" in text and "**lidc / vit**" in text
    assert "over 1 paired seed:" in text
    assert "- Diverged (NaN/inf training loss; their best checkpoint still counts in the means): fp32 S=4 seed 1" in text
    assert "non-inferior at margin" not in text


def test_a_dataset_with_only_the_baseline(tmp_path):
    summary = pd.DataFrame([run("fp32", 1)])
    empty = tmp_path / "rsna_vs_fp32.csv"
    pd.DataFrame([]).to_csv(empty, index=False)
    text = findings.findings_markdown(summary, [findings.read_comparison(empty)])
    assert "- fp32 (baseline): test accuracy 0.800" in text


def test_the_text_is_valid_restructuredtext_for_the_report_front_page(study):
    text = findings.findings_markdown(study[0], [study[1]])
    warnings = io.StringIO()
    html = publish_parts(text, writer="html",
                         settings_overrides={"warning_stream": warnings, "report_level": 2})["html_body"]
    assert warnings.getvalue() == ""
    assert "<li>" in html and "non-inferior" in html and "<strong>rsna / densenet121</strong>" in html


def test_reads_the_columns_stats_writes(tmp_path):
    """Through the real comparison table: a setting identical to fp32 is non-inferior with a zero difference."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    summary_rows = []
    for setting in ("fp32", "8bit"):
        for seed in SEEDS:
            folder = tmp_path / "runs" / "rsna" / "densenet121" / setting / "s1" / f"seed{seed}"
            folder.mkdir(parents=True)
            pd.DataFrame({"image_id": [f"i{i}" for i in range(200)], "label": labels,
                          "probability": np.where(labels == 1, 0.9, 0.1), "prediction": labels}).to_csv(
                folder / "predictions.csv", index=False)
            summary_rows.append(run(setting, seed, 1.0))
    summary = pd.DataFrame(summary_rows)
    comparison = stats.comparison_table(tmp_path / "runs", summary, "rsna", margin=0.01, n_bootstrap=100)
    comparison.to_csv(tmp_path / "rsna_vs_fp32.csv", index=False)
    text = findings.findings_markdown(summary, [findings.read_comparison(tmp_path / "rsna_vs_fp32.csv")])
    assert bullet(text, "8bit").startswith(
        "- 8bit: test accuracy 1.000 vs fp32 1.000, difference +0.000 (95% CI +0.000 to +0.000) over 2 paired "
        "seeds: non-inferior")


def test_where_prints_the_findings_after_the_list_of_outputs(study, tmp_path, capsys):
    where.main([str(tmp_path)])
    assert capsys.readouterr().out.rstrip().endswith("is written once every comparison with fp32 is).")

    findings.write_findings(study[0], [study[1]], tmp_path / findings.FINDINGS_FILE)
    where.main([str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("leanmed results in ")
    assert f"  Findings in words: {tmp_path / findings.FINDINGS_FILE}" in printed
    assert printed[printed.index("Findings"):] == (tmp_path / findings.FINDINGS_FILE).read_text().splitlines()
