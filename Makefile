# Two commands set everything up on a fresh machine (each creates .venv on first use):
#   make serve   install the serving extra (no torch) and serve the embedded default model
#   make test    install everything (CPU torch via constraints/cpu.txt) and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints/cpu.txt
PYTEST_ARGS ?=

.PHONY: serve test test-slow lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[serve]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[all,test]"
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/mfql-serve $(SERVE_ARGS)

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.dev-installed
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
