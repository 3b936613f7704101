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

# Root installs system packages directly; anyone else through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: serve test install dev bench lint clean postgresql

serve: $(VENV)/.installed-local
	$(BIN)/parley serve --host $(HOST) --port $(PORT)

# The storage tests start their own throwaway PostgreSQL server from Debian's binaries.
test: $(VENV)/.installed-dev postgresql
	$(BIN)/python -m pytest $(PYTEST_ARGS)

postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends postgresql; }

install: $(VENV)/.installed-local

dev: $(VENV)/.installed-dev

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/chat_stream.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check parley tests bench
	$(BIN)/ruff format --check parley tests bench

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
