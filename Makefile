# Podium: the two commands of README.md are `make run` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run serve test check lint layers typecheck protos check-protos buf-lint unit integration node-deps node-test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the demo: example agents + Podium on the embedded PostgreSQL + one run (Ctrl-C to stop)
run: $(STAMP)
	$(BIN)/podium demo

## serve: Podium alone on the embedded PostgreSQL (Ctrl-C to stop)
serve: $(STAMP)
	$(BIN)/podium serve

## test: every check CI runs: lint, types, layering, contracts, generated code, tests
test: $(STAMP) check node-deps
	$(BIN)/pytest -q
	cd clients/node && npm test

## check: fast static checks
check: $(STAMP) lint layers typecheck check-protos buf-lint check-config-docs

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
	npx --yes @bufbuild/buf@1.57.0 lint

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

## node-deps: clients/node's packages (package-lock.json), also used by the Python
## conformance test (tests/integration/test_conformance.py runs the Node agent)
node-deps:
	cd clients/node && npm ci --no-audit --no-fund

## node-test: the Node.js agent and client (clients/node) against a live podium serve
node-test: $(STAMP) node-deps
	cd clients/node && npm test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache clients/node/node_modules

## check-config-docs: docs/configuration.md matches server/config.py (regenerate with
## .venv/bin/python scripts/gen_config_docs.py)
check-config-docs: $(STAMP)
	$(BIN)/python scripts/gen_config_docs.py --check
