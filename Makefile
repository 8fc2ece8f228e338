# tlexp: `make help` lists the targets.
PYTHON ?= python3.11
VENV ?= .venv
# The torch build to install first (override e.g. TORCH_SPEC="torch torchvision" or a CPU index).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
export WANDB_SILENT ?= true

.PHONY: help setup data train test test-fast clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install tlexp with its dev tools

data: ## install the default dataset (Debian package dataset-fashion-mnist) where apt is available
	@if [ -d $(FASHION_MNIST) ]; then echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; \
	else echo "no apt-get: tlexp will download Fashion-MNIST into data/ when online"; fi

train: setup data ## set up, then run the default experiment (python train.py)
	$(BIN)/python train.py

test: setup data ## set up, then run the whole test suite (CPU, ~15 min on 2 cores)
	$(BIN)/pytest -q

test-fast: setup ## the tests that do not start train.py subprocesses
	$(BIN)/pytest -q -m "not slow"

clean: ## remove run outputs (logs/, wandb/), keep .venv and data
	rm -rf logs wandb outputs multirun
