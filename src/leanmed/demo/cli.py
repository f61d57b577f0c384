"""``python -m leanmed.demo``: write the generated RSNA or LIDC lookalike from the command line."""

from __future__ import annotations

import argparse

from leanmed.demo.lidc import generate_lidc
from leanmed.demo.rsna import TRANSFER_SYNTAX_UIDS, generate_rsna




def main(argv=None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m leanmed.demo", description="Generated data in the formats of the real datasets."
    )
    commands = parser.add_subparsers(dest="dataset", required=True)

    rsna = commands.add_parser("rsna", help="write train.csv and train_images/ of an RSNA lookalike")
    rsna.add_argument("out_dir")
    rsna.add_argument("--patients", type=int, default=40)
    rsna.add_argument("--height", type=int, default=512, help="image rows in pixels")
    rsna.add_argument("--width", type=int, default=416, help="image columns in pixels")
    rsna.add_argument("--seed", type=int, default=0)
    rsna.add_argument(
        "--transfer-syntaxes",
        default="jpeg2000_lossless,explicit_vr_little,rle_lossless",
        help=f"comma-separated, cycled over images; from {','.join(TRANSFER_SYNTAX_UIDS)}",
    )
    rsna.add_argument("--followup-fraction", type=float, default=0.35)

    lidc = commands.add_parser("lidc", help="write an LIDC-IDRI lookalike pickle")
    lidc.add_argument("out_path")
    lidc.add_argument("--patients", type=int, default=20)
    lidc.add_argument("--patches", type=int, default=6, help="patches per patient")
    lidc.add_argument("--seed", type=int, default=0)
    lidc.add_argument("--patch-size", type=int, default=128, help="patch side in pixels")
    lidc.add_argument(
        "--borderline-fraction", type=float, default=0.0, help="share of 1- and 2-rater nodules of the borderline look"
    )

    args = parser.parse_args(argv)
    if args.dataset == "rsna":
        table = generate_rsna(
            args.out_dir,
            n_patients=args.patients,
            image_shape=(args.height, args.width),
            seed=args.seed,
            transfer_syntaxes=tuple(s.strip() for s in args.transfer_syntaxes.split(",") if s.strip()),
            followup_fraction=args.followup_fraction,
        )
        birads_counts = table.drop_duplicates("patient_id")["BIRADS"].value_counts(dropna=False).to_dict()
        print(
            f"wrote {len(table)} images of {table['patient_id'].nunique()} patients to {args.out_dir} "
            f"(patients by BI-RADS: {birads_counts})"
        )
    else:
        summary = generate_lidc(
            args.out_path,
            n_patients=args.patients,
            patches_per_patient=args.patches,
            seed=args.seed,
            patch_size=args.patch_size,
            borderline_fraction=args.borderline_fraction,
        )
        print(
            f"wrote {summary['n_patches']} patches to {summary['path']} "
            f"(by number of raters: {summary['n_by_raters']})"
        )
    return 0
