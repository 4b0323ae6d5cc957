# samrt: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samrt-installed
# torch 2.14.1 + torchvision 0.29.1: the pair segment-anything's torchvision import works with here.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH) "numpy<2"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

demo: install
	$(VENV)/bin/samrt demo --out build/demo

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf build .pytest_cache
