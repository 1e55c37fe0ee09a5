# Every target sets up what it needs: a virtualenv in .venv with the project installed (editable).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-slow test-unit test-bf16 clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

run: $(STAMP)  ## train on the embedded synthetic data set (extra Hydra overrides: make run ARGS="model=resnet18")
	$(BIN)/python -m mlabel_exp.run $(ARGS)

# The suite runs in TEST_PROCS processes (pytest-xdist) of one thread each. One after another its tests keep about one
# core busy (process start-ups, imports, tiny models). loadgroup: the tests of a module that share a module-scoped run
# go to one process (tests/conftest.py groups them), so the run is trained once; every other test goes to whichever
# process is free.
TEST_PROCS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_PROCS) --dist loadgroup

# The whole suite as on a CPU without bfloat16 instructions (float32: the same on every CPU, tests/conftest.py), then
# the precision-sensitive tests as on a CPU with them (bfloat16 autocast, emulated where the CPU lacks it).
test: $(STAMP)  ## the suite, integration tests included, the slow ones left out; more processes: TEST_PROCS=8
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-bf16

# A real SIGTERM and requeue, submitit and joblib launchers, two DDP processes, an MLflow tracking server and model
# server, a wheel installed into a fresh virtualenv, the three ImageNet architectures: each of them end to end. CI
# (.ci/run) runs them before make test.
test-slow: $(STAMP)  ## the slow end-to-end tests (about 6 minutes on 2 cores)
	$(PYTEST) -m slow $(PYTEST_ARGS)

# Only the files that hold such tests are collected, each file in one process: their runs trained once per module.
PRECISION_FILES = $(shell grep -l "mark.precision" tests/test_*.py)

test-bf16: $(STAMP)  ## the tests marked precision, as on a CPU with bfloat16 instructions
	MLABEL_EXP_CPU_BF16=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_PROCS) --dist loadfile -m precision \
		$(PRECISION_FILES) $(PYTEST_ARGS)

test-unit: $(STAMP)  ## seconds: everything but the tests that train or start processes
	$(PYTEST) -m "not integration" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
