# Every target works on a fresh machine: it installs what it needs into .venv and calls .venv/bin/... directly.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
UV ?= uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

# `make test PYTEST_ARGS="-k smoke -x"`; two xdist workers by default (one per core).
PYTEST_ARGS ?= -n 2
# `make bench` runs every benchmark in a few minutes (the first run also builds a 1,000,000-posting data set,
# kept for later runs); `make bench BENCH_ARGS="--only ledger.post_serial_tps"` runs one, `BENCH_ARGS=--fresh`
# starts from an empty database. BENCH_SECONDS is how long each timed posting run lasts.
BENCH_ARGS ?=
BENCH_SECONDS ?= 5

.PHONY: install migrate seed run test bench lint lock

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes -r requirements.lock
	$(PIP) install --quiet --no-deps -e .
	@touch $@

migrate: install
	$(BIN)/python manage.py migrate --noinput

# Loads the demo district when the seed_demo command exists; its own errors are not swallowed.
seed: migrate
	@if $(BIN)/python manage.py help seed_demo >/dev/null 2>&1; then \
		$(BIN)/python manage.py seed_demo --if-empty; \
	else \
		echo "seed_demo is not available yet; skipping demo data"; \
	fi

# Django on http://127.0.0.1:8000 plus a Celery worker with embedded beat; Ctrl-C stops both.
run: seed
	scripts/run_dev.sh

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	BENCH_SECONDS=$(BENCH_SECONDS) $(BIN)/python bench/run.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy config ledger custody reconciliation

# uv only compiles the lock; installs use plain pip with --require-hashes.
lock:
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock
