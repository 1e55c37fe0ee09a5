# Every target sets up what it needs: a virtualenv in .venv with the project installed (editable).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

run: $(STAMP)  ## train on the embedded synthetic data set (extra Hydra overrides: make run ARGS="model=resnet18")
	$(BIN)/python -m mlabel_exp.run $(ARGS)

# The suite runs in TEST_PROCS processes (pytest-xdist) of one thread each. One after another its tests
# keep about one core busy (process start-ups, imports, tiny models): on 2 cores, 3 min instead of 4 min 15 s.
TEST_PROCS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_PROCS)

test: $(STAMP)  ## the whole suite, slow end-to-end tests included (what CI runs); more processes: TEST_PROCS=8
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
