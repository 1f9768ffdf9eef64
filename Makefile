# One-line entry points that work on a fresh machine: each installs what it
# needs into .venv first (Python >= 3.10 and make are the only prerequisites).

PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: install demo test report lint benchmarks gpu-check clean-results

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## demo: the whole workflow on the built-in demo dataset, then its HTML report
demo: install
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

## test: the test suite, including a real run of the workflow on a tiny config
## (--dist loadfile: each test file on one worker, so its workflow runs happen once)
test: install
	$(BIN)/python -m pytest -n $(CORES) --dist loadfile

## report: the reproducibility report of what has been run
report: install
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

## lint: style checks of the code and of the workflow
lint: install
	$(BIN)/ruff check nudiff tests workflow_scripts
	$(BIN)/snakemake --lint

## benchmarks: speed and memory of the hot paths (slow; run on demand)
benchmarks: install
	$(BIN)/python tests/benchmarks/run_all.py

## gpu-check: on one GPU, the tiny workflow on CUDA plus paper-size speed, memory
## and MFU, in under 8 minutes (results/gpu_check/); without a GPU it says so and
## exits 0. make gpu-check GPU_CHECK_ARGS="--device cpu" runs its code on the CPU.
gpu-check: install
	$(BIN)/python tests/benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
