"""Rule demo_data: generated RSNA (train.csv + DICOMs) and LIDC (pickle) data in the real formats.

With 2 threads the LIDC pickle is written in a second process while the RSNA DICOMs are written here (the two share no
state; each is deterministic from the seed).
"""
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per encoded tile otherwise

from leanmed.demo import RsnaDifficulty, generate_lidc, generate_rsna

demo = snakemake.params.demo
rsna = demo["rsna"]
lidc_arguments = dict(
    out_path=snakemake.output.lidc_pickle,
    n_patients=demo["lidc"]["patients"],
    patches_per_patient=demo["lidc"]["patches_per_patient"],
    borderline_fraction=demo["lidc"]["borderline_fraction"],
    seed=demo["seed"],
)
with ProcessPoolExecutor(max_workers=1) if snakemake.threads > 1 else nullcontext() as other_process:
    lidc_summary = other_process.submit(generate_lidc, **lidc_arguments) if other_process else None
    rsna_dir = Path(snakemake.output.rsna_csv).parent  # train.csv and train_images/ beside it: the Kaggle layout
    frame = generate_rsna(
        rsna_dir,
        n_patients=rsna["patients"],
        image_shape=(rsna["height"], rsna["width"]),
        seed=demo["seed"],
        # Every transfer syntax found in the real RSNA data, plus RLE.
        transfer_syntaxes=("jpeg2000_lossless", "jpeg_lossless_sv1", "explicit_vr_little", "rle_lossless"),
        followup_fraction=rsna["followup_fraction"],
        difficulty=RsnaDifficulty(**{knob: rsna[knob] for knob in RsnaDifficulty.__dataclass_fields__}),
        birads_missing_fraction=rsna["birads_missing_fraction"],
        age_range=tuple(rsna["age_range"]),
    )
    logging.info("RSNA: %d images of %d patients in %s", len(frame), frame["patient_id"].nunique(), rsna_dir)
    summary = lidc_summary.result() if lidc_summary else generate_lidc(**lidc_arguments)
logging.info("LIDC: %s", summary)
