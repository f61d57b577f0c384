# Quick start: `make demo` (the demo study end to end) and `make test` (the test suite).
# Each target sets up .venv on first use (Python 3.11-3.13; about 6 GB, torch is a CUDA build that also runs on CPU).
# The first of python3.11, python3.12, python3.13, python3 that is 3.11-3.13 (override: make test PYTHON=/path/python).
PYTHON ?= $(shell for candidate in python3.11 python3.12 python3.13 python3; do \
	$$candidate -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null \
	&& echo $$candidate && break; done)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.leanmed-installed
SNAKEMAKE := $(BIN)/snakemake

.PHONY: setup demo test test-fast lint benchmarks clean-demo gpu-check status

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "leanmed needs Python 3.11, 3.12 or 3.13 and found none \
	(python3.11, python3.12, python3.13, python3 on PATH): install one, e.g. 'apt install python3.12', or give it: \
	make $(MAKECMDGOALS) PYTHON=/path/to/python3.12" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

demo: setup
	$(SNAKEMAKE) --profile profiles/demo
	$(SNAKEMAKE) --profile profiles/demo --report results/report.html
	@$(BIN)/python -m leanmed.report.where results

# The whole chain on one GPU (densenet121, both datasets, 128 px, the five paper settings): <= 5 minutes on an
# H100-class GPU; prints peak-memory and step-time ratios per setting. Without a GPU it says so at once.
gpu-check: setup
	$(BIN)/python -m leanmed.report.gpu_check --require-gpu
	$(SNAKEMAKE) --profile profiles/gpu-check
	$(SNAKEMAKE) --profile profiles/gpu-check --report results/gpu-check/report.html
	@$(BIN)/python -m leanmed.report.gpu_check results/gpu-check

# Where a study stands (finished / running / waiting / failed / diverged runs, hours spent and left), also while it
# runs: `make status`, or `make status STATUS=--profile profiles/demo` for the demo study.
status: setup
	@$(BIN)/python -m leanmed.study.status $(STATUS)

# One pytest worker per CPU (pytest-xdist); tests sharing a module's study run in one worker (tests/conftest.py).
# A single test or file: .venv/bin/python -m pytest tests/test_loop.py (serial).
test: setup
	$(BIN)/python -m pytest -n auto --dist loadgroup

# Unit tests only (no Snakemake runs): about a minute.
test-fast: setup
	$(BIN)/python -m pytest -n auto --dist loadgroup -m "not integration"

lint: setup
	$(SNAKEMAKE) --lint --configfile profiles/demo/demo-study.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

benchmarks: setup
	$(BIN)/python benchmarks/optimizer_state.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/data_loading.py
	$(BIN)/python benchmarks/dicom_to_png.py
	$(BIN)/python benchmarks/dag_build.py
	$(BIN)/python benchmarks/checkpoint_cost.py --dir results/benchmarks
	$(BIN)/python benchmarks/gpu_settings.py

clean-demo:
	rm -rf data/demo results logs .snakemake
