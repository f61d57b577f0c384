"""Pareto front over (accuracy up; energy, memory, inference time down) on hand-made summaries."""

from __future__ import annotations

import math

import pandas as pd

from leanmed.report import pareto


def row(model, setting, seed, accuracy, energy_wh, peak_gb, inference_s, train_s=100.0, status="completed"):
    """One summary.csv row with only the columns the Pareto front reads."""
    return {"dataset": "lidc", "model": model, "setting": setting, "scale": 1, "seed": seed, "status": status,
            "diverged": False, "test_accuracy": accuracy,
            "energy_train_kwh_pue": None if energy_wh is None else energy_wh / 1000, "energy_measured": True,
            "train_peak_bytes": peak_gb * 1e9, "inference_test_set_seconds": inference_s,
            "train_time_total_s": train_s, "memory_kind": "cpu_peak_rss_bytes", "device": "cpu",
            "device_name": "test cpu"}


def test_front_flags_dominated_pairs_and_names_who_dominates():
    summary = pd.DataFrame([
        row("cnn", "fp32", 1, 0.70, 20.0, 2.0, 2.0),
        row("cnn", "amp", 1, 0.80, 10.0, 1.0, 1.0),  # dominates fp32 on every objective
        row("cnn", "8bit", 1, 0.90, 30.0, 1.0, 1.0),  # most accurate, but costs more energy: on the front
        row("vit", "fp32", 1, 0.85, 5.0, 3.0, 3.0),  # cheapest energy, more memory: on the front
        row("vit", "amp", 1, math.nan, 5.0, 3.0, 3.0, status="missing"),
    ])
    front = pareto.pareto_front(summary, "lidc").set_index(["model", "setting"])
    assert front.attrs["cost_column"] == "energy_wh_mean" and not front.attrs["energy_fallback"]
    assert front.loc[("cnn", "fp32"), "non_dominated"] is False
    assert front.loc[("cnn", "fp32"), "dominated_by"] == "cnn/amp"
    assert front.loc[("cnn", "amp"), "non_dominated"] is True
    assert front.loc[("cnn", "8bit"), "non_dominated"] is True
    assert front.loc[("vit", "fp32"), "non_dominated"] is True
    assert front.loc[("vit", "amp"), "non_dominated"] is None  # nothing imputed for a pair without results
    assert front.loc[("cnn", "fp32"), "energy_wh_mean"] == 20.0
    assert front.loc[("cnn", "fp32"), "train_peak_gb_mean"] == 2.0


def test_within_model_front_compares_one_model_only():
    summary = pd.DataFrame([
        row("cnn", "fp32", 1, 0.70, 20.0, 2.0, 2.0),
        row("cnn", "amp", 1, 0.75, 15.0, 1.5, 1.5),
        row("vit", "fp32", 1, 0.90, 1.0, 0.1, 0.1),  # dominates every cnn pair
    ])
    front = pareto.pareto_front(summary, "lidc").set_index(["model", "setting"])
    assert front.loc[("cnn", "amp"), "non_dominated"] is False
    assert front.loc[("cnn", "amp"), "non_dominated_within_model"] is True
    assert front.loc[("cnn", "fp32"), "non_dominated_within_model"] is False


def test_missing_energy_falls_back_to_training_time_for_every_pair():
    summary = pd.DataFrame([
        row("cnn", "fp32", 1, 0.70, 20.0, 1.0, 1.0, train_s=300.0),
        row("cnn", "amp", 1, 0.70, None, 1.0, 1.0, train_s=200.0),
    ])
    front = pareto.pareto_front(summary, "lidc").set_index("setting")
    assert front.attrs["cost_column"] == "train_time_total_s_mean"
    assert front.attrs["energy_fallback"] is True
    assert "training time" in front.attrs["cost_label"]
    assert front.loc["amp", "non_dominated"] is True and front.loc["fp32", "non_dominated"] is False
    assert math.isnan(front.loc["amp", "energy_wh_mean"])  # the missing energy stays missing
    assert "cpu_peak_rss_bytes" not in front.attrs["caption"] and "peak resident set size" in front.attrs["caption"]
