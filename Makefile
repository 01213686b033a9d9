# gridlm — the two commands the README starts with: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# CPU machines get the CPU build of torch (a local wheel where one lies on disk);
# machines with an NVIDIA GPU get the default (CUDA) build.
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH := $(if $(HAS_GPU),$(TORCH_GPU),$(TORCH_CPU))
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench learn clean help

help:
	@echo "make setup      create $(VENV) and install gridlm with dev extras ($(TORCH))"
	@echo "make demo       train on ARC-AGI-1 for a few minutes on CPU, then validate the checkpoint"
	@echo "make test       the whole test suite (slow multi-process tests included)"
	@echo "make test-fast  the default suite without the slow tests"
	@echo "make bench      benchmarks -> docs/benchmarks.md and benchmarks.json"
	@echo "make learn      train the quickstart recipe for 30 minutes, count solved tasks -> docs/learning.md, learning.json"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(PY) -m gridlm.experiments.demo

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m gridlm.experiments.benchmark $(BENCH_ARGS)

learn: setup
	$(PY) -m gridlm.experiments.learn $(LEARN_ARGS)

clean:
	rm -rf runs lightning_logs wandb .pytest_cache
