"""The paper's figures: radar plots of accuracy against costs, the downsampling study, and the Pareto scatter.

Figures are built on ``matplotlib.figure.Figure`` directly: no pyplot state and no GUI backend, so they render
headless (Agg for PNG) whatever backend is configured; each is saved as PNG and PDF. Each returns a
``PlotResult`` holding the figure, its main axes and the data frame it drew, in the order drawn, so that what a
figure shows can be checked without reading pixels.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from leanmed.report.aggregate import (
    describe_devices,
    describe_memory_kinds,
    group_summary,
    order_settings,
)

DPI = 150
_RC = {"text.usetex": False, "pdf.fonttype": 42, "font.size": 9}
_FOOTNOTE_WIDTH = 110


@dataclass
class PlotResult:
    figure: Figure
    axes: Axes
    data: pd.DataFrame


def _save(figure: Figure, out_png: str | Path, out_pdf: str | Path) -> None:
    for path in (Path(out_png), Path(out_pdf)):
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=DPI, bbox_inches="tight")


def _footnote(figure: Figure, text: str) -> None:
    figure.text(0.01, 0.005, textwrap.fill(text, _FOOTNOTE_WIDTH), ha="left", va="bottom", fontsize=7)


def _seed_counts(groups: pd.DataFrame) -> str:
    """"2-3 of 3 seeds" style: the range of seeds with a result, of the seeds expected, over the points drawn."""

    def span(values) -> str:
        low, high = int(min(values)), int(max(values))
        return str(low) if low == high else f"{low}-{high}"

    return f"{span(groups['accuracy_n'])} of {span(groups['n_expected'])} expected seeds"


def _setting_colours(settings: list[str]) -> dict[str, tuple]:
    palette = matplotlib.colormaps["tab10"]
    return {setting: palette(index % 10) for index, setting in enumerate(settings)}


# ---------------------------------------------------------------------------------------------------------------
# Radar

RADAR_AXES = (
    # (column in group_summary, axis label, unit, larger raw value is better)
    ("accuracy_mean", "$P_T$ test accuracy", "", True),
    ("energy_wh_mean", "$E$ training energy", "Wh", False),
    ("train_peak_gb_mean", "peak training memory", "GB", False),
    ("inference_test_set_seconds_mean", "$T$ inference, test set", "s", False),
)


def normalise_for_radar(values: pd.Series, larger_is_better: bool) -> pd.Series:
    """Map raw values to (0, 1] with 1 = best setting: value / max for accuracy, min / value for costs.

    NaN stays NaN (shown as a gap, never as a value). A zero cost is the best possible and maps to 1.
    """
    finite = values[np.isfinite(values.astype(float))]
    if finite.empty:
        return values.astype(float) * np.nan
    if larger_is_better:
        best = finite.max()
        return values / best if best > 0 else values * np.nan
    best = finite.min()
    return values.map(lambda v: math.nan if not np.isfinite(v) else (1.0 if v == 0 else best / v))


def _range_text(values: pd.Series, unit: str) -> str:
    finite = values[np.isfinite(values.astype(float))]
    if finite.empty:
        return "not available"
    low, high = finite.min(), finite.max()
    suffix = f" {unit}" if unit else ""
    return f"{low:.3g}–{high:.3g}{suffix}"


def energy_description(groups: pd.DataFrame) -> str:
    """What E is in a figure: measured by carbontracker, or (est.) its assumed constant power x time."""
    if int(groups["energy_n_estimated"].sum()) == 0:
        return "E = carbontracker training energy, PUE-adjusted."
    powers = sorted({w for text in groups.get("energy_assumed_power_w", []) for w in str(text).split("; ")
                     if w and w != "nan"}, key=float)
    return ("E (est.) = an estimate, not a measurement: carbontracker found no energy counter (for some component) "
            "and assumed a constant power" + (f" of {', '.join(powers)} W" if powers else "")
            + " times the training time, PUE-adjusted.")


def radar(summary: pd.DataFrame, dataset: str, model: str, out_png, out_pdf, scale: int = 1) -> PlotResult:
    """One polygon per setting over P_T, E, memory and T, normalised so that larger is better on every axis.

    Accuracy is divided by the best setting's accuracy; each cost is the lowest setting's cost divided by this
    setting's (so 1 = cheapest, 0.5 = twice the cheapest). Axis labels give the raw range. A setting with a
    missing value has a gap at that axis and says so in the legend; diverged seeds draw a dashed line and a
    ``*`` in the legend; a setting without any finished run is listed in the legend without a polygon.
    """
    groups = group_summary(summary, dataset=dataset, scale=scale)
    groups = groups[groups["model"] == model]
    if groups.empty:
        raise ValueError(f"no runs for {dataset}/{model} at scale {scale}")
    settings = order_settings(groups["setting"])
    groups = groups.set_index("setting").loc[settings].reset_index()

    data = groups[["setting", "n_expected", "n_finished", "n_diverged", "accuracy_n", "energy_n",
                   "energy_n_estimated"]].copy()
    any_estimate = int(data["energy_n_estimated"].sum()) > 0
    for column, _, _, larger_is_better in RADAR_AXES:
        data[column] = groups[column].astype(float)
        data[f"{column}_normalised"] = normalise_for_radar(groups[column].astype(float), larger_is_better)

    angles = np.linspace(0, 2 * np.pi, len(RADAR_AXES), endpoint=False)
    colours = _setting_colours(settings)
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(7.5, 6.5))
        axes = figure.add_subplot(projection="polar")
        axes.set_theta_offset(np.pi / 2)
        axes.set_theta_direction(-1)
        for _, row in data.iterrows():
            setting = row["setting"]
            values = np.array([row[f"{column}_normalised"] for column, *_ in RADAR_AXES], dtype=float)
            label = setting
            if row["n_finished"] == 0:
                axes.plot([], [], color=colours[setting], linestyle=":", label=f"{setting}: no finished run")
                continue
            missing_axes = [name for (column, name, *_), v in zip(RADAR_AXES, values) if not np.isfinite(v)]
            if row["n_diverged"] > 0:
                label += f" * ({int(row['n_diverged'])}/{int(row['n_expected'])} seeds diverged)"
            if row["n_finished"] < row["n_expected"]:
                label += f" [{int(row['n_finished'])}/{int(row['n_expected'])} seeds finished]"
            if row["energy_n_estimated"] > 0:
                label += " (E est.)"
            if missing_axes:
                label += " — missing: " + ", ".join(name.replace("$", "") for name in missing_axes)
            closed_angles = np.r_[angles, angles[:1]]
            closed_values = np.r_[values, values[:1]]
            linestyle = "--" if row["n_diverged"] > 0 else "-"
            axes.plot(closed_angles, closed_values, color=colours[setting], linestyle=linestyle, marker="o",
                      linewidth=1.6, label=label)
            if np.isfinite(values).all():
                axes.fill(closed_angles, closed_values, color=colours[setting], alpha=0.12)
        axis_labels = []
        for column, name, unit, _ in RADAR_AXES:
            text = f"{name}\n{_range_text(data[column], unit)}"
            if column == "energy_wh_mean" and any_estimate:
                text += "\n(est.: assumed power × time)"
            axis_labels.append(text)
        axes.set_xticks(angles)
        axes.set_xticklabels(axis_labels)
        axes.tick_params(axis="x", pad=12)  # keeps the two-line axis names clear of the outer circle
        for label, angle in zip(axes.get_xticklabels(), angles):
            # Clockwise from the top: names on the right start at the circle, those on the left end at it.
            side = math.sin(angle)
            label.set_horizontalalignment("left" if side > 0.1 else "right" if side < -0.1 else "center")
        axes.set_ylim(0, 1.05)
        axes.set_yticks([0.25, 0.5, 0.75, 1.0])
        axes.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7)
        axes.set_title(f"{dataset} / {model}, S={scale}: larger is better on every axis", pad=22)
        axes.legend(loc="upper left", bbox_to_anchor=(1.05, 1.05), fontsize=8, frameon=False)
        _footnote(
            figure,
            "Normalised per axis across settings: accuracy / best accuracy; for E, memory and T: lowest value / "
            "this value (1 = best setting). Raw ranges under the axis names. Means over finished seeds, per "
            "setting: " + ", ".join(f"{s} {int(n)}/{int(e)}" for s, n, e in
                                    zip(data["setting"], data["accuracy_n"], data["n_expected"]))
            + ". " + energy_description(groups) + " Memory = "
            f"{describe_memory_kinds(groups)}, GB = 1e9 bytes. T = inference over the whole test set. "
            f"Device: {describe_devices(groups)}.",
        )
        figure.subplots_adjust(bottom=0.2)
        _save(figure, out_png, out_pdf)
    return PlotResult(figure, axes, data)


# ---------------------------------------------------------------------------------------------------------------
# Downsampling


def downsampling(summary: pd.DataFrame, dataset: str, model: str, out_png, out_pdf,
                 settings: list[str] | None = None) -> PlotResult:
    """Test accuracy against the downsampling factor S (log2 axis), one line per setting.

    The line joins the per-scale means in order of S, as measured; the band is mean ± sample std over seeds
    (drawn where two or more seeds finished). Points where a seed diverged carry an extra ``x`` marker.
    """
    groups = group_summary(summary, dataset=dataset)
    groups = groups[groups["model"] == model]
    if settings is not None:
        groups = groups[groups["setting"].isin(settings)]
    if groups.empty:
        raise ValueError(f"no runs for {dataset}/{model}")
    ordered_settings = order_settings(groups["setting"])
    colours = _setting_colours(ordered_settings)
    # How S was applied (pooled then upsampled, or a smaller input) is recorded per run as run.downsample_mode.
    runs = summary[(summary["dataset"].astype(str) == str(dataset)) & (summary["model"] == model)]
    modes = runs["run_downsample_mode"].dropna().astype(str).unique() if "run_downsample_mode" in runs else []
    downsample_modes = ", ".join(sorted(modes)) if len(modes) else "not recorded"
    scales = sorted({int(s) for s in groups["scale"]})
    plotted = []
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(6.5, 4.8))
        axes = figure.add_subplot()
        for setting in ordered_settings:
            # Ordered by the x value S only: the measured accuracies are never reordered.
            rows = groups[groups["setting"] == setting].sort_values("scale", kind="stable")
            x = rows["scale"].astype(int).to_numpy()
            mean = rows["accuracy_mean"].astype(float).to_numpy()
            std = rows["accuracy_std"].astype(float).to_numpy()
            n = rows["accuracy_n"].astype(int).to_numpy()
            label = f"{setting} (n = {'/'.join(str(v) for v in sorted(set(n)))} seeds)"
            axes.plot(x, mean, marker="o", color=colours[setting], label=label)
            band = np.isfinite(std)
            if band.any():
                axes.fill_between(x, np.where(band, mean - std, np.nan), np.where(band, mean + std, np.nan),
                                  color=colours[setting], alpha=0.18, linewidth=0)
            diverged = rows["n_diverged"].to_numpy() > 0
            if diverged.any():
                axes.plot(x[diverged], mean[diverged], linestyle="none", marker="x", markersize=10,
                          color=colours[setting])
            plotted.append(rows[["setting", "scale", "accuracy_mean", "accuracy_std", "accuracy_n", "n_expected",
                                 "n_diverged"]])
        if groups["n_diverged"].sum() > 0:
            axes.plot([], [], linestyle="none", marker="x", color="black", label="* a seed diverged")
        axes.set_xscale("log", base=2)
        axes.set_xticks(scales)
        axes.set_xticklabels([str(s) for s in scales])
        axes.minorticks_off()
        axes.set_xlabel("downsampling factor S (image side divided by S; log2 axis)")
        axes.set_ylabel("test accuracy (mean ± std over seeds)")
        axes.set_title(f"{dataset} / {model}: accuracy against image downsampling")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, frameon=False)
        _footnote(
            figure,
            f"Lines join the means over finished seeds at each S ({_seed_counts(groups)} per point); bands: ± "
            f"sample standard deviation (ddof=1) where at least two seeds finished. Test accuracy at the "
            f"best-validation checkpoint. Downsampling mode: {downsample_modes}. "
            f"Device: {describe_devices(groups)}.",
        )
        figure.subplots_adjust(bottom=0.22)
        _save(figure, out_png, out_pdf)
    data = pd.concat(plotted, ignore_index=True) if plotted else pd.DataFrame()
    return PlotResult(figure, axes, data)


# ---------------------------------------------------------------------------------------------------------------
# Pareto scatter


def accuracy_cost_staircase(cost: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two-objective front (lower cost, higher accuracy): points no cheaper-or-equal point beats."""
    order = np.lexsort((-accuracy, cost))
    best = -np.inf
    front_x, front_y = [], []
    for index in order:
        if accuracy[index] > best:
            best = accuracy[index]
            front_x.append(cost[index])
            front_y.append(accuracy[index])
    return np.array(front_x), np.array(front_y)


def pareto_scatter(front_df: pd.DataFrame, out_png, out_pdf) -> PlotResult:
    """Accuracy against energy (or training time when energy is missing), marker area for peak memory.

    Filled markers: non-dominated on all four objectives (accuracy, energy/time, memory, inference time);
    hollow: dominated. The step line is the front of the two plotted objectives only.
    """
    if front_df.empty:
        raise ValueError("empty Pareto table")
    cost_column = front_df.attrs.get("cost_column", front_df["cost_column"].iloc[0])
    energy_fallback = cost_column != "energy_wh_mean"
    cost_label = "training energy E (Wh, PUE-adjusted)" if not energy_fallback else "total training time (s)"
    estimated_energy = not energy_fallback and int(front_df["energy_n_estimated"].sum()) > 0
    if estimated_energy:
        cost_label += ", est.: assumed power × time"
    plottable = front_df[np.isfinite(front_df[cost_column].astype(float))
                         & np.isfinite(front_df["accuracy_mean"].astype(float))].copy()
    left_out = front_df.drop(plottable.index)
    memory = plottable["train_peak_gb_mean"].astype(float)
    largest_memory = memory.max() if np.isfinite(memory).any() else math.nan
    plottable["marker_area"] = [
        40.0 if not np.isfinite(m) or not np.isfinite(largest_memory) or largest_memory <= 0
        else 40.0 + 360.0 * m / largest_memory
        for m in memory
    ]
    models = list(dict.fromkeys(front_df["model"]))
    palette = matplotlib.colormaps["tab10"]
    colours = {model: palette(index % 10) for index, model in enumerate(models)}
    dataset = str(front_df["dataset"].iloc[0])
    scale = int(front_df["scale"].iloc[0])
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(7.5, 5.5))
        axes = figure.add_subplot()
        for _, row in plottable.iterrows():
            non_dominated = row["non_dominated"] is True or row["non_dominated"] == "True"
            colour = colours[row["model"]]
            axes.scatter(row[cost_column], row["accuracy_mean"], s=row["marker_area"], edgecolors=[colour],
                         facecolors=[colour] if non_dominated else ["none"], linewidths=1.5, zorder=3)
            point_label = f"{row['model']}/{row['setting']}"
            if estimated_energy and row["energy_n_estimated"] > 0:
                point_label += " (est.)"
            axes.annotate(point_label, (row[cost_column], row["accuracy_mean"]),
                          textcoords="offset points", xytext=(6, 5), fontsize=7)
        if not plottable.empty:
            front_x, front_y = accuracy_cost_staircase(plottable[cost_column].astype(float).to_numpy(),
                                                       plottable["accuracy_mean"].astype(float).to_numpy())
            axes.step(front_x, front_y, where="post", color="black", linewidth=1, linestyle="--", zorder=2,
                      label="front of the two plotted objectives")
        for model in models:
            axes.scatter([], [], color=colours[model], label=model)
        axes.scatter([], [], facecolors="grey", edgecolors="grey", label="filled: non-dominated on all 4 objectives")
        axes.scatter([], [], facecolors="none", edgecolors="grey", label="hollow: dominated")
        if np.isfinite(largest_memory) and largest_memory > 0:
            axes.scatter([], [], s=400, facecolors="none", edgecolors="lightgrey",
                         label=f"marker area ∝ peak memory; largest {largest_memory:.3g} GB")
        axes.set_xlabel(cost_label + " — lower is better")
        axes.set_ylabel("test accuracy (mean over seeds) — higher is better")
        title = f"{dataset}, S={scale}: accuracy against {'energy' if not energy_fallback else 'training time'}"
        if energy_fallback:
            title += "\n(energy not available for every pair: training time used instead)"
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        note = (
            f"Means over finished seeds ({int(front_df['n_finished'].sum())} of {int(front_df['n_expected'].sum())} "
            f"expected runs). Memory: {describe_memory_kinds(front_df)}. Device: {describe_devices(front_df)}."
        )
        if estimated_energy:
            note += " " + energy_description(front_df)
        if not left_out.empty:
            note += " Not plotted (value missing): " + ", ".join(
                f"{m}/{s}" for m, s in zip(left_out["model"], left_out["setting"])
            ) + "."
        _footnote(figure, note)
        figure.subplots_adjust(bottom=0.2)
        _save(figure, out_png, out_pdf)
    return PlotResult(figure, axes, plottable)
