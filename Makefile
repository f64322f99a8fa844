# Two entry points for a fresh machine: `make lab` (the whole lab, a report) and `make test`.
# Both create .venv and install the pinned dependencies (requirements.lock) first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared
# Tests read the lossy CIFAR-10 copy and the ascent image from the sibling shared/ folder.
TEST_ENV := CNNLAB_CIFAR10=$${CNNLAB_CIFAR10:-$(abspath $(SHARED))/datasets/cifar-10-binary-lossy.tar.xz} \
	CNNLAB_SHARED=$${CNNLAB_SHARED:-$(abspath $(SHARED))} CNNLAB_THREADS=$${CNNLAB_THREADS:-2}

.PHONY: setup lab test lint bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lab: $(STAMP)
	$(BIN)/cnnlab lab $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check cnnlab tests benchmarks
	$(TEST_ENV) $(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cnnlab tests benchmarks
	$(BIN)/ruff format --check cnnlab tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
