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

test: $(STAMP)  ## the whole suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
