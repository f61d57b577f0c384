"""Rule demo_rsna: a generated RSNA lookalike (train.csv + one DICOM per row) in the Kaggle layout."""
import logging
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per encoded tile otherwise

from leanmed.demo.mammogram import RsnaDifficulty
from leanmed.demo.rsna import generate_rsna, remove_other_dicoms

rsna = snakemake.params.rsna
rsna_dir = Path(snakemake.output.rsna_csv).parent  # train.csv and train_images/ beside it: the Kaggle layout
frame = generate_rsna(
    rsna_dir,
    n_patients=rsna["patients"],
    image_shape=(rsna["height"], rsna["width"]),
    seed=snakemake.params.seed,
    # Every transfer syntax found in the real RSNA data, plus RLE.
    transfer_syntaxes=("jpeg2000_lossless", "jpeg_lossless_sv1", "explicit_vr_little", "rle_lossless"),
    followup_fraction=rsna["followup_fraction"],
    difficulty=RsnaDifficulty(**{knob: rsna[knob] for knob in RsnaDifficulty.__dataclass_fields__}),
    birads_missing_fraction=rsna["birads_missing_fraction"],
    age_range=tuple(rsna["age_range"]),
)
logging.info("RSNA: %d images of %d patients in %s", len(frame), frame["patient_id"].nunique(), rsna_dir)
for path in remove_other_dicoms(rsna_dir, frame):  # of data generated before with other knobs
    logging.info("deleted %s: not in the generated train.csv", path)
