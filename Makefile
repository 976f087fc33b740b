# liverank: two commands are the whole set-up on a fresh machine (Python 3.11+ and make):
#   make test   lint, types, layering, Dockerfile lint, tests
#   make demo   the live-loop demo: a model learning while it serves, fresh vs frozen (about 2 minutes)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip reads constraints.txt: it pins torch to the CPU build on disk (never a multi-GB CUDA download).
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
# Re-install when the dependencies or the C kernel change. torch comes from the train extra (CPU build on disk).
STAMP := $(VENV)/.installed-dev

.PHONY: test demo cluster lint typecheck layers dockerlint pytest clean bench-store

$(STAMP): pyproject.toml setup.py constraints.txt store/_kernel.c serving/_rank_body.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing liverank (serving + dev extras) into $(VENV)"
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[dev,bench,train,loadtest]'
	@touch $@

test: lint typecheck layers dockerlint pytest

# The live-loop demo: a trainer learning from a synthetic short-video stream, a fresh and a frozen server, a dashboard.
# About 2 minutes on 2 cores; results (summary.json, auc.png) in results/demo-<time>/.
demo: $(STAMP)
	$(BIN)/liverank demo

# Replicated mode on loopback: a 3-node NATS JetStream cluster and 3 replicas with a synthetic bundle (Ctrl-C stops).
cluster: $(STAMP)
	$(BIN)/liverank cluster up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

dockerlint: $(STAMP)
	$(BIN)/hadolint Dockerfile

# pytest includes tests/packaging: it builds the wheel (gcc and the Python headers compile the C kernel) and installs
# it, with the train extra, into a fresh venv through pip's configured index and constraints.txt (about a minute).
pytest: $(STAMP)
	$(BIN)/pytest -q

bench-store: $(STAMP)
	$(BIN)/liverank bench store --json results/bench-store.json

clean:
	rm -rf $(VENV) build *.egg-info store/*.so serving/*.so .pytest_cache .mypy_cache .ruff_cache

# make loadtest: headless locust against a server it starts itself (or HOST=http://...), results in
# results/loadtest-<timestamp>/. Options: DURATION (s), USERS (ranking users), SPAWN_RATE, HOST, SHAPE=step|spike.
.PHONY: loadtest
loadtest: $(STAMP)
	@$(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('locust') is None)" \
		|| $(PIP_INSTALL) -e '.[dev,bench,loadtest]'
	$(BIN)/python -m liverank.loadtest.run
