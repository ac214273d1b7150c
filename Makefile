# make demo: query a simulated POWER host end to end.  make test: the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kvm-compat-caps --sim powervm-p11
	$(BIN)/kvmsim matrix

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check kvmsim client tests
	$(BIN)/ruff format --check kvmsim client tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m kvmsim.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
