# Quick start: `make demo` (the stack on loopback, one image) and `make test` (the whole suite).
# `make check` is the fast tier: ruff and the unit tests (no broker, S3, database or worker; none marked slow).
# Everything lives in .venv; torch is pinned first so pip takes the CPU wheel here and the CUDA build on a GPU host.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.sdqueue-installed

.PHONY: install demo check test lint format contract bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[worker,bridge,dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/sdqueue demo

check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not services and not slow" -q

test: install
	$(VENV)/bin/sdqueue broker ensure
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(VENV)/bin/sdqueue broker ensure
	$(PY) -m bench

contract: install
	$(VENV)/bin/sdqueue contract write

clean:
	rm -rf $(VENV) .sdqueue .mypy_cache .ruff_cache .pytest_cache
