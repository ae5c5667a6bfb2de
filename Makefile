# percept: every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.percept-installed
# offline asset folder: PERCEPT_ASSETS if set, else ../shared/assets when present, else the user cache
PERCEPT_ASSETS ?= $(shell [ -d ../shared/assets ] && cd ../shared/assets && pwd)
export PERCEPT_ASSETS
ifeq ($(PERCEPT_ASSETS),)
unexport PERCEPT_ASSETS
endif
QUICK ?=

.DEFAULT_GOAL := help
.PHONY: help setup test lint bench bench-versions bench-gpu gpu-wheels gpu-kit data data-mnist data-celeba data-bapps assets figures \
        reproduce-all reproduce-runtime reproduce-convergence reproduce-vae-mnist reproduce-vae-celeba \
        reproduce-2afc reproduce-adversarial reproduce-dps-analysis data-dps-images clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-24s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (fast when already done)

assets: setup  ## download every weight file into ~/.cache/percept (needs internet)
	$(PY) -m percept.assets fetch

test: setup  ## lint, then the whole test suite (uses PERCEPT_ASSETS, else fetches the assets)
	$(VENV)/bin/ruff check .
	@if [ -z "$$PERCEPT_ASSETS" ]; then $(PY) -m percept.assets fetch --skip-missing; fi
	$(VENV)/bin/pytest -q

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

bench: setup  ## speed of every metric beside L2 and the peer packages, as ratios
	$(PY) benchmarks/bench.py $(if $(QUICK),--quick,)

bench-versions: setup  ## CPU speed of this checkout against BASE (a git revision), side by side: make bench-versions BASE=b97de10
	$(PY) benchmarks/bench_versions.py --base $(or $(BASE),b97de10)

bench-gpu:  ## on a GPU machine (its own python and torch, no venv, no network): CUDA vs CPU, bench, runtime rows
	bash benchmarks/bench_gpu.sh

gpu-wheels:  ## download the peer packages bench-gpu needs into .whl/ (for a GPU machine without network)
	bash benchmarks/gpu_kit.sh wheels

gpu-kit:  ## everything a lent GPU machine needs for bench-gpu (.whl/, .gpu/): PERCEPT_ASSETS=... [ORIGINAL_REPO=...]
	bash benchmarks/gpu_kit.sh

data: data-mnist data-celeba data-bapps  ## download every dataset (MNIST, CelebA, BAPPS: about 8 GB)

data-mnist: setup
	$(PY) data/download_mnist.py

data-celeba: setup
	$(PY) data/download_celeba.py

data-bapps: setup  ## BAPPS 2AFC + JND (6.6 GB, resumable)
	$(PY) data/download_bapps.py

figures: setup  ## execute every notebook (they read results/ only)
	$(PY) -m percept.notebooks notebooks/*.ipynb experiments/*/analysis.ipynb

reproduce-runtime: setup  ## runtime and memory of every loss (about 15 min on 2 CPU cores; FULL=1 for the paper's protocol)
	$(PY) experiments/runtime/run.py $(if $(FULL),--full,) $(if $(QUICK),--quick,)
	$(PY) -m percept.notebooks experiments/runtime/analysis.ipynb
	$(PY) experiments/runtime/run.py --summary

reproduce-convergence: setup  ## convergence speed of each loss
	@$(MAKE) --no-print-directory _run EXP=convergence

# the VAE drivers never replace an earlier run silently: make regenerates (--overwrite), RESUME=1 continues
VAE_RUN = $(if $(RESUME),--resume,--overwrite)

reproduce-vae-mnist: setup  ## MNIST VAEs with the paper's set of losses (RESUME=1 continues an interrupted run)
	@$(MAKE) --no-print-directory _run EXP=vae_mnist ARGS="$(VAE_RUN)"

reproduce-vae-celeba: setup  ## CelebA VAEs with the paper's set of losses (RESUME=1 continues an interrupted run)
	@$(MAKE) --no-print-directory _run EXP=vae_celeba ARGS="$(VAE_RUN)"

reproduce-2afc: setup  ## BAPPS 2AFC / JND agreement of every metric
	@$(MAKE) --no-print-directory _run EXP=2afc

reproduce-adversarial: setup  ## adversarial robustness of every metric
	@$(MAKE) --no-print-directory _run EXP=adversarial_robustness

data-dps-images: setup  ## Sjögren et al.'s 90 test images into data/dps_images (checked by git blob id)
	$(PY) data/download_dps_images.py

reproduce-dps-analysis: setup  ## Sjögren et al.'s DPS analysis (their images after make data-dps-images, else stand-ins)
	@$(MAKE) --no-print-directory _run EXP=dps_analysis ARGS="--random-fallback"

reproduce-all: reproduce-runtime reproduce-convergence reproduce-vae-mnist reproduce-vae-celeba reproduce-2afc reproduce-adversarial reproduce-dps-analysis  ## every experiment

_run:
	@if [ ! -f experiments/$(EXP)/run.py ]; then \
		echo "experiments/$(EXP): not implemented yet"; exit 2; fi
	$(PY) experiments/$(EXP)/run.py $(if $(QUICK),--quick,) $(if $(EPOCHS),--epochs $(EPOCHS),) $(ARGS)
	@if [ -f experiments/$(EXP)/analysis.ipynb ]; then $(PY) -m percept.notebooks experiments/$(EXP)/analysis.ipynb; fi

clean:  ## remove the virtual environment and caches (not downloaded data)
	rm -rf $(VENV) .pytest_cache .ruff_cache lib/*.egg-info
