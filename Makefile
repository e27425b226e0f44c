# The two commands of README.md: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test install export docs-check
$(BIN)/kdnb: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/kdnb

install: $(BIN)/kdnb

demo: install
	$(BIN)/kdnb demo --out runs/demo

test: install
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest -q -n 2 tests

export: install
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean
