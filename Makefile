# make demo: query a simulated POWER host end to end.  make test: the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CC ?= cc
BUILD := build

.PHONY: demo test lint bench c lab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
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

bench: $(STAMP) c
	$(BIN)/python -m kvmsim.bench

# boot real ppc64le kernels under QEMU (fetched into ~/.cache/kvmsim/lab), record, verify
lab: $(STAMP)
	$(BIN)/kvmsim lab

# the preload shim and the C example client (kvmsim run also builds the shim on demand)
c: $(BUILD)/kvmsim_shim.so $(BUILD)/kvm_compat_caps

$(BUILD)/kvmsim_shim.so: kvmsim/shim/kvmsim_shim.c
	mkdir -p $(BUILD)
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -ldl -lpthread

$(BUILD)/kvm_compat_caps: client/c/kvm_compat_caps.c client/c/kvm_compat_caps.h
	mkdir -p $(BUILD)
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

clean:
	rm -rf $(VENV) $(BUILD) .pytest_cache .mypy_cache .ruff_cache
