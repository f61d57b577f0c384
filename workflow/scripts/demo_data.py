"""Rule demo_data: generated RSNA (train.csv + DICOMs) and LIDC (pickle) data in the real formats."""
import logging
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per encoded tile otherwise

from leanmed.demo import generate_lidc, generate_rsna

demo = snakemake.params.demo
rsna_dir = Path(snakemake.output.rsna_csv).parent  # train.csv and train_images/ beside it: the Kaggle layout
frame = generate_rsna(
    rsna_dir,
    n_patients=demo["rsna"]["patients"],
    image_shape=(demo["rsna"]["height"], demo["rsna"]["width"]),
    seed=demo["seed"],
    # Every transfer syntax found in the real RSNA data, plus RLE.
    transfer_syntaxes=("jpeg2000_lossless", "jpeg_lossless_sv1", "explicit_vr_little", "rle_lossless"),
)
logging.info("RSNA: %d images of %d patients in %s", len(frame), frame["patient_id"].nunique(), rsna_dir)
summary = generate_lidc(
    snakemake.output.lidc_pickle,
    n_patients=demo["lidc"]["patients"],
    patches_per_patient=demo["lidc"]["patches_per_patient"],
    seed=demo["seed"],
)
logging.info("LIDC: %s", summary)
