# vgpumon. The README's two commands: run it with `pip install . && vgpumon run --config
# config/vgpumon.yaml` (or `make run`), test it with `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/vgpumon.yaml

.PHONY: run test test-unit test-deps lint bench demo clean

$(BIN)/vgpumon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Run the daemon in the foreground with the example config.
run: $(BIN)/vgpumon
	$(BIN)/vgpumon run --config $(CONFIG)

# The whole test suite, on a fresh Debian machine too: scripts/install-test-deps first
# installs the system packages the tests use (prometheus, systemd, gcc, Python's headers, ...;
# as root, or it names what is missing and stops), then ruff, mypy and every test. Root is
# needed for the real-process, namespace and kernel tests. The venv is made after the
# packages, since on Debian `python3 -m venv` needs python3-venv.
test: test-deps
	@$(MAKE) --no-print-directory $(BIN)/vgpumon
	$(BIN)/ruff check vgpumon tests
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The fast tier, for the edit-test loop: the pure and unit tests (parsers, config, the
# exporter on fixtures, the doctor's units, ...), about 20 s on 2 cores, no root or system
# packages needed. Left out, marked `slow` by path in tests/conftest.py: the suites that start
# real processes, servers or simulated hosts, touch the kernel, or fuzz at length (bench,
# e2e, faults, fuzz, ops, simhost, soak, web, the doctor's scenarios). `make test` runs all.
test-unit: $(BIN)/vgpumon
	$(BIN)/python -m pytest -m "not slow"

test-deps:
	PYTHON=$(PYTHON) scripts/install-test-deps

lint: $(BIN)/vgpumon
	$(BIN)/ruff check vgpumon tests
	$(BIN)/mypy

# Benchmarks: prints a table and writes tests/bench/results.json.
bench: $(BIN)/vgpumon
	$(BIN)/python -m tests.bench

# A simulated Ollama host, vgpumon and Prometheus on 127.0.0.1, to look at without a GPU.
demo: $(BIN)/vgpumon
	$(BIN)/python -m tests.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
