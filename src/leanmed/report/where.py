"""Print where a finished study's tables and figures are, then its findings in words (the last step of `make demo`)."""
import sys
from pathlib import Path

from leanmed.report.findings import FINDINGS_FILE

SECTIONS = (
    ("Summary of every run", "summary.csv"),
    ("Findings in words", FINDINGS_FILE),
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


def findings_lines(results_dir):
    """The findings text that rule findings wrote (what the results say), or a line saying it is not there yet."""
    path = Path(results_dir) / FINDINGS_FILE
    if not path.is_file():
        return ["", f"No findings yet ({path} is written once every comparison with fp32 is)."]
    return ["", *path.read_text().rstrip("\n").splitlines()]


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    results_dir = args[0] if args else "results"
    print("\n".join(describe_outputs(results_dir) + findings_lines(results_dir)))


if __name__ == "__main__":
    main()
