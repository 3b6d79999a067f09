# Two commands, each (re)creating the virtual environment when pyproject.toml changed:
#   make demo   synthesize frames, train a few epochs, predict, print run ids and how to open the UI
#   make test   the test suite, less the slow integration tests (servers, team stack, torchrun, browser)
#   make test-integration   those (CI runs both)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-integration bench ui clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m integration

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_cpu.py

ui: $(STAMP)
	$(VENV)/bin/coroseg ui

clean-venv:
	rm -rf $(VENV)
