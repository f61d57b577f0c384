"""Rule dicom_to_png: one shard of the RSNA cohort, DICOM -> preprocessed PNG, with a manifest."""
import logging
import sys

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from leanmed.data.convert import convert_shard

manifest = convert_shard(
    snakemake.input.cohort,
    images_dir=snakemake.params.images_dir,
    out_root=snakemake.params.out_root,
    shard=int(snakemake.wildcards.shard),
    n_shards=snakemake.params.n_shards,
    image_size=snakemake.params.image_size,
    bits=snakemake.params.bits,
    path_mode=snakemake.params.path_mode,
    flip_to_left=snakemake.params.flip_to_left,
    preprocessing_code=snakemake.params.preprocessing_code,
    workers=snakemake.threads,
)
manifest.to_csv(snakemake.output.manifest, index=False)
logging.info("shard %s: %s", snakemake.wildcards.shard, manifest["status"].value_counts().to_dict())
