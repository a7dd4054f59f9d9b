# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell PYENV_VERSION=3.12.1 python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: demo test lint unit emulator bench dev-up dev-down clean

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

## make demo [FAIL=<backend>]: render one video end to end on the local stack
demo: $(STAMP)
	$(BIN)/aiprod demo $(if $(FAIL),--fail $(FAIL))

## make test: lint, type-check and every test (unit, contract, emulator)
test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/contract

bench: $(STAMP)
	$(BIN)/python bench/run.py

dev-up: $(STAMP)
	$(BIN)/aiprod dev up

dev-down: $(STAMP)
	$(BIN)/aiprod dev down

clean:
	rm -rf $(VENV) .aiprod out dist .mypy_cache .ruff_cache .pytest_cache
