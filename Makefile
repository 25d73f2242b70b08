# Podium: the two commands of README.md are `make run` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every Python package of the dev environment, pinned (`make lock` writes it).
LOCK := requirements/dev.lock
# The runtime packages only, at the dev lock's versions (the container image installs it).
RUNTIME_LOCK := requirements/runtime.lock
UV_VERSION := 0.13.8
# pytest-xdist workers of `make test` / `make unit` / `make integration` (0: serial,
# auto: one per core). The tests mostly wait on servers and Postgres, so on the 2-core
# CI machine 4 workers measured fastest (about 1 min, 1.4 min with 2, 4-6 min serial).
TEST_WORKERS ?= 4
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS)
BUF := npx --yes @bufbuild/buf@1.57.0
RELEASED_PROTOS = $(shell ls protos/released/*.binpb | sort -V | tail -n 1)

.PHONY: run serve test check lint layers typecheck protos check-protos buf-lint buf-breaking buf-baseline check-config-docs unit integration node-deps node-test lock bench bench-lock clean

# The pinned packages, then Podium itself without resolving anything more; `pip check`
# fails when pyproject.toml needs a package the lock lacks (run `make lock`).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

## lock: re-pin requirements/dev.lock (and runtime.lock, its runtime part) from pyproject.toml (keeps current pins where they
## still fit; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest allowed)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--annotation-style line $(LOCK_FLAGS) -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
		--annotation-style line --constraint $(LOCK) -o $(RUNTIME_LOCK)

## bench: the side-by-side benchmark (bench/sidebyside.py: Podium, DBOS, LangGraph and the
## ceilings) in its own venv .venv-bench with the bench-only extras of requirements/bench.lock;
## options in BENCH_ARGS, e.g. make bench BENCH_ARGS="--rounds 1 --systems podium,queue"
BENCH_VENV := .venv-bench
BENCH_LOCK := requirements/bench.lock
BENCH_ARGS ?=
$(BENCH_VENV)/.installed: pyproject.toml $(BENCH_LOCK)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r $(BENCH_LOCK)
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(BENCH_VENV)/bin/python -m pip check
	touch $(BENCH_VENV)/.installed

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/sidebyside.py $(BENCH_ARGS)

## bench-lock: re-pin requirements/bench.lock (Podium's dependencies + the bench extra)
bench-lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra bench --universal --python-version 3.11 \
		--annotation-style line $(LOCK_FLAGS) -o $(BENCH_LOCK)

## run: the demo: example agents + Podium on the embedded PostgreSQL + one run (Ctrl-C to stop)
run: $(STAMP)
	$(BIN)/podium demo

## serve: Podium alone on the embedded PostgreSQL (Ctrl-C to stop)
serve: $(STAMP)
	$(BIN)/podium serve

## test: every check CI runs: lint, types, layering, contracts, generated code, tests
test: $(STAMP) check node-deps
	$(PYTEST)
	cd clients/node && npm test

## check: fast static checks
check: $(STAMP) lint layers typecheck check-protos buf-lint buf-breaking check-config-docs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## layers: the import contracts of [tool.importlinter] in pyproject.toml (import-linter)
layers: $(STAMP)
	$(BIN)/python scripts/lint_imports.py

typecheck: $(STAMP)
	$(BIN)/python scripts/typecheck.py

## protos: regenerate generated/ from protos/
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)
	scripts/check_generated.sh

buf-lint:
	$(BUF) lint

## buf-breaking: protos/ must not break the contract of the last release, a buf image
## in protos/released/ (the highest version there)
buf-breaking:
	$(BUF) breaking --against $(RELEASED_PROTOS)

## buf-baseline: at a release, store its contract: make buf-baseline VERSION=v0.2.0
buf-baseline:
	@test -n "$(VERSION)" || { echo "usage: make buf-baseline VERSION=vX.Y.Z"; exit 2; }
	$(BUF) build --exclude-source-info -o protos/released/$(VERSION).binpb

unit: $(STAMP)
	$(PYTEST) tests/unit

integration: $(STAMP)
	$(PYTEST) tests/integration

## node-deps: clients/node's packages (package-lock.json), also used by the Python
## conformance test (tests/integration/test_conformance.py runs the Node agent)
node-deps:
	cd clients/node && npm ci --no-audit --no-fund

## node-test: the Node.js agent and client (clients/node) against a live podium serve
node-test: $(STAMP) node-deps
	cd clients/node && npm test

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache clients/node/node_modules

## check-config-docs: docs/configuration.md matches server/config.py (regenerate with
## .venv/bin/python scripts/gen_config_docs.py)
check-config-docs: $(STAMP)
	$(BIN)/python scripts/gen_config_docs.py --check
