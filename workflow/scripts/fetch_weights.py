"""Rule fetch_weights: one model's pretrained weights into the cache (training.weights_dir), with its manifest."""
import logging
import sys

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(message)s",
    handlers=[logging.FileHandler(snakemake.log[0]), logging.StreamHandler(sys.stderr)],
)

from leanmed.train.weights import fetch_weights

fetch_weights(snakemake.wildcards.model, snakemake.params.weights_dir, log=logging.getLogger("fetch_weights").info)
