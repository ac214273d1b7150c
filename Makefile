# make demo: query a simulated POWER host end to end.  make test: the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CC ?= cc
BUILD := build

.PHONY: demo test lint docs bench c lab wheel-check clean hosts-index

# An editable install that starts fast (editable_mode=strict: a tree of links under build/,
# no import hook), redone when a source file is added or pyproject.toml changes.  Its one
# informational notice ("Editable installation ... auxiliary directory") is filtered; any
# other build warning shows.
SOURCES := $(wildcard kvmsim/*.py kvmsim/*/*.py kvmsim/*/*.c kvmsim/*/*/*.c kvmsim/hosts/*.toml client/*.py)
$(STAMP): pyproject.toml $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' \
		$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kvm-compat-caps --sim powervm-p11
	$(BIN)/kvmsim matrix

# the whole suite on both cores (pytest-xdist): the plugin's tests run under xdist with it
test: $(STAMP) lint docs
	$(BIN)/python -m pytest -n 2

# the docs site (mkdocs.yml), strict: a broken link or anchor, or a stale kvmsim.x.y name, fails
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check kvmsim client tests benchmarks tools
	$(BIN)/ruff format --check kvmsim client tests benchmarks tools
	$(BIN)/mypy

bench: $(STAMP) c
	$(BIN)/python benchmarks/bench.py --json bench.json

# a wheel, installed into a fresh venv, used from outside the checkout
wheel-check: $(STAMP)
	PYTHON=$(BIN)/python tools/wheel_check.sh

# boot real ppc64le kernels under QEMU (fetched into ~/.cache/kvmsim/lab), record, verify, and
# ask each 20,000 fuzz cases (seed 0) replayed on the simulator
lab: $(STAMP)
	$(BIN)/kvmsim lab --fuzz 20000
	$(BIN)/kvmsim lab --qemu

# the built-in profiles' parse, read at start-up instead of importing tomllib (a test checks it is fresh)
hosts-index: $(STAMP)
	$(BIN)/python -m kvmsim.kernel.profile
	$(BIN)/ruff format -q kvmsim/kernel/_hosts.py

# the preload shim and the C example client (kvmsim run also builds the shim on demand)
c: $(BUILD)/kvmsim_shim.so $(BUILD)/kvm_compat_caps

$(BUILD)/kvmsim_wire.h: $(STAMP) kvmsim/intercept/wire.py kvmsim/intercept/channel.py kvmsim/preload/shimdefs.py
	mkdir -p $(BUILD)
	$(BIN)/python -m kvmsim.preload.shimdefs > $@

$(BUILD)/kvmsim_shim.so: $(wildcard kvmsim/preload/shim/*.c) kvmsim/preload/shim/shim.h $(BUILD)/kvmsim_wire.h
	mkdir -p $(BUILD)
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -fvisibility=hidden -I$(BUILD) -o $@ $(filter %.c,$^) -ldl -lpthread

$(BUILD)/kvm_compat_caps: examples/c/kvm_compat_caps.c examples/c/kvm_compat_caps.h
	mkdir -p $(BUILD)
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

clean:
	rm -rf $(VENV) $(BUILD) .pytest_cache .mypy_cache .ruff_cache
