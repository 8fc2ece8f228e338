# tlexp: `make help` lists the targets.
# The interpreter for .venv: PYTHON=... wins; otherwise the first of PYTHON_CANDIDATES on PATH that
# runs and is 3.10-3.13 (the Pythons torch wheels exist for). Looked up only when a recipe needs it,
# so `make help` / `make clean` work without any Python.
PYTHON_CANDIDATES := python3.11 python3.12 python3.13 python3.10 python3
PYTHON_SUPPORTED := import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))
NO_PYTHON := no supported Python (3.10-3.13) found on PATH; tried: $(PYTHON_CANDIDATES). \
  Install one, or name it: make setup PYTHON=/path/to/python3.12
ifeq ($(strip $(PYTHON)),)
PYTHON = $(eval PYTHON := $(shell for p in $(PYTHON_CANDIDATES); do \
  command -v $$p >/dev/null 2>&1 && $$p -c '$(PYTHON_SUPPORTED)' >/dev/null 2>&1 && { echo $$p; break; }; \
  done))$(or $(PYTHON),$(error $(NO_PYTHON)))
endif
VENV ?= .venv
# The torch build to install first: the pinned local wheel where one lies ready for $(PYTHON), else
# the regular `torch torchvision` wheels. A TORCH_SPEC you give (e.g. TORCH_SPEC="torch torchvision"
# or a CPU index) is installed as is, with no fallback.
ifeq ($(origin TORCH_SPEC),undefined)
TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
TORCH_FALLBACK := torch torchvision
endif
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
CHROMIUM := /usr/bin/chromium
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q
export WANDB_SILENT ?= true

.PHONY: help python setup data browser train lint test test-fast clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

python: ## print the interpreter that `make setup` creates .venv with (override: PYTHON=...)
	@$(PYTHON) -c 'import sys; print(sys.argv[1] + ":", sys.version.split()[0], sys.executable)' '$(PYTHON)'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)$(if $(TORCH_FALLBACK), || { \
	  echo "tlexp: $(TORCH_SPEC) is not installable for $(PYTHON); installing the regular wheels: pip install $(TORCH_FALLBACK)"; \
	  $(BIN)/pip install $(TORCH_FALLBACK); })
	$(BIN)/pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install tlexp with its dev tools

data: ## install the default dataset (Debian package dataset-fashion-mnist) where apt is available
	@if [ -d $(FASHION_MNIST) ]; then echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif command -v apt-get >/dev/null; then $(APT_INSTALL) dataset-fashion-mnist; \
	else echo "no apt-get: tlexp will download Fashion-MNIST into data/ when online"; fi

browser: ## install headless Chromium (Debian package chromium) for the report page's browser tests, where apt is available
	@if [ -x $(CHROMIUM) ]; then echo "Chromium: $(CHROMIUM)"; \
	elif command -v apt-get >/dev/null; then $(APT_INSTALL) chromium; \
	else echo "no apt-get: the report page's browser tests skip (no $(CHROMIUM))"; fi

train: setup data ## set up, then run the default experiment (python train.py)
	$(BIN)/python train.py

lint: setup ## ruff check . (pyflakes and pycodestyle errors and warnings, lines up to 140 columns)
	$(BIN)/ruff check .

test: setup data browser lint ## set up, lint, then run the whole test suite (CPU, on pytest-xdist workers: one per core and one more)
	$(BIN)/pytest -q

test-fast: setup ## the tests that run in the pytest process: no train.py, server, browser or worker started, no study trained
	$(BIN)/pytest -q -m "not slow"

clean: ## remove run outputs (logs/, wandb/), keep .venv and data
	rm -rf logs wandb outputs multirun
