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

.PHONY: setup demo test test-fast bench learn docs docs-serve dist browser clean help

help:
	@echo "make setup      create $(VENV) and install gridlm with dev extras ($(TORCH))"
	@echo "make demo       train on ARC-AGI-1 for a few minutes on CPU, then validate the checkpoint"
	@echo "make test       the whole test suite (slow multi-process tests included)"
	@echo "make test-fast  the default suite without the slow tests"
	@echo "make bench      benchmarks -> docs/benchmarks.md and benchmarks.json"
	@echo "make learn      train the quickstart recipe for 30 minutes, count solved tasks -> docs/learning.md, learning.json"
	@echo "make docs       the documentation site -> site/ (mkdocs --strict: a broken link or reference fails)"
	@echo "make docs-serve the site on http://127.0.0.1:8000, rebuilt on every change"
	@echo "make dist       sdist and wheel -> dist/ (version from the git tag, see CHANGELOG.md)"
	@echo "make browser    Debian's chromium + chromedriver for the browser test (apt-get, as root; make test runs it)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[dev,docs]'
	@touch $@

demo: setup
	$(PY) -m gridlm.experiments.demo

test: setup browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m gridlm.experiments.benchmark $(BENCH_ARGS)

learn: setup
	$(PY) -m gridlm.experiments.learn $(LEARN_ARGS)

# the site: mkdocs.yml; generated pages and pictures: experiments/docs_site.py
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist .

# the browser test (tests/test_docs_site.py) drives Debian's headless Chromium with its matching
# chromedriver; installed here from Debian's packages (no browser download from anywhere else).
# Without root or apt-get it only says so, and the test skips (it fails under CI=true instead).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make browser: installing Debian's chromium and chromium-driver"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "make browser: chromium/chromedriver missing; as root: apt-get install chromium chromium-driver (the browser test skips without them)"; fi

clean:
	rm -rf runs lightning_logs wandb .pytest_cache site dist
