"""Aggregation of crafted metrics.json files into summary.csv, and the paper table built from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from leanmed.report import aggregate, captions, grouping, tables

SEEDS = (1, 10, 100)


def make_metrics(dataset, model, setting, scale, seed, *, accuracy, train_peak_bytes=3e9, time_to_best_s=110.0,
                 inference_seconds=2.5, energy_kwh_pue=0.1, energy_measured=True, diverged=False,
                 paper_flags=None, n_parameters=6_950_000, memory_kind="cuda_max_memory_allocated_bytes",
                 energy_extra=None, step=None):
    """A metrics.json (schema_version 1, docs/architecture.md) with the values a test needs to control."""
    if paper_flags is None:
        paper_flags = tables.FALLBACK_PAPER_FLAGS[setting]
    flag_8bit, flag_amp, flag_half = paper_flags
    metrics = {
        "schema_version": 1,
        "run": {"dataset": dataset, "model": model, "timm_name": model, "setting": setting, "scale": scale,
                "seed": seed},
        "status": "diverged" if diverged else "completed",
        "diverged": diverged,
        "setting": {"name": setting, "device": "cuda", "weight_dtype": "float16" if flag_half else "float32",
                    "autocast_dtype": "float16" if flag_amp else None, "grad_scaler": flag_amp,
                    "optimizer_class": "bitsandbytes.optim.Adam8bit" if flag_8bit else "torch.optim.Adam",
                    "optimizer_state_bits": 8 if flag_8bit else 32,
                    "paper_flags": {"8bit": flag_8bit, "amp": flag_amp, "half": flag_half}},
        "model": {"n_parameters": n_parameters, "n_parameters_millions": n_parameters / 1e6, "image_size": 256,
                  "input_size": 256},
        "training": {"epochs_run": 7, "best_epoch": 2, "early_stopped": True, "max_epochs": 50, "patience": 5,
                     "time_to_best_s": time_to_best_s, "train_time_total_s": 3 * time_to_best_s,
                     "validation_time_total_s": 5.0, "lr": 1e-5, "batch_size": 32, "resumed": False},
        "test": {"checkpoint": "best", "n_images": 100, "threshold": 0.5, "accuracy": accuracy, "roc_auc": 0.8,
                 "sensitivity": 0.6, "specificity": 0.75, "balanced_accuracy": 0.675, "loss": 0.55},
        "memory": {"kind": memory_kind, "train_peak_bytes": train_peak_bytes, "inference_peak_bytes": 1e9,
                   "train_peak_reserved_bytes": None, "inference_peak_reserved_bytes": None,
                   "weights_bytes": 4 * n_parameters, "gradients_bytes": 4 * n_parameters,
                   "optimizer_state_bytes": 8 * n_parameters, "note": "peak after reset_peak_memory_stats"},
        "inference": {"test_set_seconds": inference_seconds, "batch_size": 32, "per_image_latency_ms": 3.0,
                      "repeats": 5, "warmup": 1},
        "energy": {
            "train": {"measured": energy_measured, "energy_kwh": None if energy_kwh_pue is None else
                      energy_kwh_pue / 1.58, "energy_kwh_pue": energy_kwh_pue, "pue": 1.58, "co2eq_g": 0.5 if energy_measured else None,
                      "components": ["gpu", "cpu"], "method": "carbontracker" if energy_measured else
                      "constant power x time", "note": "", **(energy_extra or {})},
            "inference": {"measured": False, "energy_kwh": None, "energy_kwh_pue": None, "pue": 1.58,
                          "co2eq_g": None, "components": [], "method": "", "note": "not measured"},
        },
        "inputs": {"split_csv": "split.csv", "split_csv_sha256": "0" * 64, "images_sha256": "1" * 64,
                   "n_images": 100},
        "provenance": {"host": "node1", "device_name": "NVIDIA H100", "torch": "2.14.1", "timm": "1.0.31",
                       "bitsandbytes": "0.50.2", "cuda": "12.8", "python": "3.11.9", "git_revision": "abc123",
                       "config_hash": "cafe"},
        "definitions": {"test.accuracy": "fraction of test images classified correctly"},
    }
    if step is not None:  # setting.step; metrics.json written before it existed have none (the eager step)
        metrics["setting"]["step"] = step
    return metrics


def test_crafted_metrics_follow_the_contract_schema():
    """The fixtures must stay valid metrics.json files, or these tests would test a different contract."""
    import jsonschema

    schema = json.loads((Path(aggregate.__file__).parents[1] / "schemas" / "metrics.schema.json").read_text())
    for setting in ("fp32", "amp", "half_8bit"):
        for energy, measured, diverged in ((0.1, True, False), (None, False, True)):
            metrics = make_metrics("rsna", "densenet121", setting, 2, 10, accuracy=0.7, energy_kwh_pue=energy,
                                   energy_measured=measured, diverged=diverged)
            jsonschema.validate(metrics, schema)


def write_run(runs_root, metrics):
    run = metrics["run"]
    directory = aggregate.run_dir(runs_root, run["dataset"], run["model"], run["setting"], run["scale"], run["seed"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def expected_runs(models, settings, seeds=SEEDS, dataset="rsna", scale=1):
    return [
        {"dataset": dataset, "model": model, "setting": setting, "scale": scale, "seed": seed}
        for model in models
        for setting in settings
        for seed in seeds
    ]


@pytest.fixture
def crafted_study(tmp_path):
    """densenet121 and vit over fp32 / amp / half_8bit, three seeds, with every kind of incomplete run."""
    runs_root = tmp_path / "runs"
    # densenet121/fp32: three clean seeds.
    for seed, accuracy, peak in zip(SEEDS, (0.70, 0.72, 0.74), (2e9, 3e9, 4e9)):
        write_run(runs_root, make_metrics("rsna", "densenet121", "fp32", 1, seed, accuracy=accuracy,
                                          train_peak_bytes=peak, time_to_best_s=100.0 + (seed == 10) * 10
                                          + (seed == 100) * 20))
    # densenet121/amp: seed 100 never ran; energy not measured at all.
    for seed, accuracy in zip(SEEDS[:2], (0.71, 0.73)):
        write_run(runs_root, make_metrics("rsna", "densenet121", "amp", 1, seed, accuracy=accuracy,
                                          train_peak_bytes=1.5e9, energy_kwh_pue=None, energy_measured=False))
    # densenet121/half_8bit: seed 1 diverged (its best checkpoint still reported).
    for seed, accuracy in zip(SEEDS, (0.60, 0.64, 0.68)):
        write_run(runs_root, make_metrics("rsna", "densenet121", "half_8bit", 1, seed, accuracy=accuracy,
                                          train_peak_bytes=1e9, energy_kwh_pue=0.05, diverged=seed == 1))
    # vit/fp32: seed 100 wrote a truncated file.
    for seed in SEEDS[:2]:
        write_run(runs_root, make_metrics("rsna", "vit", "fp32", 1, seed, accuracy=0.65, n_parameters=116_750_000))
    broken = aggregate.run_dir(runs_root, "rsna", "vit", "fp32", 1, 100)
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text('{"schema_version": 1, "run": ')
    # vit/amp: nothing at all.
    runs = expected_runs(["densenet121", "vit"], ["half_8bit", "amp", "fp32"])
    runs = [run for run in runs if not (run["model"] == "vit" and run["setting"] == "half_8bit")]
    return runs_root, runs


def test_collect_keeps_one_row_per_expected_run_with_its_status(crafted_study):
    runs_root, runs = crafted_study
    summary = aggregate.collect(runs, runs_root)
    assert len(summary) == len(runs) == 15
    status = summary.set_index(["model", "setting", "seed"])["status"]
    assert status[("densenet121", "amp", 100)] == "missing"
    assert status[("densenet121", "half_8bit", 1)] == "diverged"
    assert status[("vit", "fp32", 100)] == "unreadable"
    assert (summary[summary["model"] == "vit"].query("setting == 'amp'")["status"] == "missing").all()
    assert summary["status"].value_counts().to_dict() == {"completed": 9, "missing": 4, "diverged": 1,
                                                          "unreadable": 1}
    reasons = summary.set_index(["model", "setting", "seed"])["status_reason"]
    assert "no metrics.json" in reasons[("densenet121", "amp", 100)]
    assert "metrics.json" in reasons[("vit", "fp32", 100)]
    assert summary["diverged"].tolist().count(True) == 1


def test_collect_flattens_metrics_into_readable_columns(crafted_study):
    runs_root, runs = crafted_study
    summary = aggregate.collect(runs, runs_root)
    for column in ("test_accuracy", "test_roc_auc", "test_sensitivity", "test_specificity", "test_balanced_accuracy",
                   "n_parameters_millions", "epochs_run", "best_epoch", "time_to_best_s", "train_time_total_s",
                   "validation_time_total_s", "memory_kind", "train_peak_bytes", "inference_peak_bytes",
                   "weights_bytes", "gradients_bytes", "optimizer_state_bytes", "inference_test_set_seconds",
                   "per_image_latency_ms", "energy_train_kwh", "energy_train_kwh_pue", "energy_measured", "co2eq_g",
                   "device", "weight_dtype", "autocast_dtype", "optimizer_class", "torch_version", "git_revision",
                   "memory_note", "run_dir"):
        assert column in summary.columns, column
    row = summary.set_index(["model", "setting", "seed"]).loc[("densenet121", "fp32", 10)]
    assert row["test_accuracy"] == 0.72
    assert row["train_peak_bytes"] == 3e9
    assert row["energy_train_kwh_pue"] == 0.1
    assert row["optimizer_class"] == "torch.optim.Adam"
    assert row["energy_components"] == "gpu+cpu"
    assert row["memory_note"] == "peak after reset_peak_memory_stats"
    assert row["paper_flag_amp"] is False or row["paper_flag_amp"] == False  # noqa: E712 (numpy bool)
    missing = summary.set_index(["model", "setting", "seed"]).loc[("densenet121", "amp", 100)]
    assert pd.isna(missing["test_accuracy"])


def test_collect_refuses_a_file_describing_another_run(tmp_path):
    metrics = make_metrics("rsna", "densenet121", "fp32", 1, 2, accuracy=0.7)
    directory = aggregate.run_dir(tmp_path, "rsna", "densenet121", "fp32", 1, 1)
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    summary = aggregate.collect(expected_runs(["densenet121"], ["fp32"], seeds=(1,)), tmp_path)
    assert summary.loc[0, "status"] == "unreadable"
    assert "run.seed" in summary.loc[0, "status_reason"]


def test_paper_table_gives_the_expected_cells(crafted_study):
    runs_root, runs = crafted_study
    table = tables.paper_table(aggregate.collect(runs, runs_root), "rsna")
    assert list(table.columns) == list(tables.PAPER_TABLE_COLUMNS)
    rows = [list(row) for row in table.itertuples(index=False)]
    assert rows == [
        ["densenet121", "fp32", "", "", "", "6.95", "0.720 ± 0.020", "3.00", "110.0", "2.50", "100.0", "3/3", ""],
        ["densenet121", "amp", "", "✓", "", "6.95", "0.720 ± 0.014", "1.50", "110.0", "2.50", "n/m", "2/3",
         "seed 100: missing"],
        ["densenet121", "half_8bit", "✓", "", "✓", "6.95", "0.640 ± 0.040*", "1.00", "110.0", "2.50",
         "50.0", "3/3", "seed 1: diverged"],
        ["vit", "fp32", "", "", "", "116.8", "0.650 ± 0.000", "3.00", "110.0", "2.50", "100.0", "2/3",
         "seed 100: unreadable"],
        ["vit", "amp", "", "✓", "", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "0/3",
         "seed 1: missing; seed 10: missing; seed 100: missing"],
    ]


def test_paper_table_caption_says_what_device_memory_and_runs(crafted_study):
    runs_root, runs = crafted_study
    caption = tables.paper_table(aggregate.collect(runs, runs_root), "rsna").attrs["caption"]
    assert "15 expected runs" in caption and "10 finished" in caption and "4 missing" in caption
    assert "1 unreadable" in caption and "1 diverged" in caption
    assert "torch.cuda.max_memory_allocated" in caption
    assert "cuda (NVIDIA H100)" in caption
    assert "PUE 1.58" in caption and "measured as: carbontracker" in caption and "(est.)" not in caption
    assert "seeds 1, 10, 100" in caption


def test_settings_follow_the_paper_order_then_the_rest():
    settings = ["bf16_true", "half_8bit", "amp", "zeta", "8bit", "fp32", "amp_8bit", "bf16_mixed"]
    assert grouping.order_settings(settings) == ["fp32", "amp", "8bit", "amp_8bit", "half_8bit", "bf16_mixed",
                                                 "bf16_true", "zeta"]
    assert grouping.order_settings(["amp", "baseline"]) == ["baseline", "amp"]


def test_summary_csv_round_trip_gives_the_same_table(crafted_study, tmp_path):
    runs_root, runs = crafted_study
    summary = aggregate.collect(runs, runs_root)
    path = aggregate.write_summary(summary, tmp_path / "out" / "summary.csv")
    reread = aggregate.read_summary(path)
    assert list(reread.columns) == list(summary.columns)
    pd.testing.assert_frame_equal(tables.paper_table(reread, "rsna"), tables.paper_table(summary, "rsna"))


def _unescaped_ampersands(line: str) -> int:
    return len(re.findall(r"(?<!\\)&", line))


def test_written_tables_are_well_formed(crafted_study, tmp_path):
    runs_root, runs = crafted_study
    table = tables.paper_table(aggregate.collect(runs, runs_root), "rsna")
    paths = tables.write_tables(table, tmp_path / "tables" / "rsna", table.attrs["caption"])

    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"], keep_default_na=False, dtype=str), table.astype(str))

    markdown = paths["md"].read_text().splitlines()
    assert markdown[0].startswith("**Table.** Dataset rsna")
    cells_per_line = [len(re.split(r"(?<!\\)\|", line)) - 2 for line in markdown[2:]]
    assert cells_per_line == [len(table.columns)] * (len(table) + 2)
    assert markdown[3] == "|" + "|".join(["---"] * len(table.columns)) + "|"
    assert r"\|W\| (M)" in markdown[2]

    latex = paths["tex"].read_text()
    for token in (r"\begin{table}", r"\caption{", r"\label{tab:rsna}", r"\begin{tabular}{llccc", r"\toprule",
                  r"\midrule", r"\bottomrule", r"\end{tabular}", r"\end{table}", r"\checkmark", r"$\pm$",
                  r"half\_8bit", r"$|W|$ (M)", r"$T_c$ (s)"):
        assert token in latex, token
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert "✓" not in latex and "±" not in latex
    body = latex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == len(table)
    assert all(_unescaped_ampersands(line) == len(table.columns) - 1 for line in body)
    assert all(line.endswith(r"\\") for line in body)
    assert latex.count("{") == latex.count("}")


def test_latex_escape_handles_special_characters():
    assert tables.latex_escape("a_b & 50% $x$ #1 {y} ~ ^ \\") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert tables.latex_escape("✓ 0.7 ± 0.1") == r"\checkmark{} 0.7 $\pm$ 0.1"


def test_write_tables_refuses_a_table_without_caption(tmp_path):
    with pytest.raises(ValueError, match="caption"):
        tables.write_tables(pd.DataFrame({"a": [1]}), tmp_path / "t")


def test_format_number_keeps_small_values_readable():
    assert [tables.format_number(v) for v in (361.27, 6.6, 0.0123, 0.0, float("nan"))] == [
        "361.3", "6.60", "0.0123", "0", "n/a"]


def test_energy_cell_labels_estimates_and_partial_measurements():
    group = pd.Series({"n_finished": 3, "energy_n": 2, "energy_n_estimated": 1, "energy_wh_mean": 12.345})
    assert tables.format_energy(group) == "12.3 (est.) (2/3 seeds)"
    assert tables.format_energy(pd.Series({"n_finished": 3, "energy_n": 0})) == "n/m"
    assert tables.format_energy(pd.Series({"n_finished": 0, "energy_n": 0})) == "n/a"


def _step(requested, applied, not_applied=None):
    """A setting.step block as leanmed.train.settings.StepOptions.record() writes it."""
    label = "eager (paper)" if not applied else "tuned (" + ", ".join(
        captions.STEP_OPTION_NAMES[name] for name in applied) + ")"
    return {"requested": requested, "applied": applied, "not_applied": not_applied or {}, "label": label}


TUNED = ["channels_last", "cudnn_benchmark", "fused_adam"]


@pytest.mark.parametrize(
    "steps, expected",
    [
        (None, "training step: eager (paper);"),
        ({setting: _step([], []) for setting in ("fp32", "amp", "half_8bit")}, "training step: eager (paper);"),
        ({"fp32": _step(TUNED, TUNED), "amp": _step(TUNED, TUNED),
          "half_8bit": _step(TUNED, TUNED[:2], {"fused_adam": "the setting's optimiser is bitsandbytes"})},
         "training step: tuned (channels_last, cudnn.benchmark, fused Adam for fp32, amp only);"),
        ({setting: _step(TUNED, ["channels_last"], {"cudnn_benchmark": "CUDA only", "fused_adam": "CUDA only"})
          for setting in ("fp32", "amp", "half_8bit")},
         "training step: tuned (channels_last); requested, not applied on this device: cudnn.benchmark (CUDA only), "
         "fused Adam (CUDA and torch Adam only);"),
        ({"fp32": _step(TUNED, TUNED), "amp": _step([], []), "half_8bit": _step([], [])},
         "training step: MIXED across rows (some ran the eager step): tuned (channels_last, cudnn.benchmark, "
         "fused Adam);"),
    ],
)
def test_caption_says_which_training_step_ran(tmp_path, steps, expected):
    import jsonschema

    schema = json.loads((Path(aggregate.__file__).parents[1] / "schemas" / "metrics.schema.json").read_text())
    runs_root = tmp_path / "runs"
    for setting in ("fp32", "amp", "half_8bit"):
        for seed in SEEDS:
            metrics = make_metrics("rsna", "densenet121", setting, 1, seed, accuracy=0.7,
                                   step=None if steps is None else steps[setting])
            jsonschema.validate(metrics, schema)
            write_run(runs_root, metrics)
    runs = expected_runs(["densenet121"], ["fp32", "amp", "half_8bit"]) + expected_runs(["vit"], ["fp32"])  # vit: missing
    summary = aggregate.collect(runs, runs_root)
    reread = aggregate.read_summary(aggregate.write_summary(summary, tmp_path / "summary.csv"))
    caption = tables.paper_table(reread, "rsna").attrs["caption"]
    assert expected in caption, caption
    assert "time ratios between settings depend on the step" in caption
    if steps is not None and steps["fp32"]["requested"]:
        assert summary.loc[summary["setting"] == "fp32", "step_requested"].iloc[0] == "+".join(TUNED)
