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

from leanmed.report.captions import describe_memory_kinds
from leanmed.report.environments import describe_environments
from leanmed.report.grouping import group_summary, order_settings

DPI = 150  #: resolution of the PNGs, dots per inch (config report.dpi; the PDFs are vector graphics)
_RC = {"text.usetex": False, "pdf.fonttype": 42, "font.size": 9}
_FOOTNOTE_WIDTH = 110


@dataclass
class PlotResult:
    figure: Figure
    axes: Axes
    data: pd.DataFrame


def _save(figure: Figure, out_png: str | Path, out_pdf: str | Path, dpi: int) -> None:
    """Write the figure as PNG (at `dpi`) and PDF. The PDF carries no creation date, so the same figure gives the
    same bytes: a rerun that replots unchanged data leaves a PDF as a clean run makes it (matplotlib stamped the
    time of saving, and a partial rerun differed from a clean run in every PDF)."""
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=dpi, bbox_inches="tight")
    Path(out_pdf).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_pdf, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None})


def _footnote(figure: Figure, text: str) -> None:
    figure.text(0.01, 0.005, textwrap.fill(text, _FOOTNOTE_WIDTH), ha="left", va="bottom", fontsize=7)


def _seed_counts(groups: pd.DataFrame) -> str:
    """"2-3 of 3 seeds" style: the range of seeds with a result, of the seeds expected, over the points drawn."""

    def span(values) -> str:
        low, high = int(min(values)), int(max(values))
        return str(low) if low == high else f"{low}-{high}"

    return f"{span(groups['accuracy_n'])} of {span(groups['n_expected'])} expected seeds"


# Each setting gets its own colour, marker and dash pattern, so that two settings with the same values stay
# distinguishable where one line lies on the other (and in grey print).
SETTING_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
SETTING_DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (5, 3, 1, 3)))
# Two settings "coincide" when their drawn values differ by at most this at every point (accuracy or a normalised
# value in [0, 1]): half the last digit of the three decimals the tables print, so they would look the same there.
COINCIDE_TOLERANCE = 5e-4
# Horizontal offset between neighbouring settings in the downsampling figure, in log2 units of S (2**0.05 = 3.5%):
# enough to separate the markers of coinciding lines, small against the factor 2 between scales.
DODGE_LOG2_STEP = 0.05


def setting_styles(settings: list[str]) -> dict[str, dict]:
    """setting -> matplotlib keyword arguments (color, marker, linestyle), distinct for every setting listed."""
    palette = matplotlib.colormaps["tab10"]
    return {
        setting: {"color": palette(index % 10), "marker": SETTING_MARKERS[index % len(SETTING_MARKERS)],
                  "linestyle": SETTING_DASHES[index % len(SETTING_DASHES)]}
        for index, setting in enumerate(settings)
    }


def _curves_coincide(first: tuple, second: tuple, tolerance: float) -> bool:
    x_first, y_first = (np.asarray(values, dtype=float) for values in first)
    x_second, y_second = (np.asarray(values, dtype=float) for values in second)
    if x_first.shape != x_second.shape or not np.array_equal(x_first, x_second):
        return False
    both_missing = np.isnan(y_first) & np.isnan(y_second)
    if both_missing.all():
        return False  # nothing drawn for either: nothing to hide
    with np.errstate(invalid="ignore"):
        close = np.abs(y_first - y_second) <= tolerance
    return bool(np.all(close | both_missing))


def coinciding_settings(curves: dict[str, tuple], tolerance: float = COINCIDE_TOLERANCE) -> dict[str, list[str]]:
    """setting -> the other settings whose curve lies on its own, in the order given.

    ``curves`` maps a setting to (x, y) of what is drawn for it; two curves coincide when they have the same x and
    their y differ by at most ``tolerance`` at every point (a value missing from both counts as equal).
    """
    return {
        setting: [other for other in curves if other != setting
                  and _curves_coincide(curves[setting], curves[other], tolerance)]
        for setting in curves
    }


def coincidence_label(setting: str, coinciding: dict[str, list[str]]) -> str:
    """"fp32 (= 8bit)" where fp32's line lies on 8bit's, else the setting's name."""
    others = coinciding.get(setting, [])
    return f"{setting} (= {' = '.join(others)})" if others else setting


def coincidence_note(coinciding: dict[str, list[str]], where: str,
                     shown: str = "drawn with distinct markers and dashes so each stays visible") -> str:
    """"fp32 and 8bit coincide (...)." for each group of coinciding settings, or "" when none do."""
    groups = []
    for setting, others in coinciding.items():
        group = [setting, *others]
        if others and not any(set(group) == set(seen) for seen in groups):
            groups.append(group)
    if not groups:
        return ""
    names = "; ".join(", ".join(group[:-1]) + " and " + group[-1] for group in groups)
    return f"{names} coincide (equal within {COINCIDE_TOLERANCE:g} {where}): {shown}."


def coinciding_points(names: list[str], cost: np.ndarray, accuracy: np.ndarray) -> dict[str, list[str]]:
    """name -> the other points drawn at the same place: accuracy within COINCIDE_TOLERANCE, cost within 0.1%."""
    return {
        name: [other for j, other in enumerate(names) if j != i
               and abs(accuracy[i] - accuracy[j]) <= COINCIDE_TOLERANCE
               and math.isclose(cost[i], cost[j], rel_tol=1e-3)]
        for i, name in enumerate(names)
    }


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


def radar(summary: pd.DataFrame, dataset: str, model: str, out_png, out_pdf, scale: int = 1,
          dpi: int = DPI) -> PlotResult:
    """One polygon per setting over P_T, E, memory and T, normalised so that larger is better on every axis.

    Accuracy is divided by the best setting's accuracy; each cost is the lowest setting's cost divided by this
    setting's (so 1 = cheapest, 0.5 = twice the cheapest). Axis labels give the raw range. A setting with a
    missing value has a gap at that axis and says so in the legend; diverged seeds draw hollow markers and a
    ``*`` in the legend; a setting without any finished run is listed in the legend without a polygon. Every
    setting has its own marker and dash pattern; polygons that coincide say so in the legend ("fp32 (= 8bit)").
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
    styles = setting_styles(settings)
    normalised_columns = [f"{column}_normalised" for column, *_ in RADAR_AXES]
    coinciding = coinciding_settings({
        row["setting"]: (angles, row[normalised_columns].to_numpy(dtype=float))
        for _, row in data.iterrows() if row["n_finished"] > 0
    })
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(7.5, 6.5))
        axes = figure.add_subplot(projection="polar")
        axes.set_theta_offset(np.pi / 2)
        axes.set_theta_direction(-1)
        for _, row in data.iterrows():
            setting = row["setting"]
            values = row[normalised_columns].to_numpy(dtype=float)
            label = coincidence_label(setting, coinciding)
            if row["n_finished"] == 0:
                axes.plot([], [], color=styles[setting]["color"], linestyle=":", label=f"{setting}: no finished run")
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
            marker_face = "none" if row["n_diverged"] > 0 else styles[setting]["color"]
            # A polygon that later ones lie on is drawn wider, with larger markers, so it shows around them.
            covered_by = sum(settings.index(other) > settings.index(setting) for other in coinciding.get(setting, []))
            axes.plot(closed_angles, closed_values, **styles[setting], markerfacecolor=marker_face,
                      linewidth=1.6 + 1.6 * covered_by, markersize=6 + 4 * covered_by, label=label)
            if np.isfinite(values).all():
                axes.fill(closed_angles, closed_values, color=styles[setting]["color"], alpha=0.12)
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
            f"Measured on: {describe_environments(groups)}. Hollow markers: a seed diverged. "
            + coincidence_note(coinciding, "on every axis"),
        )
        figure.subplots_adjust(bottom=0.2)
        _save(figure, out_png, out_pdf, dpi)
    return PlotResult(figure, axes, data)


# ---------------------------------------------------------------------------------------------------------------
# Downsampling


def downsampling(summary: pd.DataFrame, dataset: str, model: str, out_png, out_pdf,
                 settings: list[str] | None = None, dpi: int = DPI) -> PlotResult:
    """Test accuracy against the downsampling factor S (log2 axis), one line per setting.

    The line joins the per-scale means in order of S, as measured; the band is mean ± sample std over seeds
    (drawn where two or more seeds finished). Points where a seed diverged carry an extra ``x`` marker. Each
    setting has its own marker and dash pattern and is drawn slightly offset along S (``x_drawn`` in the data;
    the tick marks stay at the measured S), so that lines with equal values stay visible side by side; settings
    whose means coincide at every S say so in the legend ("fp32 (= 8bit)") and the footnote.
    """
    groups = group_summary(summary, dataset=dataset)
    groups = groups[groups["model"] == model]
    if settings is not None:
        groups = groups[groups["setting"].isin(settings)]
    if groups.empty:
        raise ValueError(f"no runs for {dataset}/{model}")
    ordered_settings = order_settings(groups["setting"])
    styles = setting_styles(ordered_settings)
    # Ordered by the x value S only: the measured accuracies are never reordered.
    rows_of = {setting: groups[groups["setting"] == setting].sort_values("scale", kind="stable")
               for setting in ordered_settings}
    curves = {setting: (rows["scale"].astype(int).to_numpy(), rows["accuracy_mean"].astype(float).to_numpy())
              for setting, rows in rows_of.items()}
    coinciding = coinciding_settings(curves)
    # How S was applied (pooled then upsampled, or a smaller input) is recorded per run as run.downsample_mode; the
    # runs at S = 1 record "none" (their images are used as they are).
    runs = summary[(summary["dataset"].astype(str) == str(dataset)) & (summary["model"] == model)]
    runs = runs[runs["scale"].astype(int) > 1]
    modes = runs["run_downsample_mode"].dropna().astype(str).unique() if "run_downsample_mode" in runs else []
    downsample_modes = ", ".join(sorted(modes)) if len(modes) else "not recorded"
    scales = sorted({int(s) for s in groups["scale"]})
    plotted = []
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(6.5, 4.8))
        axes = figure.add_subplot()
        for index, setting in enumerate(ordered_settings):
            rows = rows_of[setting]
            x, mean = curves[setting]
            # Settings spread symmetrically around the measured S; multiplicative because the axis is log2.
            x_drawn = x * 2.0 ** (DODGE_LOG2_STEP * (index - (len(ordered_settings) - 1) / 2))
            std = rows["accuracy_std"].astype(float).to_numpy()
            n = rows["accuracy_n"].astype(int).to_numpy()
            label = (f"{coincidence_label(setting, coinciding)} "
                     f"(n = {'/'.join(str(v) for v in sorted(set(n)))} seeds)")
            axes.plot(x_drawn, mean, **styles[setting], label=label)
            band = np.isfinite(std)
            if band.any():
                axes.fill_between(x_drawn, np.where(band, mean - std, np.nan), np.where(band, mean + std, np.nan),
                                  color=styles[setting]["color"], alpha=0.18, linewidth=0)
            diverged = rows["n_diverged"].to_numpy() > 0
            if diverged.any():
                axes.plot(x_drawn[diverged], mean[diverged], linestyle="none", marker="x", markersize=10,
                          color=styles[setting]["color"])
            plotted.append(rows[["setting", "scale", "accuracy_mean", "accuracy_std", "accuracy_n", "n_expected",
                                 "n_diverged"]].assign(x_drawn=x_drawn))
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
            f"Measured on: {describe_environments(groups)}. Settings are drawn slightly apart along S; ticks mark "
            "the measured S. " + coincidence_note(coinciding, "at every S"),
        )
        figure.subplots_adjust(bottom=0.22)
        _save(figure, out_png, out_pdf, dpi)
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


def pareto_scatter(front_df: pd.DataFrame, out_png, out_pdf, dpi: int = DPI) -> PlotResult:
    """Accuracy against energy (or training time when energy is missing), marker area for peak memory.

    Filled markers: non-dominated on all four objectives (accuracy, energy/time, memory, inference time);
    hollow: dominated. The step line is the front of the two plotted objectives only. Pairs drawn at the same
    place (``coincides_with`` in the data) share one label, "a/x = a/y", and the footnote names them.
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
    pair_names = [f"{m}/{s}" for m, s in zip(plottable["model"], plottable["setting"])]
    coinciding = coinciding_points(pair_names, plottable[cost_column].astype(float).to_numpy(),
                                   plottable["accuracy_mean"].astype(float).to_numpy())
    plottable["coincides_with"] = [" ".join(coinciding[name]) for name in pair_names]
    models = list(dict.fromkeys(front_df["model"]))
    palette = matplotlib.colormaps["tab10"]
    colours = {model: palette(index % 10) for index, model in enumerate(models)}
    dataset = str(front_df["dataset"].iloc[0])
    scale = int(front_df["scale"].iloc[0])
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(7.5, 5.5))
        axes = figure.add_subplot()
        labelled = set()
        # Largest markers first, so that a smaller one at the same place is drawn on top of it.
        for _, row in plottable.sort_values("marker_area", ascending=False, kind="stable").iterrows():
            non_dominated = row["non_dominated"] is True or row["non_dominated"] == "True"
            colour = colours[row["model"]]
            axes.scatter(row[cost_column], row["accuracy_mean"], s=row["marker_area"], edgecolors=[colour],
                         facecolors=[colour] if non_dominated else ["none"], linewidths=1.5, zorder=3)
            point_label = f"{row['model']}/{row['setting']}"
            if point_label in labelled:
                continue  # already named in the label of a pair at the same place
            labelled.update([point_label, *coinciding[point_label]])
            point_label = " = ".join([point_label, *coinciding[point_label]])
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
            f"expected runs). Memory: {describe_memory_kinds(front_df)}. "
            f"Measured on: {describe_environments(front_df)}."
        )
        if estimated_energy:
            note += " " + energy_description(front_df)
        note += " " + coincidence_note(coinciding, "in accuracy, 0.1% in the plotted cost", "one label names them all")
        if not left_out.empty:
            note += " Not plotted (value missing): " + ", ".join(
                f"{m}/{s}" for m, s in zip(left_out["model"], left_out["setting"])
            ) + "."
        _footnote(figure, note)
        figure.subplots_adjust(bottom=0.2)
        _save(figure, out_png, out_pdf, dpi)
    return PlotResult(figure, axes, plottable)
