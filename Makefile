# The two commands of README.md: `make demo` and `make test`. Both create .venv on first use. `make docs` builds the site.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test install export docs
$(BIN)/kdnb: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/kdnb

install: $(BIN)/kdnb

demo: install
	$(BIN)/kdnb demo --out runs/demo

# Two workers with one torch thread each: two threads per process on two cores oversubscribe them, 2-4x slower.
# --dist loadfile keeps a file's tests on one worker, so module fixtures (a trained teacher, the docs site) are built once.
test: install
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

export: install
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean

docs: install
	$(BIN)/kdnb docs --out _docs
