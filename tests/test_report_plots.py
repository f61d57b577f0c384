"""Radar, downsampling and Pareto figures: produced, not blank, and drawing the values they were given."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from PIL import Image

from leanmed.report import pareto, plots

SEEDS = (1, 10, 100)


def row(setting, seed, accuracy, *, scale=1, energy_wh=10.0, peak_gb=2.0, inference_s=1.0, status="completed",
        diverged=False, model="densenet121"):
    """One summary.csv row with the columns the figures read."""
    finished = status in ("completed", "diverged")
    return {"dataset": "rsna", "model": model, "setting": setting, "scale": scale, "seed": seed,
            "status": status, "diverged": diverged, "test_accuracy": accuracy if finished else math.nan,
            "energy_train_kwh_pue": None if energy_wh is None or not finished else energy_wh / 1000,
            "energy_measured": energy_wh is not None, "train_peak_bytes": peak_gb * 1e9 if finished else math.nan,
            "inference_test_set_seconds": inference_s if finished else math.nan,
            "train_time_total_s": 100.0 if finished else math.nan,
            "memory_kind": "cpu_peak_rss_bytes", "device": "cpu", "device_name": "test cpu"}


def assert_not_blank(png_path, pdf_path):
    assert png_path.stat().st_size > 5_000 and pdf_path.stat().st_size > 1_000
    assert pdf_path.read_bytes().startswith(b"%PDF")
    pixels = np.asarray(Image.open(png_path).convert("L"), dtype=float)
    assert pixels.std() > 10
    assert (pixels < 250).mean() > 0.02


@pytest.fixture
def radar_summary():
    rows = []
    for seed in SEEDS:
        rows.append(row("fp32", seed, 0.80, energy_wh=100.0, peak_gb=4.0, inference_s=2.0))
        rows.append(row("amp", seed, 0.76, energy_wh=50.0, peak_gb=2.0, inference_s=2.0))
        # 8bit: energy was never measured; seed 1 diverged.
        rows.append(row("8bit", seed, 0.78, energy_wh=None, peak_gb=1.0, inference_s=4.0, diverged=seed == 1,
                        status="diverged" if seed == 1 else "completed"))
        rows.append(row("half_8bit", seed, math.nan, status="missing"))
    return pd.DataFrame(rows)


def test_radar_normalises_so_that_larger_is_better(radar_summary, tmp_path):
    result = plots.radar(radar_summary, "rsna", "densenet121", tmp_path / "radar.png", tmp_path / "radar.pdf")
    assert_not_blank(tmp_path / "radar.png", tmp_path / "radar.pdf")
    data = result.data.set_index("setting")
    assert list(data.index) == ["fp32", "amp", "8bit", "half_8bit"]
    assert data["accuracy_mean_normalised"].loc[["fp32", "amp", "8bit"]].tolist() == pytest.approx(
        [1.0, 0.76 / 0.80, 0.78 / 0.80])
    assert data["energy_wh_mean_normalised"].loc[["fp32", "amp"]].tolist() == pytest.approx([0.5, 1.0])
    assert math.isnan(data.loc["8bit", "energy_wh_mean_normalised"])  # shown as a gap, never invented
    assert data["train_peak_gb_mean_normalised"].loc[["fp32", "amp", "8bit"]].tolist() == pytest.approx(
        [0.25, 0.5, 1.0])
    assert data["inference_test_set_seconds_mean_normalised"].loc[["fp32", "8bit"]].tolist() == pytest.approx(
        [1.0, 0.5])

    legend = [text.get_text() for text in result.axes.get_legend().get_texts()]
    assert legend[0] == "fp32"
    assert "8bit *" in legend[2] and "missing: E training energy" in legend[2]
    assert legend[3] == "half_8bit: no finished run"
    labels = [label.get_text() for label in result.axes.get_xticklabels()]
    assert "50–100 Wh" in labels[1] and "1–4 GB" in labels[2]


def test_downsampling_keeps_measured_order_even_when_not_monotone(tmp_path):
    # Accuracy by scale deliberately not monotone, and rows given in a shuffled scale order.
    accuracy_by_scale = {"fp32": {1: 0.70, 2: 0.75, 4: 0.60, 8: 0.65}, "amp": {1: 0.72, 2: 0.69, 4: 0.71, 8: 0.55}}
    rows = []
    for setting, by_scale in accuracy_by_scale.items():
        for scale in (4, 1, 8, 2):
            for offset, seed in zip((-0.01, 0.0, 0.01), SEEDS):
                rows.append(row(setting, seed, by_scale[scale] + offset, scale=scale,
                                diverged=setting == "amp" and scale == 8 and seed == 1,
                                status="diverged" if setting == "amp" and scale == 8 and seed == 1 else "completed"))
    result = plots.downsampling(pd.DataFrame(rows), "rsna", "densenet121", tmp_path / "ds.png", tmp_path / "ds.pdf")
    assert_not_blank(tmp_path / "ds.png", tmp_path / "ds.pdf")

    lines = {line.get_label().split(" ")[0]: line for line in result.axes.get_lines()
             if not line.get_label().startswith("_")}
    for setting, by_scale in accuracy_by_scale.items():
        # Drawn a few percent off the measured S (dodged per setting), in the measured order.
        assert list(lines[setting].get_xdata()) == pytest.approx([1, 2, 4, 8], rel=0.05)
        assert list(lines[setting].get_ydata()) == pytest.approx([by_scale[s] for s in (1, 2, 4, 8)])
    assert result.axes.get_xscale() == "log"
    bands = [c for c in result.axes.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    fp32 = result.data[result.data["setting"] == "fp32"]
    assert fp32["accuracy_std"].tolist() == pytest.approx([0.01] * 4)
    assert fp32["accuracy_n"].tolist() == [3] * 4
    assert any("diverged" in text.get_text() for text in result.axes.get_legend().get_texts())


def test_pareto_scatter_draws_energy_or_says_it_fell_back(tmp_path):
    rows = []
    for seed in SEEDS:
        rows.append(row("fp32", seed, 0.80, energy_wh=100.0, peak_gb=4.0))
        rows.append(row("amp", seed, 0.79, energy_wh=50.0, peak_gb=2.0))
        rows.append(row("8bit", seed, 0.81, energy_wh=120.0, peak_gb=3.0, inference_s=0.5))
        rows.append(row("fp32", seed, 0.70, energy_wh=80.0, peak_gb=1.0, model="vit"))
    summary = pd.DataFrame(rows)
    front = pareto.pareto_front(summary, "rsna")
    result = plots.pareto_scatter(front, tmp_path / "p.png", tmp_path / "p.pdf")
    assert_not_blank(tmp_path / "p.png", tmp_path / "p.pdf")
    assert "energy" in result.axes.get_title() and "training time" not in result.axes.get_title()
    step = [line for line in result.axes.get_lines() if line.get_label().startswith("front")][0]
    # Two-objective front: amp (cheapest), then fp32, then 8bit (most accurate); vit is beaten by amp.
    assert list(step.get_xdata()) == pytest.approx([50.0, 100.0, 120.0])
    assert list(step.get_ydata()) == pytest.approx([0.79, 0.80, 0.81])

    no_energy = summary.assign(energy_train_kwh_pue=np.where(summary["setting"] == "amp", np.nan,
                                                             summary["energy_train_kwh_pue"]))
    fallback = plots.pareto_scatter(pareto.pareto_front(no_energy, "rsna"), tmp_path / "f.png", tmp_path / "f.pdf")
    assert "training time used instead" in fallback.axes.get_title()
    assert fallback.axes.get_xlabel().startswith("total training time (s)")


# ---------------------------------------------------------------------------------------------------------------
# Settings with equal values: every line stays visible and the legend says which coincide


def legend_texts(axes):
    return [text.get_text() for text in axes.get_legend().get_texts()]


def footnote(result):
    """The figure's footnote as one line (it is wrapped to the figure's width)."""
    return " ".join(text.get_text() for text in result.figure.texts).replace("\n", " ")


def fp32_equal_to_8bit(peak_gb_8bit=4.0):
    """Summary rows where fp32 and 8bit measured the same accuracy and energy, and amp differs."""
    return pd.DataFrame([row(setting, seed, accuracy, energy_wh=energy_wh, peak_gb=peak_gb)
                         for seed in SEEDS
                         for setting, accuracy, energy_wh, peak_gb in (("fp32", 0.80, 100.0, 4.0),
                                                                      ("8bit", 0.80, 100.0, peak_gb_8bit),
                                                                      ("amp", 0.78, 60.0, 2.0))])


def drawn_lines(axes):
    """setting -> its drawn Line2D (legend entries only; helper lines such as diverged markers start with _)."""
    return {line.get_label().split(" ")[0]: line for line in axes.get_lines() if not line.get_label().startswith("_")}


def assert_distinct_styles(lines):
    markers = [line.get_marker() for line in lines]
    dashes = [str(line.get_linestyle()) + str(line._dash_pattern) for line in lines]
    assert len(set(markers)) == len(lines) and len(set(dashes)) == len(lines)


def downsampling_rows(accuracy_by_setting):
    return pd.DataFrame([row(setting, seed, accuracy + offset, scale=scale)
                         for setting, by_scale in accuracy_by_setting.items() for scale, accuracy in by_scale.items()
                         for offset, seed in zip((-0.01, 0.0, 0.01), SEEDS)])


def test_downsampling_keeps_coinciding_settings_visible_and_says_so(tmp_path):
    same = {1: 0.70, 2: 0.68, 4: 0.61}
    summary = downsampling_rows({"fp32": same, "8bit": same, "amp": {1: 0.72, 2: 0.65, 4: 0.60}})
    result = plots.downsampling(summary, "rsna", "densenet121", tmp_path / "ds.png", tmp_path / "ds.pdf")

    lines = drawn_lines(result.axes)
    assert set(lines) == {"fp32", "amp", "8bit"}
    assert_distinct_styles(list(lines.values()))
    # The two equal lines are drawn at different x (dodged), with the same measured y.
    assert list(lines["fp32"].get_ydata()) == pytest.approx(list(lines["8bit"].get_ydata()))
    assert all(x_fp32 != x_8bit for x_fp32, x_8bit in zip(lines["fp32"].get_xdata(), lines["8bit"].get_xdata()))
    assert list(lines["fp32"].get_xdata()) == pytest.approx([1, 2, 4], rel=0.1)

    legend = legend_texts(result.axes)
    assert any(text.startswith("fp32 (= 8bit)") for text in legend)
    assert any(text.startswith("8bit (= fp32)") for text in legend)
    assert any(text.startswith("amp (n = 3 seeds)") for text in legend)  # amp differs: no note
    assert "fp32 and 8bit coincide" in footnote(result)


def test_nearly_equal_settings_coincide_but_different_ones_do_not(tmp_path):
    summary = downsampling_rows({"fp32": {1: 0.70, 2: 0.68}, "8bit": {1: 0.7002, 2: 0.6799},
                                 "amp": {1: 0.70, 2: 0.67}})
    result = plots.downsampling(summary, "rsna", "densenet121", tmp_path / "ds.png", tmp_path / "ds.pdf")
    legend = legend_texts(result.axes)
    assert any(text.startswith("fp32 (= 8bit)") for text in legend)
    assert not any("(= " in text for text in legend if text.startswith("amp"))


def test_downsampling_without_coinciding_settings_has_no_note(tmp_path):
    summary = downsampling_rows({"fp32": {1: 0.70, 2: 0.68}, "amp": {1: 0.71, 2: 0.68}})
    result = plots.downsampling(summary, "rsna", "densenet121", tmp_path / "ds.png", tmp_path / "ds.pdf")
    assert not any("(=" in text for text in legend_texts(result.axes))
    assert "coincide" not in footnote(result)


def test_radar_keeps_coinciding_polygons_visible_and_says_so(tmp_path):
    result = plots.radar(fp32_equal_to_8bit(), "rsna", "densenet121", tmp_path / "r.png", tmp_path / "r.pdf")

    lines = drawn_lines(result.axes)
    assert set(lines) == {"fp32", "amp", "8bit"}
    assert_distinct_styles(list(lines.values()))
    assert list(lines["fp32"].get_ydata()) == pytest.approx(list(lines["8bit"].get_ydata()))
    legend = legend_texts(result.axes)
    assert legend == ["fp32 (= 8bit)", "amp", "8bit (= fp32)"]
    assert "fp32 and 8bit coincide" in footnote(result)


def test_pareto_scatter_names_pairs_drawn_at_the_same_place(tmp_path):
    # 8bit needs less memory than fp32 (a smaller marker at the same place).
    result = plots.pareto_scatter(pareto.pareto_front(fp32_equal_to_8bit(peak_gb_8bit=2.0), "rsna"),
                                  tmp_path / "p.png", tmp_path / "p.pdf")
    labels = [text.get_text() for text in result.axes.texts]
    assert sorted(labels) == ["densenet121/amp", "densenet121/fp32 = densenet121/8bit"]
    assert len(result.axes.collections) >= 3  # one marker per pair, the coinciding ones included
    assert "densenet121/fp32 and densenet121/8bit coincide" in footnote(result)


def test_figures_follow_the_configured_dpi_and_the_same_figure_gives_the_same_bytes(radar_summary, tmp_path):
    """report.dpi was ignored (every PNG came out at 150 dpi, though a changed dpi reran the plots), and each PDF
    carried the time it was saved, so a partial rerun that replotted unchanged data differed from a clean run."""
    sizes = {}
    for dpi in (60, 120):
        plots.radar(radar_summary, "rsna", "densenet121", tmp_path / f"{dpi}.png", tmp_path / f"{dpi}.pdf", dpi=dpi)
        sizes[dpi] = Image.open(tmp_path / f"{dpi}.png").size
    # Twice the dpi, about twice the pixels each way (the tight bounding box rounds text extents per dpi).
    assert [large / small for large, small in zip(sizes[120], sizes[60])] == pytest.approx([2, 2], rel=0.03)

    plots.radar(radar_summary, "rsna", "densenet121", tmp_path / "again.png", tmp_path / "again.pdf", dpi=60)
    assert (tmp_path / "again.pdf").read_bytes() == (tmp_path / "60.pdf").read_bytes()
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "60.png").read_bytes()
