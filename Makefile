# eadp-lab: `make test` runs the test suite, creating or refreshing .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here and in requirements-ci.txt: 2.13.0 installs a CPU build from local disk.
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements-ci.txt

.PHONY: venv test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs whenever the project's dependencies change.
$(VENV)/.installed-test: pyproject.toml requirements-ci.txt | $(PY)
	$(PIP_INSTALL) "torch==2.13.0"
	$(PIP_INSTALL) -e ".[test]"
	touch $@

venv: $(VENV)/.installed-test

## test: the whole suite (unit tests and the runs marked slow), as CI runs it
test: venv
	$(PY) -m pytest -q

## test-fast: the unit suite only
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

## bench: the facility-location benchmark (fast greedy against the published loop)
bench: venv
	$(PY) -m eadp_lab.bench select

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
