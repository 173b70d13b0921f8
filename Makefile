# `make test` and `make demo` work from a fresh clone: they create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# `make test` spreads the test files over TEST_PROCESSES pytest processes (pytest-xdist; a file
# stays in one process, so its module fixtures start once) with TEST_THREADS torch threads each:
# on 2 cores, 2 processes of 1 thread took 481-540 s where one process took 862 s, and 2
# processes of 2 threads 843 s (their threads spin against each other). 3 processes: 501 s.
# TEST_PROCESSES=0: one process.
TEST_PROCESSES ?= 2
TEST_THREADS ?= 1

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this exact build lies on the machine's disk (a bare `torch` would
	# download several GB).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[all,test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

test: $(STAMP)
	bash scripts/test_services.sh
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m cli.demo

bench: $(STAMP)
	$(PY) bench/losses.py --quick
	$(PY) bench/train_step.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
