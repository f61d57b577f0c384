"""Rule train: one training job (dataset, model, setting, scale, seed) -> metrics.json and friends."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "a")  # append: a resumed job keeps the log of its first attempt
sys.stdout = sys.stderr  # carbontracker prints to stdout
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

from leanmed.train.loop import TrainConfig, run

run(
    TrainConfig(
        split_csv=snakemake.input.split,
        out_dir=snakemake.params.out_dir,
        threads=snakemake.threads,
        **snakemake.params.run,
    )
)
