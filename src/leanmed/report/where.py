"""Print where a finished study's tables and figures are (the last step of `make demo`)."""
import sys
from pathlib import Path

SECTIONS = (
    ("Summary of every run", "summary.csv"),
    ("Paper tables (CSV, Markdown, LaTeX)", "tables/*"),
    ("Radar plots", "figures/radar_*.png"),
    ("Downsampling curves", "figures/downsampling_*.png"),
    ("Paired comparisons with fp32", "stats/*.md"),
    ("Pareto fronts", "pareto/*.md"),
    ("Pareto plots", "figures/pareto_*.png"),
    ("CPU deployment", "deployment/*.md"),
    ("Cohort and split reports", "*/*_report.md"),
    ("HTML report", "report.html"),
)


def describe_outputs(results_dir):
    """Lines naming each kind of output under `results_dir` and the files found for it."""
    results = Path(results_dir)
    lines = [f"leanmed results in {results.resolve()}:"]
    for title, pattern in SECTIONS:
        found = sorted(results.glob(pattern))
        lines.append(f"  {title}: " + (", ".join(str(path) for path in found) if found else "(none)"))
    return lines


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    print("\n".join(describe_outputs(args[0] if args else "results")))


if __name__ == "__main__":
    main()
