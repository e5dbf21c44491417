# brainkit's two commands (README.md):
#   make run    the main job: verify (or generate) data_samples/, then the report's Table 1 against the truth: the quick
#               sweep of the three strategies, their classical twins and the upper bound, tables printed (runs/strategies/)
#   make test   the whole test suite: library == notebooks, clean notebooks, pytest, every notebook executes
# Each one creates the project-local virtual environment .venv on first use (Python >= 3.10 and pip only).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.brainkit-installed
# Jupyter and IPython write runtime and profile files: keep them in the project, never in $HOME.
export JUPYTER_RUNTIME_DIR := $(CURDIR)/$(VENV)/jupyter-runtime
export IPYTHONDIR := $(CURDIR)/$(VENV)/ipython
# The slice cache (brainkit.data) defaults to ~/.cache/brainkit; here it stays in the project (runs/ is ignored).
export BRAINKIT_CACHE ?= $(CURDIR)/runs/cache
export PYTHONDONTWRITEBYTECODE := 1
# pytorch-fid imports torchvision. The registry's torchvision wheel is a CUDA build whose compiled ops do not load
# with the CPU torch that constraints.txt gives on CPU machines. brainkit.metrics then registers placeholder op
# schemas (FID uses none of the ops) when this documented switch is on; with a matching torchvision it does nothing.
export BRAINKIT_TORCHVISION_PLACEHOLDER ?= 1
# OpenMP threads that spin-wait slow torch ~5x when other processes share the cores (bench/README.md, learning curves);
# passive waiting costs nothing when they do not
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test venv export outputs lessons bench help
.DEFAULT_GOAL := help

help:
	@echo "make run    # main job: samples + the report's Table 1 by the truth (quick sweep of the strategies, runs/strategies/)"
	@echo "make test   # the whole test suite"

$(STAMP): settings.ini setup.py constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "brainkit needs Python >= 3.10; set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || { echo "Creating $(VENV) with $(PYTHON) (first run only)"; $(PYTHON) -m venv $(VENV); }
	@echo "Installing brainkit[dev] into $(VENV) (torch pinned by constraints.txt) ..."
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/brainkit samples verify --generate-missing
	# the sweep's status is kept, so that Table 1 is printed from the finished runs even when one run failed
	$(BIN)/brainkit sweep nbs/sweeps/strategies.yaml --workers 2 || status=$$?; \
	$(BIN)/brainkit strategies table runs/strategies || status=$${status:-$$?}; exit $${status:-0}

test: $(STAMP)
	# two test workers, one math thread each: most tests are short, and start-up and waiting dominate a serial run
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n 2 --dist loadfile
	# two notebooks at a time on 2 cores: one math thread each (oversubscribed OpenMP threads spin and slow training ~5x);
	# nbdev's notebook test, the slowest notebooks first (.ci/nbtest.py), so that no long one runs alone at the end
	OMP_NUM_THREADS=1 $(BIN)/python .ci/nbtest.py 2

# --- developer helpers (not part of the two commands) ---
export: $(STAMP)  ## notebooks -> brainkit/, then clean notebooks and rebuild README.md
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python .ci/readme.py

outputs: $(STAMP)  ## execute every notebook in place, so that the committed lessons show their outputs and figures
	# one math thread, as `make test` and bench/seeds.py run them: another thread count rounds differently, and a
	# GAN's outcome then differs (bench/results/seeds.md); so the committed outputs are what nbdev_test computes
	for nb in nbs/[0-9][0-9]_*.ipynb nbs/index.ipynb; do \
	  OMP_NUM_THREADS=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace --log-level WARN $$nb || exit 1; done
	$(BIN)/python .ci/strip_widgets.py nbs/*.ipynb
	$(MAKE) export

lessons: $(STAMP)  ## every lesson notebook, executed with papermill into runs/lessons/
	$(BIN)/brainkit lessons --out runs/lessons

bench: $(STAMP)
	$(BIN)/python bench/run_all.py
