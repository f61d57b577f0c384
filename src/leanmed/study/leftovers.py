"""What an earlier, larger study left in results/: files no job of the current study makes.

Snakemake never deletes an output that has left the plan, so after a model, dataset, setting, seed or downsampling
curve is taken out of the config its figures, tables and runs would stand in results/ beside the current ones, and a
reader could take a radar plot of a dropped model for a current result. Rule ``leftovers`` (run last by the default
target) sorts them in two kinds:

- report files (figures, tables, statistics, Pareto fronts, per-model CPU deployment tables and their benchmark files)
  of a dataset, model or curve no longer in the study are deleted: they are made again in seconds if it comes back;
- run folders (and their benchmark files) and a dataset's prepared data are kept, since they may cost hours: no table
  or figure reads them, and putting the run back into the config reuses them when its options, code and data are
  unchanged (otherwise it trains again). They are listed in ``results/leftovers.md``.

It also deletes the HTML report (``results/report.html``, or its .zip) when it is older than a current report file:
``snakemake --report`` is a command of its own, which no rerun makes again, and a report gathered before a change
would show the old figures and tables as the study's. ``make demo`` makes it again after every run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from leanmed.atomic import remove_abandoned_temporaries

#: The names the report rules give their files under results/, one file (or a few, by suffix) per dataset, model or
#: downsampling curve. Only files of these names are ever deleted: a file of the user's own is left where it is.
REPORT_FILE_PATTERNS = (
    "figures/radar_*.*", "figures/downsampling_*.*", "figures/pareto_*.*", "tables/*.*", "stats/*_vs_fp32.*",
    "pareto/*.*", "deployment/models/*/*.csv", "benchmarks/deployment/*/*.tsv",
)

#: Names a dataset folder under results/ can have (the datasets leanmed prepares).
DATASET_FOLDERS = ("rsna", "lidc")

_DEPLOYMENT_BENCHMARKS = Path("benchmarks/deployment")
_DEPLOYMENT_TABLES = Path("deployment/models")


def _product_of(relative: Path) -> Path:
    """The report product a file under results/ belongs to, without suffix: a table's .tex belongs with its .md, a
    figure's .pdf with its .png, a deployment job's benchmark file with that job's table."""
    if relative.parts[:2] == _DEPLOYMENT_BENCHMARKS.parts:
        relative = _DEPLOYMENT_TABLES / relative.relative_to(_DEPLOYMENT_BENCHMARKS)
    return relative.with_suffix("")


def report_leftovers(results_dir: str | os.PathLike, products: Iterable[str | os.PathLike]) -> list[Path]:
    """Files of the report's names (REPORT_FILE_PATTERNS) in ``results_dir`` that belong to none of ``products``
    (the current study's report files; paths outside ``results_dir`` are ignored), sorted."""
    results_dir = Path(results_dir)
    root = results_dir.resolve()
    current = {
        _product_of(Path(path).resolve().relative_to(root)) for path in products if root in Path(path).resolve().parents
    }
    found = {path for pattern in REPORT_FILE_PATTERNS for path in results_dir.glob(pattern) if path.is_file()}
    return sorted(path for path in found if _product_of(path.relative_to(results_dir)) not in current)


def leftover_runs(results_dir: str | os.PathLike, run_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Run folders (runs/<dataset>/<model>/<setting>/s<scale>/seed<seed>) in ``results_dir`` that are not among
    ``run_dirs`` (the current study's), sorted."""
    results_dir = Path(results_dir)
    current = {Path(path).resolve() for path in run_dirs}
    found = (results_dir / "runs").glob("*/*/*/s*/seed*")
    return sorted(path for path in found if path.is_dir() and path.resolve() not in current)


def run_benchmark_file(results_dir: str | os.PathLike, run_dir: Path) -> Path:
    """The Snakemake benchmark file of the training job of one run folder."""
    return Path(results_dir) / "benchmarks" / run_dir.relative_to(results_dir).with_suffix(".tsv")


def leftover_datasets(results_dir: str | os.PathLike, datasets: Iterable[str]) -> list[Path]:
    """Prepared-data folders (results/<dataset>) of datasets leanmed knows that the current study does not have."""
    results_dir, datasets = Path(results_dir), set(datasets)
    return [results_dir / name for name in DATASET_FOLDERS if name not in datasets and (results_dir / name).is_dir()]


#: The names ``snakemake --report`` is given in this project (README, Makefile), relative to results/.
REPORT_NAMES = ("report.html", "report.zip")


def outdated_reports(results_dir: str | os.PathLike, products: Iterable[str | os.PathLike]) -> list[Path]:
    """The reports (REPORT_NAMES) in ``results_dir`` last written before the newest of ``products`` that exists."""
    newest = max((Path(path).stat().st_mtime_ns for path in products if Path(path).is_file()), default=None)
    reports = [Path(results_dir) / name for name in REPORT_NAMES]
    return [path for path in reports if newest is not None and path.is_file() and path.stat().st_mtime_ns < newest]


def remove_files(files: Iterable[Path], root: Path) -> None:
    """Delete ``files``, then the folders below ``root`` this leaves empty. (Not leanmed.data.stale_files: that module
    is in the LIDC patches' code fingerprint, and a change there would mark every patch as out of date.)"""
    folders = set()
    for path in files:
        path.unlink()
        folders.add(path.parent)
    for folder in sorted(folders, key=lambda d: len(d.parts), reverse=True):
        while folder != root and root in folder.parents and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


#: Folders under results/ where a write can be under way while rule leftovers runs: Snakemake writes the options
#: records while it plans, before it takes its lock, so another Snakemake started in this folder may be writing one.
WRITTEN_WHILE_PLANNING = ("options",)


def abandoned_temporaries(results_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of killed writes under results/ (leanmed.atomic) but in WRITTEN_WHILE_PLANNING;
    return them. Rule leftovers runs last, when every other job of its Snakemake run has ended."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    deleted = remove_abandoned_temporaries(results_dir, recursive=False)
    for child in sorted(results_dir.iterdir()):
        if child.is_dir() and child.name not in WRITTEN_WHILE_PLANNING:
            deleted += remove_abandoned_temporaries(child)
    return sorted(deleted)


def tidy_results(
    results_dir: str | os.PathLike,
    products: Iterable[str | os.PathLike],
    run_dirs: Iterable[str | os.PathLike],
    datasets: Iterable[str],
) -> dict[str, list[Path]]:
    """Delete the report leftovers, an outdated report and the temporary files of killed writes, find the kept ones;
    return {"deleted", "outdated_reports", "abandoned_temporaries", "kept_runs", "kept_datasets"}."""
    products = list(products)
    deleted = report_leftovers(results_dir, products)
    remove_files(deleted, Path(results_dir))
    outdated = outdated_reports(results_dir, products)
    remove_files(outdated, Path(results_dir))
    return dict(
        deleted=deleted,
        outdated_reports=outdated,
        abandoned_temporaries=abandoned_temporaries(results_dir),
        kept_runs=leftover_runs(results_dir, run_dirs),
        kept_datasets=leftover_datasets(results_dir, datasets),
    )


def leftovers_markdown(results_dir: str | os.PathLike, found: dict[str, list[Path]], log: str) -> str:
    """results/leftovers.md: what stands in results/ outside the current study. Only that: what a rerun deleted is
    history, which a clean run of the same study would not have, so it goes to the rule's `log` (results/ must be
    what a clean run makes; a probe found this file naming a report.html that a rerun had deleted)."""
    results_dir = Path(results_dir)

    def listed(paths: list[Path], describe=lambda path: "") -> list[str]:
        return [f"- `{path.relative_to(results_dir)}`{describe(path)}" for path in paths] or ["- none"]

    def with_benchmark(run: Path) -> str:
        benchmark = run_benchmark_file(results_dir, run)
        return f" (and `{benchmark.relative_to(results_dir)}`)" if benchmark.is_file() else ""

    lines = [
        "# Files in results/ that the current study does not make",
        "",
        "Everything else under results/ is what the current configuration, data and code produce. No table or figure",
        "reads the runs or data below; putting them back into the config reuses them when their options, code and",
        "data are unchanged, and they can be deleted by hand.",
        "",
        "## Run folders kept, not in the study",
        *listed(found["kept_runs"], with_benchmark),
        "",
        "## Prepared data kept, of datasets not in the study",
        *listed(found["kept_datasets"]),
        "",
        "What a rerun deleted is in the log of rule leftovers, `" + log + "`: report files of datasets, models or",
        "curves no longer in the study, an HTML report gathered before the current results (`snakemake --report",
        f"{results_dir}/report.html` makes it again; `make demo` does), temporary files of writes killed earlier.",
        "",
    ]
    return "\n".join(lines)
