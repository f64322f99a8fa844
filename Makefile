# Two entry points for a fresh machine: `make lab` (the whole lab, a report) and `make test`.
# Both create .venv and install the pinned dependencies (requirements.lock) first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Local copies of data that cannot be downloaded here (CIFAR-10, ascent, photos) may lie in a sibling
# shared/ folder; any variable already set by the user wins.
SHARED ?= ../shared
SHARED_ABS := $(abspath $(SHARED))
DATA_ENV := CNNLAB_CIFAR10=$${CNNLAB_CIFAR10:-$(if $(wildcard $(SHARED)/datasets/cifar-10-binary-lossy.tar.xz),$(SHARED_ABS)/datasets/cifar-10-binary-lossy.tar.xz,)} \
	CNNLAB_PHOTOS=$${CNNLAB_PHOTOS:-$(if $(wildcard $(SHARED)/photos),$(SHARED_ABS)/photos,)} \
	CNNLAB_RESNET50_WEIGHTS=$${CNNLAB_RESNET50_WEIGHTS:-$$(bash scripts/fetch_resnet_weights.sh || true)}
TEST_ENV := $(DATA_ENV) CNNLAB_SHARED=$${CNNLAB_SHARED:-$(SHARED_ABS)} CNNLAB_THREADS=$${CNNLAB_THREADS:-1}

.PHONY: setup lab test lint docs clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lab: $(STAMP)
	@if [ -f $(SHARED)/datasets/ascent.dat ]; then bash scripts/seed_scipy_cache.sh $(SHARED)/datasets/ascent.dat; fi
	$(DATA_ENV) $(BIN)/cnnlab lab $(ARGS)

test: $(STAMP)
	bash scripts/install_chromium.sh
	$(BIN)/ruff check cnnlab tests benchmarks
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site
	$(TEST_ENV) $(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cnnlab tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/ruff format --check cnnlab tests benchmarks

docs: $(STAMP)
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache
