# `make repro` runs the pipeline, `make test` the tests; both create .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: venv repro test offline-plots clean-venv

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

# An HTML template for `dvc plots show/diff --html-template` with the Vega libraries
# inlined, so that the plots render without internet access.
offline-plots: venv
	npm ci --prefix tools/offline_plots --no-audit --no-fund
	python tools/offline_plots/build_template.py

clean-venv:
	rm -rf $(VENV)
