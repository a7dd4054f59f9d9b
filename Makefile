# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell PYENV_VERSION=3.12.1 python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: demo test lint unit emulator bench bench-routing dev-up dev-down clean package tools install openapi

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

## make demo [FAIL=<backend>]: render one video end to end on the local stack
demo: $(STAMP)
	$(BIN)/aiprod demo $(if $(FAIL),--fail $(FAIL))

## make test: lint, type-check and every test (unit, contract, emulator, infra)
test: $(STAMP) lint tools
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/contract

## make openapi: regenerate docs/openapi.json and schemas/job-request.v1.json from the models
openapi: $(STAMP)
	$(BIN)/python -m aiprod.http.openapi

## make install: the project's venv and the tools venv, nothing else (CI's first step)
install: $(STAMP) tools

## make package: dist/function-source.zip, the archive every Cloud Function deploys
package: $(STAMP)
	$(BIN)/python tools/package.py --output dist/function-source.zip

## make tools: checkov (pinned, in its own venv inside .venv: its dependencies clash with ours)
TOOLS := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed-$(shell cat tools/checkov-requirements.txt | sha256sum | cut -c1-12)
tools: $(TOOLS_STAMP)
$(TOOLS_STAMP): tools/checkov-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check -r tools/checkov-requirements.txt
	@rm -f $(TOOLS)/.installed-* && touch $(TOOLS_STAMP)

bench: $(STAMP)
	$(BIN)/python bench/run.py

## make bench-routing: routing policies against the hindsight optimum on bench/routing's traces
bench-routing: $(STAMP)
	$(BIN)/python bench/routing/run.py

dev-up: $(STAMP)
	$(BIN)/aiprod dev up

dev-down: $(STAMP)
	$(BIN)/aiprod dev down

clean:
	rm -rf $(VENV) .aiprod out dist .mypy_cache .ruff_cache .pytest_cache
