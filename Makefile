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

.PHONY: browser run serve test system-deps chaos check lint layers typecheck protos check-protos buf-lint buf-breaking buf-baseline check-config-docs unit integration node-deps node-test lock release bench bench-lock clean

# The SDK distribution podium-client (clients/python-client/: the generated contracts,
# podium.client, the CLI); the server distribution podium (pyproject.toml) depends on it.
SDK := clients/python-client

# The pinned packages, then Podium itself, both distributions editable (the SDK's
# `podium` package and the server's `podium.server` share one namespace), without
# resolving anything more; `pip check` fails when a pyproject.toml needs a package the
# lock lacks (run `make lock`).
$(STAMP): pyproject.toml $(SDK)/pyproject.toml VERSION $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e $(SDK) -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# podium-client is resolved from this checkout, not from an index, and left out of the
# lock (the STAMP recipe installs it editable).
UV_SDK := --override requirements/sdk-source.txt --no-emit-package podium-client

## lock: re-pin requirements/dev.lock (and runtime.lock, its runtime part) from
## pyproject.toml (keeps current pins where they still fit; `make lock
## LOCK_FLAGS=--upgrade` moves everything to the newest allowed)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml $(UV_SDK) --extra dev --universal \
		--python-version 3.11 --annotation-style line $(LOCK_FLAGS) -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml $(UV_SDK) --universal --python-version 3.11 \
		--annotation-style line --constraint $(LOCK) -o $(RUNTIME_LOCK)

## release: the sdists and wheels of podium-client and podium and the npm tarball
## podium-client into dist/, checked (twine check), with dist/SHA256SUMS
## (scripts/release.py; `--set-version X.Y.Z` sets the one version everywhere)
release: $(STAMP) node-deps
	$(BIN)/python scripts/release.py

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
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e $(SDK) -e .
	$(BENCH_VENV)/bin/python -m pip check
	touch $(BENCH_VENV)/.installed

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/sidebyside.py $(BENCH_ARGS)

## bench-lock: re-pin requirements/bench.lock (Podium's dependencies + the bench extra)
bench-lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml $(UV_SDK) --extra bench --universal \
		--python-version 3.11 --annotation-style line $(LOCK_FLAGS) -o $(BENCH_LOCK)

## run: the demo: example agents + Podium on the embedded PostgreSQL + one run (Ctrl-C to stop)
run: $(STAMP)
	$(BIN)/podium demo

## serve: Podium alone on the embedded PostgreSQL (Ctrl-C to stop)
serve: $(STAMP)
	$(BIN)/podium serve

## browser: Debian's chromium for the console's browser tests (tests/integration/
## test_console_browser.py, which skip without it) and scripts/screenshots.py. Installs
## only when /usr/bin/chromium is missing and apt-get can run as root; retries while
## another apt-get holds the dpkg lock; never fails the build (the tests then skip).
browser:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make browser: no /usr/bin/chromium and no root apt-get: the browser tests will skip"; \
	  exit 0; fi; \
	for try in 1 2 3 4 5 6; do \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    >/dev/null && exit 0; \
	  echo "make browser: apt-get failed (dpkg lock?), retrying in 20 s"; sleep 20; \
	done; echo "make browser: chromium not installed: the browser tests will skip"

## test: every check CI runs: lint, types, layering, contracts, generated code, tests
test: $(STAMP) check node-deps system-deps browser
	$(PYTEST)
	cd clients/node && npm test

## chaos: the chaos suite at full size (tests/chaos: kill -9 / SIGSTOP a replica, crash
## PostgreSQL, kill an agent, restart PgBouncer, fail over the primary, a poison step),
## printing its table; `make test` runs it with PODIUM_CHAOS_RUNS=20
CHAOS_RUNS ?= 200
chaos: $(STAMP) system-deps
	PODIUM_CHAOS_RUNS=$(CHAOS_RUNS) $(BIN)/pytest -q -p no:xdist tests/chaos

## system-deps: the Debian packages some tests run (PgBouncer), installed when missing
system-deps:
	bash scripts/system_deps.sh

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
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache clients/node/node_modules \
		dist *.egg-info $(SDK)/*.egg-info $(SDK)/build

## check-config-docs: docs/configuration.md matches server/config.py (regenerate with
## .venv/bin/python scripts/gen_config_docs.py)
check-config-docs: $(STAMP)
	$(BIN)/python scripts/gen_config_docs.py --check
