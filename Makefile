# The two commands: `make run` and `make test`. Both create .venv and install what they need.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test lint format migrate clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "teleconsult needs Python 3.11 or newer" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[embedded]'
	@touch $@

# --- fhir validator (issue 14): Medplum's FHIR validator for the tests, from its lock file,
# installed only where node exists and node_modules is missing or older than the lock.
FHIR_VALIDATOR := tools/fhir-validator
FHIR_VALIDATOR_DEPS := $(if $(shell command -v node 2>/dev/null),$(FHIR_VALIDATOR)/node_modules/.package-lock.json)

$(FHIR_VALIDATOR)/node_modules/.package-lock.json: $(FHIR_VALIDATOR)/package-lock.json
	npm ci --prefix $(FHIR_VALIDATOR) --no-audit --no-fund
	@touch $@
# --- end fhir validator ---

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[test]'
	@touch $@ $(VENV)/.run-deps

# `make run` is a try-out on one machine or a LAN: the network test's peer may talk to
# loopback and private addresses there (production allows public ones only; docs/rtc.md).
run: export RTC_ALLOWED_PEER_NETWORKS ?= 127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7
# Group calls (a third person admitted) go through Janus when it is installed (apt: janus).
run: export SFU ?= auto
run: $(VENV)/.run-deps
	$(BIN)/teleconsult serve

migrate: $(VENV)/.run-deps
	$(BIN)/teleconsult migrate

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint $(FHIR_VALIDATOR_DEPS)
	$(BIN)/pytest

format: $(VENV)/.test-deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
