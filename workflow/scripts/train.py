"""Rule train: one training job (dataset, model, setting, scale, seed) -> metrics.json and friends."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "a")  # append: a resumed job keeps the log of its first attempt
sys.stdout = sys.stderr  # carbontracker prints to stdout
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

# Claim one GPU (a file lock per GPU; CUDA_VISIBLE_DEVICES set to it) before anything starts CUDA: several
# training jobs on one multi-GPU machine then each get their own GPU. Recorded in metrics.json (provenance.gpu_claim).
from leanmed.train.devices import claim_gpu

claim_gpu(snakemake.params.run.get("device", "auto"))

from leanmed.train.job import TrainConfig, exit_without_teardown, run

run(
    TrainConfig(
        split_csv=snakemake.input.split,
        out_dir=snakemake.params.out_dir,
        threads=snakemake.threads,
        # Not a param: how often last.pt is written changes no result, and a changed param reruns every training job.
        checkpoint_interval_s=snakemake.config["training"]["checkpoint_interval_s"],
        **snakemake.params.run,
    )
)
# Everything is written: skip the interpreter's teardown of torch & co (about 1.2 s per job on 2 CPU cores).
exit_without_teardown(0)
