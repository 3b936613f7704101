# Parley's two set-up commands: `make serve` and `make test`.
# Everything is installed into .venv; llama-cpp-python compiles once (about
# 6 minutes) and pip keeps the built wheel in its cache for later venvs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8321
PYTEST_ARGS ?=

export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test install dev bench lint clean

serve: $(VENV)/.installed-local
	$(BIN)/parley serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed-local

dev: $(VENV)/.installed-dev

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/chat_stream.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-local: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	touch $@ $(VENV)/.installed-local

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
