# The two commands of README.md: `make demo` and `make test`. Both create .venv on first use. `make docs` builds the site.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test install export docs gpu-wheels gpu-check
$(BIN)/kdnb: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/kdnb

install: $(BIN)/kdnb

demo: install
	$(BIN)/kdnb demo --out runs/demo

# Two workers with one torch thread each: two threads per process on two cores oversubscribe them, 2-4x slower.
# --dist loadfile keeps a file's tests on one worker, so module fixtures (a trained teacher, the docs site) are built once;
# --no-loadscope-reorder hands out the files in the order tests/conftest.py gives them: the longest first.
# Two nbdev-test processes of about equal length (about 5.5 minutes each on 2 cores): the tutorials that need a teacher (30, 31,
# 34) in one, where they share it (kdnb.train.tutorial_teacher), with 06e and 13; the other notebooks in the other. 06e and 10
# in one process fail in dynamo's guards (each notebook has its own `__main__`), which no kernel of Jupyter or papermill, one
# per notebook, meets.
NB_HALF = ^(06e|13|3[014])
# On a fresh machine the tests' torch.compile runs build hundreds of C++ kernels. Built without SIMD (inductor's VEC_ISA_OK=0)
# and in the process itself (one compile thread: the two test processes already keep both cores busy), they take about a fifth
# less time: the tests check what kdnb asks of the compiler (graphs, guards, training alike), not inductor's vectoriser, and a
# GPU compiles with Triton.
TEST_ENV = OMP_NUM_THREADS=1 TORCHINDUCTOR_VEC_ISA_OK=0 TORCHINDUCTOR_COMPILE_THREADS=1
test: install
	$(TEST_ENV) $(BIN)/nbdev-test --n-workers 0 --file-re '$(NB_HALF)' & half=$$!; \
	$(TEST_ENV) $(BIN)/nbdev-test --n-workers 0 --skip-file-re '^[_.]|$(NB_HALF)'; rest=$$?; \
	wait $$half && exit $$rest
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

export: install
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean

docs: install
	$(BIN)/kdnb docs --out _docs

# The GPU check (README, "GPU"): `make gpu-wheels` here downloads, at .venv's versions, the wheels a GPU machine with
# PyTorch but no fastai lacks (.ci/gpu-packages.txt) into .whl/; carry .whl/ there and run `make gpu-check REPORT=DIR`.
REPORT ?= gpu-report
gpu-wheels: install
	PATH=$(abspath $(BIN)):$$PATH ../shared/tools/gpu-wheels .whl $$(grep -v '^#' .ci/gpu-packages.txt)

gpu-check:
	bash .ci/gpu-check $(REPORT)
