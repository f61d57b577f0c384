"""Files an earlier, larger study left in results/: report files deleted, runs and data kept and listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanmed.study import leftovers


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def results(tmp_path, monkeypatch):
    """results/ of a study that had models a and b on rsna and the dataset lidc; the current one has model a on rsna."""
    monkeypatch.chdir(tmp_path)
    root = Path("results")
    for name in [
        "tables/rsna.md", "tables/rsna.tex", "tables/lidc.md", "stats/rsna_vs_fp32.md", "stats/rsna_vs_fp32.tex",
        "figures/radar_rsna_a.png", "figures/radar_rsna_a.pdf", "figures/radar_rsna_b.png", "figures/radar_rsna_b.pdf",
        "figures/downsampling_rsna_b.png", "deployment/models/rsna/a.csv", "deployment/models/rsna/b.csv",
        "benchmarks/deployment/rsna/a.tsv", "benchmarks/deployment/rsna/b.tsv", "summary.csv",
        "runs/rsna/a/fp32/s1/seed1/metrics.json", "runs/rsna/a/fp32/s1/seed2/metrics.json",
        "runs/rsna/b/fp32/s1/seed1/last.pt", "benchmarks/runs/rsna/b/fp32/s1/seed1.tsv",
        "rsna/images.csv", "lidc/labels.csv", "gpu-check/figures/radar_rsna_b.png", "figures/my_own_plot.png",
    ]:
        touch(root / name)
    products = ["results/tables/rsna.md", "results/stats/rsna_vs_fp32.md", "results/figures/radar_rsna_a.png",
                "results/figures/radar_rsna_a.pdf", "results/deployment/models/rsna/a.csv", "results/summary.csv",
                "resources/weights/a.sha256"]  # a product outside results/ is ignored
    return root, products


def test_report_files_of_what_left_the_study_are_found_by_their_product(results):
    root, products = results
    found = [str(path.relative_to(root)) for path in leftovers.report_leftovers(root, products)]
    # The .tex of a current table and the benchmark file of a current deployment job belong to it; another results
    # folder inside results/ (the GPU check's) is not the study's, nor a file of a name no report rule gives.
    assert found == [
        "benchmarks/deployment/rsna/b.tsv", "deployment/models/rsna/b.csv", "figures/downsampling_rsna_b.png",
        "figures/radar_rsna_b.pdf", "figures/radar_rsna_b.png", "tables/lidc.md",
    ]


def test_runs_and_datasets_outside_the_study_are_found_and_kept(results):
    root, products = results
    found = leftovers.tidy_results(root, products, ["results/runs/rsna/a/fp32/s1/seed1"], ["rsna"])
    assert [str(path.relative_to(root)) for path in found["kept_runs"]] == [
        "runs/rsna/a/fp32/s1/seed2", "runs/rsna/b/fp32/s1/seed1"]
    assert found["kept_datasets"] == [root / "lidc"]
    assert len(found["deleted"]) == 6 and not any(path.exists() for path in found["deleted"])
    # Emptied folders go; kept runs, data, current products and the GPU check's files stay.
    assert not (root / "deployment/models/rsna/b.csv").exists() and (root / "deployment/models/rsna").is_dir()
    for name in ["runs/rsna/b/fp32/s1/seed1/last.pt", "benchmarks/runs/rsna/b/fp32/s1/seed1.tsv", "lidc/labels.csv",
                 "tables/rsna.tex", "figures/radar_rsna_a.pdf", "gpu-check/figures/radar_rsna_b.png",
                 "figures/my_own_plot.png"]:
        assert (root / name).is_file(), name
    text = leftovers.leftovers_markdown(root, found, "logs/report/leftovers.log")
    assert "figures/radar_rsna_b.png" not in text  # what was deleted is history: in the log, not in results/
    assert "- `runs/rsna/b/fp32/s1/seed1` (and `benchmarks/runs/rsna/b/fp32/s1/seed1.tsv`)" in text
    assert "- `runs/rsna/a/fp32/s1/seed2`\n" in text  # no benchmark file: none named
    assert "- `lidc`" in text


def test_a_folder_emptied_by_the_deletion_is_removed_up_to_the_results_folder(tmp_path):
    files = [touch(tmp_path / "results/benchmarks/deployment/lidc/b.tsv")]
    leftovers.remove_files(files, tmp_path / "results")
    assert not (tmp_path / "results/benchmarks").exists() and (tmp_path / "results").is_dir()


def test_nothing_to_report_says_none(tmp_path):
    found = leftovers.tidy_results(tmp_path, [], [], ["rsna", "lidc"])
    assert found == {"deleted": [], "outdated_reports": [], "abandoned_temporaries": [], "kept_runs": [],
                     "kept_datasets": []}
    assert leftovers.leftovers_markdown(tmp_path, found, "logs/report/leftovers.log").count("- none") == 2


def test_a_report_gathered_before_the_current_results_is_deleted_and_one_made_after_them_stays(tmp_path):
    """snakemake --report is a command of its own: a rerun after a change would leave the old report.html (old figures
    and tables) in results/ beside the new files."""
    import os

    root = tmp_path / "results"
    figure, table, report = touch(root / "figures/radar_rsna_a.png"), touch(root / "tables/rsna.md"), touch(
        root / "report.html")
    os.utime(table, ns=(1_000, 1_000))
    os.utime(report, ns=(2_000, 2_000))
    os.utime(figure, ns=(3_000, 3_000))  # the figure was redone after the report was made
    products = [str(figure), str(table), str(root / "figures/radar_rsna_a.pdf")]  # the .pdf is not there
    found = leftovers.tidy_results(root, products, [], ["rsna"])
    assert found["outdated_reports"] == [root / "report.html"] and not report.exists()
    text = leftovers.leftovers_markdown(root, found, "logs/report/leftovers.log")
    assert "- `report.html`" not in text and f"snakemake --report\n{root}/report.html` makes it again" in text

    touch(root / "report.html")  # made again after the run: newer than every product
    assert leftovers.tidy_results(root, products, [], ["rsna"])["outdated_reports"] == []
    assert (root / "report.html").exists() and figure.exists() and table.exists()


def test_temporary_files_of_killed_writes_are_deleted_and_nothing_else(tmp_path):
    """A write killed by SIGKILL leaves atomic_path's temporary file (found by real runs: a partial best.pt's, a
    PNG's); rule leftovers, which runs when every other job has ended, deletes them; files of other names stay."""
    root = tmp_path / "results"
    abandoned = [touch(root / "runs/rsna/a/fp32/s1/seed1/.best.pt.17594.dba5c6a4.tmp"),
                 touch(root / "rsna/png/images/11685/.788164335.png.18491.c4f36c02.tmp")]
    others = [touch(root / "runs/rsna/a/fp32/s1/seed1/best.pt"), touch(root / "notes/.my.tmp"),
              touch(root / "notes/.plan.txt.12.nothex!.tmp"),
              # An options record another Snakemake may be writing while it plans (before it takes its lock).
              touch(root / "options/train/dataset=rsna.json.4242.0a1b2c3d.tmp".replace("dataset=", ".dataset="))]
    found = leftovers.tidy_results(root, [], [], ["rsna"])
    assert found["abandoned_temporaries"] == sorted(abandoned)
    assert not any(path.exists() for path in abandoned) and all(path.exists() for path in others)
