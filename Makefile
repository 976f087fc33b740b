# liverank: two commands are the whole set-up on a fresh machine (Python 3.11+ and make):
#   make test   lint, types, layering, Dockerfile lint, tests
#   make demo   the live-loop demo (arrives with the trainer; see README)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip reads constraints.txt: it pins torch to the CPU build on disk (never a multi-GB CUDA download).
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
# Re-install when the dependencies or the C kernel change. torch comes from the train extra (CPU build on disk).
STAMP := $(VENV)/.installed-dev

.PHONY: test demo lint typecheck layers dockerlint pytest clean bench-store

$(STAMP): pyproject.toml setup.py constraints.txt store/_kernel.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing liverank (serving + dev extras) into $(VENV)"
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[dev,bench,train,loadtest]'
	@touch $@

test: lint typecheck layers dockerlint pytest

demo:
	@echo "make demo: the live-loop demo (trainer + fresh and frozen servers + dashboard) is not built yet;"
	@echo "it arrives with the trainer (issue 4). Today: make test, and liverank serve (see README.md)."
	@exit 1

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

dockerlint: $(STAMP)
	$(BIN)/hadolint Dockerfile

pytest: $(STAMP)
	$(BIN)/pytest -q

bench-store: $(STAMP)
	$(BIN)/liverank bench store --json results/bench-store.json

clean:
	rm -rf $(VENV) build *.egg-info store/*.so .pytest_cache .mypy_cache .ruff_cache
