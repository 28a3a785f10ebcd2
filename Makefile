# `make repro` runs the pipeline, `make test` the tests; both create .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: venv repro test clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements-dev.txt -e .
	touch $@

repro: venv
	dvc repro

test: venv
	python -m pytest -ra

clean-venv:
	rm -rf $(VENV)
