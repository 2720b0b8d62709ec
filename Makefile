# confbus: one front door. `make` (or `make help`) lists the targets.
# Everything runs from .venv, which `make install` creates and keeps in step with pyproject.toml.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make up` needs only what the stack runs on; tests, linters and benchmarks need the
# dev tools too. Installing the dev tools also satisfies the runtime stamp (it is a superset), so
# switching between `make test` and `make up` installs only what is missing.
RUNTIME_INSTALLED := $(VENV)/.installed-runtime
INSTALLED := $(VENV)/.installed-dev
ARGS ?=
PYTEST_ARGS ?=

# Installed, services/ is the package `confbus` and schemas/ is `confbus.schemas`
# (pyproject's package-dir). mypy cannot follow the editable install's import hook, so it reads
# them through build/typecheck/confbus: a folder of links that names them as they install.
TYPECHECK_ROOT := build/typecheck/confbus

.PHONY: help venv install up test test-slow etcd-server nftables chromium asyncapi-spec prometheus reliability reliability-slow lint typecheck bench bench-smoke screenshots clean distclean

help: ## list the targets
	@echo "confbus — make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z_-]*:.*## / {name[++n] = $$1; text[n] = $$2; \
	  if (length($$1) > w) w = length($$1)} \
	  END {for (i = 1; i <= n; i++) printf "  %-*s  %s\n", w, name[i], text[i]}' $(MAKEFILE_LIST)

venv: $(BIN)/python ## create .venv (python3 -m venv) if it is missing

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(INSTALLED) ## install confbus and its dev tools into .venv (pip install -e '.[dev]')

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@ $(RUNTIME_INSTALLED)

$(RUNTIME_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

up: $(RUNTIME_INSTALLED) ## run the whole stack here; installs only what it runs on (ARGS='--nats-port 4333')
	$(BIN)/confbus up $(ARGS)

# $(call apt-install,COMMANDS,PACKAGES,TESTS[,APT FLAGS]): unless all of COMMANDS are on PATH
# (bash's `command -v` fails if one is missing), install PACKAGES with apt-get if we are root;
# otherwise say that the TESTS tests will be skipped.
define apt-install
@if command -v $(1) >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(2) with apt-get"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $(4) $(2) >/dev/null; \
	else \
	  echo "$(firstword $(1)) is not installed and we are not root: the $(3) tests will be skipped"; \
	  echo "(sudo apt-get install $(2), then make test again)"; \
	fi
endef

etcd-server: ## install etcd-server (apt-get) for the etcd tests, if etcd is missing and we are root
	$(call apt-install,etcd,etcd-server,etcd)

nftables: ## install nftables (apt-get) for the partition tests, if missing and we are root
	$(call apt-install,nft,nftables,partition)

chromium: ## install Debian's chromium (apt-get) for the console's browser tests, if missing and we are root
	$(call apt-install,chromium,chromium,browser)

asyncapi-spec: install ## fetch the AsyncAPI 3.0.0 JSON Schema (npm pack) that schemas/asyncapi.json is checked against
	@$(BIN)/python -m tests.contract.asyncapi_spec >/dev/null

prometheus: ## install prometheus and prometheus-alertmanager (apt-get) for the health tests, if missing and root
	$(call apt-install,prometheus prometheus-alertmanager,prometheus prometheus-alertmanager,Prometheus,--no-install-recommends)

# The fault tests write their figures; `make test` keeps them out of the tracked results.
FAULT_TMP := $(shell mktemp -d -u /tmp/confbus-fault-results.XXXXXX)

test: install etcd-server nftables chromium asyncapi-spec prometheus ## run the tests (PYTEST_ARGS='-k replay -x')
	CONFBUS_FAULT_RESULTS=$(FAULT_TMP) $(BIN)/pytest $(PYTEST_ARGS)

test-slow: install etcd-server nftables ## run only the slow fault loops (marked slow)
	CONFBUS_FAULT_RESULTS=$(FAULT_TMP) $(BIN)/pytest -m slow $(PYTEST_ARGS)

reliability: install etcd-server nftables ## the fault scenarios (CI sample); rewrite RELIABILITY.md
	$(BIN)/pytest tests/faults tests/model tests/ha/test_ha_faults.py $(PYTEST_ARGS)
	$(BIN)/python -m tests.faults.report --check

reliability-slow: install etcd-server nftables ## the long fault loops too; rewrite RELIABILITY.md
	$(BIN)/pytest -m 'slow or not slow' tests/faults tests/model tests/ha/test_ha_faults.py $(PYTEST_ARGS)
	$(BIN)/python -m tests.faults.report --check

lint: install ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy strict over services, schemas, tests and benchmarks
	@rm -rf $(TYPECHECK_ROOT) && mkdir -p $(TYPECHECK_ROOT)
	@for f in services/*; do ln -s "$(CURDIR)/$$f" "$(TYPECHECK_ROOT)/$${f#services/}"; done
	@ln -s "$(CURDIR)/schemas" "$(TYPECHECK_ROOT)/schemas"
	$(BIN)/mypy

bench: install ## the benchmarks, side by side with raw baselines (ARGS passed on)
	@if [ -f benchmarks/__main__.py ]; then \
	  $(BIN)/python -m benchmarks $(ARGS); \
	else \
	  echo "no benchmarks yet: benchmarks/__main__.py is not there"; \
	fi

bench-smoke: install ## a quick run of the benchmarks, to see that they work
	@if [ -f benchmarks/__main__.py ]; then \
	  $(BIN)/python -m benchmarks --smoke $(ARGS); \
	else \
	  echo "no benchmarks yet: benchmarks/__main__.py is not there"; \
	fi

screenshots: install chromium ## PNGs of the console's main pages, from a real stack, into docs/
	$(BIN)/python -m tests.console.screenshots docs/console

clean: ## remove caches and build output (keeps .venv and the .confbus data dir)
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too (the .confbus data dir stays)
	rm -rf $(VENV)
