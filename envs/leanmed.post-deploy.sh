#!/usr/bin/env bash
# Snakemake runs this inside the freshly created conda environment, from the workflow's working directory (the
# clone's root): install leanmed itself, whose dependencies leanmed.yaml already pinned.
set -euo pipefail
python -m pip install --no-deps -e .
