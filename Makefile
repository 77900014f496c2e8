# vgpumon. The README's two commands: run it with `pip install . && vgpumon run --config
# config/vgpumon.yaml` (or `make run`), test it with `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/vgpumon.yaml

.PHONY: run test lint bench demo clean

$(BIN)/vgpumon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Run the daemon in the foreground with the example config.
run: $(BIN)/vgpumon
	$(BIN)/vgpumon run --config $(CONFIG)

# The whole test suite (needs root for the real-process, namespace and kernel tests, gcc for
# the simulated host, and Debian's prometheus and systemd packages: see .ci/run).
test: $(BIN)/vgpumon
	$(BIN)/ruff check vgpumon tests
	$(BIN)/python -m pytest

lint: $(BIN)/vgpumon
	$(BIN)/ruff check vgpumon tests

# Benchmarks: prints a table and writes tests/bench/results.json.
bench: $(BIN)/vgpumon
	$(BIN)/python -m tests.bench

# A simulated Ollama host, vgpumon and Prometheus on 127.0.0.1, to look at without a GPU.
demo: $(BIN)/vgpumon
	$(BIN)/python -m tests.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
