# Two commands a new user needs: `make demo` and `make test`. Each creates .venv and installs into it
# if needed (a stamp file makes the second run quick).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS ?= constraints.txt
# make test runs the test files on this many processes (pytest-xdist; a file's tests stay together, so its
# module fixtures are built once): 2 halves the suite on a 2-core machine, most of it waiting on subprocesses
TEST_WORKERS ?= 2

.PHONY: install demo test test-slow lint bench clean-data

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[extract,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/layerlake demo executor=ray

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[bench]'
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/query.py

clean-data:
	rm -rf data
